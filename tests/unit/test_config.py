"""Config loading: strict keys, and errors that name file, key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from tandem.cli import main
from tandem.config import ConfigError, StrictModel, load_config
from tandem.transport.config import ChannelConfig, LinkConfig, MqttConfig, ZmqConfig
from tandem.transport.envelope import Kind

REPO = Path(__file__).resolve().parents[2]


class Batching(StrictModel):
    max_batch_size: int = Field(8, gt=0)
    max_queue_delay_ms: float = 2.0


class Section(StrictModel):
    channel: ChannelConfig = Field(default_factory=ZmqConfig)
    optional_link: LinkConfig | None = None
    link: LinkConfig = Field(default_factory=LinkConfig)
    batching: Batching = Field(default_factory=Batching)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "channel: {type: mqtt, port: 1884, qos: {activation: 1}}\n"), Section)
    assert isinstance(config.channel, MqttConfig)
    assert config.channel.qos_for(Kind.ACTIVATION) == 1
    assert config.channel.qos_for(Kind.HEARTBEAT) == 0
    assert config.batching.max_batch_size == 8


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), Section).channel == ZmqConfig()


def test_misspelled_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "batching:\n  max_batch_sise: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Section)
    assert str(info.value) == f"{path}: batching.max_batch_sise: unknown key; did you mean 'max_batch_size'?"


def test_unknown_key_without_a_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "link: {colour: red}\n")
    with pytest.raises(ConfigError, match=r"link\.colour: unknown key; allowed keys here: bandwidth_mbps, "):
        load_config(path, Section)


def test_bad_value_names_the_key_the_value_and_what_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "batching: {max_batch_size: lots}\nlink: {rtt_ms: -5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Section)
    message = str(info.value)
    assert f"{path}: batching.max_batch_size: value 'lots' is not valid: input should be a valid integer" in message
    assert f"{path}: link.rtt_ms: value -5 is not valid: input should be greater than or equal to 0" in message


def test_bad_channel_type_and_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"channel\.type: value 'carrier-pigeon' is not valid: expected one of 'zmq'"):
        load_config(write(tmp_path, "channel: {type: carrier-pigeon}\n"), Section)
    with pytest.raises(
        ConfigError, match=r"channel\.address: value 'localhost:5555' is not valid: expected a ZeroMQ endpoint"
    ):
        load_config(write(tmp_path, "channel: {type: zmq, address: 'localhost:5555'}\n"), Section)


def test_unknown_qos_kind_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"channel\.qos\.telegram: value 'telegram' is not valid: input should be 'activation'"
    ):
        load_config(write(tmp_path, "channel: {type: mqtt, qos: {telegram: 1}}\n"), Section)


def test_missing_file_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml", Section)
    with pytest.raises(ConfigError, match=r"hub\.yaml: line 2, column \d+: not valid YAML"):
        load_config(write(tmp_path, "a: 1\n  b: [\n"), Section)
    with pytest.raises(ConfigError, match=r"expected a mapping of keys at the top level, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"), Section)


def test_shipped_example_configs_validate() -> None:
    from tandem.cli import CONFIG_SCHEMAS

    checked = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        schema = CONFIG_SCHEMAS.get(path.stem)
        if schema is not None:
            load_config(path, schema())
            checked += 1
    assert checked >= 1


def test_unknown_key_in_an_optional_section_lists_its_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "optional_link: {rtt: 5}\n")
    with pytest.raises(ConfigError, match=r"optional_link\.rtt: unknown key; did you mean 'rtt_ms'\?"):
        load_config(path, Section)


def problems(path: Path, model: type[StrictModel]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, model)
    return info.value.problems


def test_unknown_key_in_a_list_item_names_the_index_not_the_union_tag(tmp_path: Path) -> None:
    from tandem.cloud_hub.config import HubConfig

    path = write(
        tmp_path,
        "plans: [p]\nchannels:\n  - {type: zmq, adress: 'tcp://127.0.0.1:5555'}\n  - {type: mqtt, colour: red}\n"
        "  - {type: zmq, address: '127.0.0.1:5555'}\n  - {address: 'tcp://127.0.0.1:5555'}\n"
        "sync:\n  mqtt: {host: a}\n  publish: [{plan: p, version: 1, devise: x}]\n",
    )
    assert problems(path, HubConfig) == [
        "channels.0.adress: unknown key; did you mean 'address'?",
        "channels.1.colour: unknown key; allowed keys here: client_id, connect_timeout_s, host, keepalive_s, "
        "max_payload_bytes, password, password_file, port, qos, session_expiry_s, shared_group, tls, topic_prefix, "
        "type, username",
        "channels.2.address: value '127.0.0.1:5555' is not valid: expected a ZeroMQ endpoint such as "
        "'tcp://127.0.0.1:5555'",
        "channels.3.type: required key is missing; expected one of 'zmq', 'mqtt', 'inproc'",
        "sync.publish.0.devise: unknown key; did you mean 'device'?",
    ]


def test_unknown_key_in_a_schedule_step_and_a_demo_phase(tmp_path: Path) -> None:
    from tandem.commands.demo import DemoConfig
    from tandem.edge_agent.config import EdgeConfig

    edge = write(tmp_path, "plan: p\nemulation:\n  link: {}\n  schedule: [{at_s: 1, bandwith_mbps: 3}]\n")
    assert problems(edge, EdgeConfig) == [
        "emulation.schedule.0.bandwith_mbps: unknown key; did you mean 'bandwidth_mbps'?"
    ]
    demo = write(tmp_path, "phases:\n  - {at_s: 0, bandwith_mbps: 50}\n  - {at_s: 9, bandwidth_mbps: fast}\n")
    assert problems(demo, DemoConfig) == [
        "phases.0.bandwith_mbps: unknown key; did you mean 'bandwidth_mbps'?",
        "phases.1.bandwidth_mbps: value 'fast' is not valid: input should be a valid number, unable to parse string "
        "as a number; or input should be 'auto'",
    ]


def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "batching: {max_batch_size: 4}\nlink: {}\nbatching: {max_batch_size: 8}\n")
    assert problems(path, Section) == ["line 3, column 1: not valid YAML: key 'batching' given twice (first on line 1)"]
    nested = write(tmp_path, "link:\n  rtt_ms: 1\n  rtt_ms: 2\n")
    assert problems(nested, Section) == ["line 3, column 3: not valid YAML: key 'rtt_ms' given twice (first on line 2)"]


def test_executor_names_come_from_the_registry(tmp_path: Path) -> None:
    from tandem.cloud_hub.config import HubConfig
    from tandem.edge_agent.config import EdgeConfig
    from tandem.executors.base import EXECUTORS, executor_names

    assert executor_names() == ("auto", *EXECUTORS)
    edge = write(tmp_path, "plan: p\nexecutor: onnxrt\n")
    assert problems(edge, EdgeConfig) == [
        "executor: value 'onnxrt' is not valid: unknown executor 'onnxrt'; known: auto, onnxruntime, tensorrt; "
        "did you mean 'onnxruntime'?"
    ]
    hub = write(tmp_path, "plans: [p]\nexecutor: {name: foo}\n")
    assert problems(hub, HubConfig) == [
        "executor.name: value 'foo' is not valid: unknown executor 'foo'; known: auto, onnxruntime, tensorrt"
    ]
    for name in executor_names():
        assert load_config(write(tmp_path, f"plan: p\nexecutor: {name}\n"), EdgeConfig).executor == name


@pytest.mark.parametrize("device_id", ["cam/01", "cam+", "#", ""])
def test_device_id_must_fit_in_an_mqtt_topic(tmp_path: Path, device_id: str) -> None:
    from tandem.edge_agent.config import EdgeConfig

    path = write(tmp_path, f"plan: p\ndevice_id: {device_id!r}\n")
    assert problems(path, EdgeConfig) == [
        f"device_id: value {device_id!r} is not valid: device id {device_id!r} cannot be used in an MQTT topic: "
        "it must be non-empty, without / + # NUL"
    ]


def test_mqtt_topic_prefix_and_shared_group_are_checked_in_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "channel: {type: mqtt, topic_prefix: /tandem, shared_group: 'hubs/a'}\n")
    assert problems(path, Section) == [
        "channel.topic_prefix: value '/tandem' is not valid: topic_prefix '/tandem': expected levels such as "
        "'tandem/v1', without + # or outer slashes",
        "channel.shared_group: value 'hubs/a' is not valid: shared_group 'hubs/a' cannot be used in an MQTT topic: "
        "it must be non-empty, without / + # NUL",
    ]


def test_emulation_schedule_needs_a_link(tmp_path: Path) -> None:
    from tandem.edge_agent.config import EdgeConfig

    path = write(tmp_path, "plan: p\nemulation:\n  schedule: [{at_s: 5, bandwidth_mbps: 3}]\n")
    assert problems(path, EdgeConfig) == [
        "emulation.schedule: value [{'at_s': 5, 'bandwidth_mbps': 3}] is not valid: a schedule changes the emulated "
        "link, so emulation.link must be set too"
    ]
    bad_link = write(tmp_path, "plan: p\nemulation:\n  link: {rtt_ms: -1}\n  schedule: [{at_s: 5}]\n")
    assert problems(bad_link, EdgeConfig) == [
        "emulation.link.rtt_ms: value -1 is not valid: input should be greater than or equal to 0"
    ]


def test_check_config_does_not_print_an_mqtt_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("plans: [p]\nchannels:\n  - {type: mqtt, username: hub, password: hunter2}\n")
    assert main(["check-config", str(path), "--kind", "hub"]) == 0
    out = capsys.readouterr().out
    assert '"password": "**********"' in out and "hunter2" not in out


@pytest.mark.parametrize("device", ["sync", "group"])
def test_device_ids_the_topic_scheme_reserves_are_refused(tmp_path: Path, device: str) -> None:
    """deploy/tandem.acl gives login "sync/D" the topics tandem/v1/sync/D/...: a device "sync" would alias them."""
    from tandem.edge_agent.config import EdgeConfig

    expected = f"device id '{device}' is reserved: tandem/v1/{device}/... are sync and group"
    with pytest.raises(ValueError, match=expected):
        EdgeConfig(device_id=device, plan=tmp_path)
