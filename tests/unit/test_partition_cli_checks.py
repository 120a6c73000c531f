"""`tandem partition` and `tandem profile` check their flags and paths before any work, and fail cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx.parser
import pytest

from tandem.config import ConfigError
from tandem.contracts.plan import load_plan
from tandem.partitioner import pipeline
from tandem.partitioner.cli import main
from tandem.partitioner.config import PartitionConfig
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.pipeline import ModelSource, analyse_model, build_cost_model, profile_devices
from tandem.partitioner.profiling import ProfileError, profile_model
from tests.unit.test_graph import TINY, tiny_samples

FAST = "profiling: {repetitions: 2, warmup: 1, codec_repetitions: 1}\nlink: {bandwidths_mbps: [2, 50], rtt_ms: 10}\n"
SPECS_ONLY = "edge: {source: spec}\ncloud: {source: spec}\n"


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """The tiny model, its sample inputs (inputs.npz) and a fast config (fast.yaml) in ``tmp_path``."""
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx.parser.parse_model(TINY).SerializeToString())
    sample = tiny_samples(1)[0]
    np.savez(tmp_path / "inputs.npz", x=sample["x"], mask=sample["mask"])
    (tmp_path / "fast.yaml").write_text(FAST)
    return path


def _partition(tiny: Path, *extra: str | Path, out: Path | None = None) -> int:
    out = out or tiny.parent / "plan"
    args = ["partition", tiny, "--out", out, "--inputs", tiny.parent / "inputs.npz", "--no-progress", *extra]
    return main([str(arg) for arg in args])


def _graph(tiny: Path) -> pipeline.ModelGraph:
    return analyse_model(ModelSource("tiny", tiny, tiny_samples(1), reference=False))


# --- --plan-version -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_plan_version_below_one_is_refused_by_the_parser(
    tiny: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _partition(tiny, "--plan-version", value)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --plan-version: " in err
    assert ("is not an integer" if value == "two" else f"must be an integer >= 1, got {value}") in err
    assert not (tiny.parent / "plan").exists()


def test_plan_version_is_written_and_loads(tiny: Path) -> None:
    assert _partition(tiny, "--config", tiny.parent / "fast.yaml", "--plan-version", "3") == 0
    assert load_plan(tiny.parent / "plan").version == 3


def test_profile_repetitions_below_one_is_refused_by_the_parser(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", str(tiny), "--device-name", "x", "--out", str(tiny.parent / "p.json"), "--repetitions", "0"])
    assert "argument --repetitions: must be an integer >= 1, got 0" in capsys.readouterr().err


# --- paths are checked up front -------------------------------------------------------------------------------------


def test_out_that_is_a_file_fails_before_any_work(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tiny.parent / "README.md"
    existing.write_text("keep me\n")
    assert _partition(tiny, out=existing) == 1
    captured = capsys.readouterr()
    assert f"tandem partition: error: --out {existing}: exists and is not a folder" in captured.err
    assert captured.out == ""  # nothing loaded, nothing measured
    assert existing.read_text() == "keep me\n"


def test_missing_edge_profile_fails_before_profiling(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tiny.parent / "missing.json"
    assert _partition(tiny, "--edge-profile", missing) == 1
    captured = capsys.readouterr()
    assert f"tandem partition: error: --edge-profile: {missing}: profile file not found" in captured.err
    assert captured.out == ""
    assert not (tiny.parent / "plan").exists()


def test_bad_cloud_profile_names_the_flag(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tiny.parent / "bad.json"
    bad.write_text("{}")
    assert _partition(tiny, "--cloud-profile", bad) == 1
    assert f"--cloud-profile: {bad}: not a device profile: 'format' is not" in capsys.readouterr().err


def test_missing_profile_in_the_config_names_file_and_key(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny.parent / "edge.yaml"
    config.write_text("edge: {source: profile, profile: nope.json}\n")
    assert _partition(tiny, "--config", config) == 1
    captured = capsys.readouterr()
    assert f"{config}: edge.profile: nope.json: profile file not found" in captured.err
    assert captured.out == ""


def test_missing_inputs_file_names_the_flag(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tiny.parent / "nope.npz"
    assert main(["partition", str(tiny), "--out", str(tiny.parent / "plan"), "--inputs", str(missing)]) == 1
    assert f"tandem partition: error: --inputs {missing}: file not found" in capsys.readouterr().err


# --- no empty plan folder after a failure ---------------------------------------------------------------------------


def test_a_failed_search_leaves_no_plan_folder(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny.parent / "impossible.yaml"
    config.write_text(SPECS_ONLY + "constraints: {max_bytes_per_inference: 1, max_edge_ms: 0}\n")
    assert _partition(tiny, "--config", config) == 1
    assert "no split meets the constraints" in capsys.readouterr().err
    assert not (tiny.parent / "plan").exists()


def test_a_failed_export_removes_the_folder_it_created(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(graph: object, costs: object, outcome: object, out_dir: Path, *args: object, **kwargs: object) -> None:
        (out_dir / "model.onnx").write_bytes(b"half written")
        raise PartitionError("export failed half-way")

    monkeypatch.setattr(pipeline, "export_splits", crash)
    out = tiny.parent / "new" / "plan"
    config = PartitionConfig.model_validate({"edge": {"source": "spec"}, "cloud": {"source": "spec"}})
    with pytest.raises(PartitionError, match="export failed half-way"):
        pipeline.partition_graph(ModelSource("tiny", tiny, None, False), _graph(tiny), out, config, progress=False)
    assert not out.exists()
    existing = tiny.parent / "mine"
    existing.mkdir()
    with pytest.raises(PartitionError):
        pipeline.partition_graph(ModelSource("tiny", tiny, None, False), _graph(tiny), existing, config, progress=False)
    assert existing.is_dir()  # a folder that was there before stays


# --- codecs ---------------------------------------------------------------------------------------------------------


def test_int8_axis_out_of_range_is_a_config_error_before_profiling(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny.parent / "codec.yaml"
    config.write_text(FAST + "codecs: [int8@7+zstd]\n")
    assert _partition(tiny, "--config", config) == 2
    captured = capsys.readouterr()
    assert (
        f"{config}: codecs: value 'int8@7+zstd' is not valid for model 'tiny': channel axis 7 is out of range "
        "for every tensor that may cross a cut (largest: 'x' of shape [1, 4, 8]); use an axis from -3 to 2, "
        "or plain int8"
    ) in captured.err
    assert "measured" not in captured.out
    assert not (tiny.parent / "plan").exists()


def test_check_codecs_looks_at_every_floating_tensor_that_may_cross(tiny: Path) -> None:
    graph = _graph(tiny)
    pipeline.check_codecs(graph, ["raw", "int8@1", "int8@-1+lz4"])  # every floating activation has rank >= 2
    pipeline.check_codecs(graph, ["int8@2"])  # 'x' [1, 4, 8] has it; 'mf' [1, 8] falls back per tensor
    with pytest.raises(ConfigError, match=r"channel axis 3 is out of range for every tensor .* 'x' of shape \[1, 4,"):
        pipeline.check_codecs(graph, ["int8@3"], source="p.yaml")


def test_a_channel_axis_a_tensor_lacks_falls_back_per_tensor_and_says_why(tiny: Path) -> None:
    graph = _graph(tiny)
    config = PartitionConfig.model_validate(
        {"edge": {"source": "spec"}, "cloud": {"source": "spec"}, "codecs": ["raw", "int8@7+zstd"]}
    )
    edge, cloud = profile_devices(graph, config, progress=False)
    costs = build_cost_model(graph, config, edge, cloud, progress=False)
    reasons = costs.codecs["int8@7+zstd"].fallbacks
    floats = {name: text for name, text in reasons.items() if text.startswith("float32")}
    assert floats and all("has no axis 7" in t and "one int8 scale for the tensor" in t for t in floats.values())
    assert "int8 quantises floating tensors only; int64 travels raw" in reasons["mask"]


# --- tandem profile --provider --------------------------------------------------------------------------------------


def test_unknown_provider_fails_before_loading_the_model(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny.parent / "pp.json"
    args = ["profile", str(tiny), "--device-name", "x", "--out", str(out), "--provider", "FooProvider"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "tandem profile: error: --provider: execution provider 'FooProvider' is not available" in captured.err
    assert "available: " in captured.err and "CPUExecutionProvider" in captured.err
    assert captured.out == ""
    assert not out.exists()


def test_profile_records_the_provider_used(tiny: Path) -> None:
    profile = profile_model(_graph(tiny), "x", repetitions=1, warmup=0, progress=False)
    assert profile.provider == "CPUExecutionProvider"
    with pytest.raises(ProfileError, match="provider: execution provider 'FooProvider' is not available"):
        profile_model(_graph(tiny), "x", repetitions=1, warmup=0, provider="FooProvider", progress=False)


# --- help -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"), [("partition", "Find where to cut MODEL"), ("profile", "device profile")]
)
def test_help_has_a_description(command: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert words in capsys.readouterr().out


def test_partition_graph_refuses_a_plan_version_below_one_before_any_work(tiny: Path) -> None:
    out = tiny.parent / "plan"
    with pytest.raises(PartitionError, match="plan version 0 is not valid: a plan's version is an integer >= 1"):
        pipeline.partition_graph(ModelSource("tiny", tiny, None, False), _graph(tiny), out, version=0, progress=False)
    assert not out.exists()
