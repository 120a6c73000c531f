"""Config loading: strict keys, and errors that name file, key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from tandem.config import ConfigError, StrictModel, load_config
from transport.config import ChannelConfig, LinkConfig, MqttConfig, ZmqConfig
from transport.envelope import Kind

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
