"""`tandem partition` and `tandem profile` as processes: the plan folder, the printed table, and every error message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx.parser
import pytest

from tandem.contracts.plan import load_plan
from tests.unit.test_graph import TINY, tiny_samples

REPO = Path(__file__).resolve().parents[2]
TANDEM = Path(sys.executable).with_name("tandem")  # the console script of the editable install
FAST = (
    "profiling: {repetitions: 2, warmup: 1, codec_repetitions: 1}\nlink: {bandwidths_mbps: [2, 50, 800], rtt_ms: 10}\n"
)


def tandem(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``tandem`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(TANDEM), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False,
    )  # fmt: skip


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx.parser.parse_model(TINY).SerializeToString())
    np.savez(tmp_path / "inputs.npz", **tiny_samples(1)[0])
    (tmp_path / "fast.yaml").write_text(FAST)
    return path


def test_partition_writes_plan_plot_and_prints_the_table(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    result = tandem("partition", tiny_model, "--out", out, "--config", tmp_path / "fast.yaml",
                    "--inputs", tmp_path / "inputs.npz")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load_plan(out)
    assert plan.model.name == "tiny" and [c.bandwidth_mbps for c in plan.choices] == [2, 50, 800]
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "profiling tiny" in result.stderr  # the progress bar
    stdout = result.stdout
    assert f"plan {plan.plan_id}: tiny (12 nodes)" in stdout
    assert "kept splits:" in stdout and "choice per bandwidth:" in stdout
    for split in plan.splits:
        assert f"  {split.id:<11} {split.edge_nodes:>10} {split.edge_ms:>9.2f}" in stdout
    for choice in plan.choices:
        row = f"  {choice.bandwidth_mbps:>8g}  {choice.split:<11} {choice.codec:<10}"
        assert row in stdout
        assert f"{choice.edge_only_ms:>12.2f}" in stdout
    assert f"wrote {out / 'plan.yaml'}" in stdout


def test_profile_then_partition_with_the_edge_profile(tiny_model: Path, tmp_path: Path) -> None:
    profile = tmp_path / "box.json"
    result = tandem("profile", tiny_model, "--device-name", "jetson-lab-3", "--out", profile, "--repetitions", "3",
                    "--inputs", tmp_path / "inputs.npz", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {profile}: tiny" in result.stdout and "on jetson-lab-3" in result.stdout
    out = tmp_path / "plan"
    result = tandem("partition", tiny_model, "--out", out, "--config", tmp_path / "fast.yaml", "--edge-profile",
                    profile, "--inputs", tmp_path / "inputs.npz", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load_plan(out)
    assert plan.edge.source == "profile" and plan.edge.name == "jetson-lab-3"
    assert "edge jetson-lab-3 [profile]" in result.stdout


def test_forced_cut_is_used_for_every_bandwidth(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    result = tandem("partition", tiny_model, "--out", out, "--config", tmp_path / "fast.yaml", "--cut", "a",
                    "--inputs", tmp_path / "inputs.npz", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load_plan(out)
    (forced,) = [s for s in plan.splits if s.kind == "split"]
    assert [t.name for t in forced.crossing] == ["mask", "a"]
    assert {c.split for c in plan.choices} == {forced.id}


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["resnet5"], "tandem partition: error: unknown model 'resnet5': not an ONNX file and not a reference "
         "model; known reference models: resnet50, mobilenet_v2, vgg16, efficientnet_lite1, minilm, digits_cnn"),
        (None, ["missing.onnx"], "tandem partition: error: missing.onnx: file not found"),
        ("garbage", ["bad.onnx"], "bad.onnx: not an ONNX model: the protobuf does not parse"),
        ("invalid", ["bad.onnx"], "bad.onnx: invalid ONNX model: Nodes in a graph must be topologically sorted"),
        ("opset", ["bad.onnx"], "bad.onnx: opset 40 (domain ai.onnx) cannot be run by ONNX Runtime"),
        ("tiny", ["tiny.onnx", "--cut", "nope"], "model 'tiny': there is no tensor 'nope' in the graph"),
        ("tiny", ["tiny.onnx", "--cut", "w1"], "tensor 'w1' is a weight or constant; weights never cross a cut"),
        ("tiny", ["tiny.onnx", "--cut", "c"], "tensors ['c'] do not form a cut: 'mu', 'a' also cross"),
        ("tiny", ["tiny.onnx", "--edge-profile", "other.json"], "profile of another model: it was measured on 'other'"),
        ("tiny", ["tiny.onnx", "--edge-profile", "gone.json"], "--edge-profile: gone.json: profile file not found"),
        ("tiny", ["tiny.onnx", "--inputs", "gone.npz"], "tandem partition: error: --inputs gone.npz: file not found"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(make: str | None, args: list[str], message: str, tmp_path: Path) -> None:
    model = onnx.parser.parse_model(TINY)
    if make == "garbage":
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\xff\xff garbage")
    elif make == "invalid":
        model.graph.node.insert(0, model.graph.node.pop(5))  # Mul before the tensors it reads exist
        (tmp_path / "bad.onnx").write_bytes(model.SerializeToString())
    elif make == "opset":
        model.opset_import[0].version = 40
        (tmp_path / "bad.onnx").write_bytes(model.SerializeToString())
    elif make == "tiny":
        (tmp_path / "tiny.onnx").write_bytes(model.SerializeToString())
        other = '{"format": "tandem-device-profile/1", "device_name": "x", "model_name": "other", "model_sha256": "'
        other += "0" * 64 + '", "onnxruntime_version": "1", "provider": "CPU", "threads": 1, "repetitions": 1, '
        other += '"created": "now", "total_seconds": 0.1, "node_sum_seconds": 0.1, "node_seconds": {}}'
        (tmp_path / "other.json").write_text(other)
    result = subprocess.run(  # in tmp_path, so that messages show the relative names given
        [str(TANDEM), "partition", *args, "--out", "out", "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()  # no plan folder, not even an empty one


def test_config_errors_name_the_key(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("edge:\n  sorce: spec\n")
    result = tandem("partition", tiny_model, "--out", tmp_path / "out", "--config", tmp_path / "typo.yaml")
    assert result.returncode == 2
    assert "typo.yaml: edge.sorce: unknown key; did you mean 'source'?" in result.stderr
    (tmp_path / "codec.yaml").write_text("codecs: [raw, int9]\n")
    result = tandem("partition", tiny_model, "--out", tmp_path / "out", "--config", tmp_path / "codec.yaml")
    assert result.returncode == 2
    expected = "codec.yaml: codecs: value ['raw', 'int9'] is not valid: unknown codec 'int9': expected one of raw, fp16"
    assert expected in result.stderr


def test_the_example_config_is_valid() -> None:
    from tandem.config import load_config
    from tandem.partitioner.config import PartitionConfig

    assert load_config(REPO / "configs" / "partition.yaml", PartitionConfig) == PartitionConfig()


def test_a_new_release_of_the_same_model_and_config_keeps_the_plan_id(tiny_model: Path, tmp_path: Path) -> None:
    """#16: versions tell releases of one plan apart; the id names the model and partition config, not a run."""
    ids = []
    for version in (1, 2):
        out = tmp_path / f"plan-v{version}"
        result = tandem("partition", tiny_model, "--out", out, "--config", tmp_path / "fast.yaml",
                        "--inputs", tmp_path / "inputs.npz", "--plan-version", str(version))  # fmt: skip
        assert result.returncode == 0, result.stderr
        plan = load_plan(out)
        assert plan.version == version
        ids.append(plan.plan_id)
    assert ids[0] == ids[1]
    (tmp_path / "other.yaml").write_text(FAST.replace("rtt_ms: 10", "rtt_ms: 30"))  # another partition config
    out = tmp_path / "plan-other"
    result = tandem("partition", tiny_model, "--out", out, "--config", tmp_path / "other.yaml",
                    "--inputs", tmp_path / "inputs.npz")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load_plan(out).plan_id != ids[0]
