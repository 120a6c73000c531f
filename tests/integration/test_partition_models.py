"""Every reference model partitioned end to end: cloud(edge(x)) == full(x) for every kept split and for forced cuts.

Each model is exported once per session. The check of a split here is independent of the partitioner's own
verification: it loads edge.onnx and cloud.onnx from the plan folder with ONNX Runtime, feeds the crossing tensors
from the edge's outputs and the model inputs, and compares the merged outputs with the full model's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tandem.contracts.plan import Plan, load_plan
from tandem.models.base import ExportedModel
from tandem.models.registry import get_reference
from tandem.partitioner.config import PartitionConfig
from tandem.partitioner.export import verify_split, write_full_model, write_split
from tandem.partitioner.graph import ModelGraph
from tandem.partitioner.pipeline import ModelSource, analyse_model, partition_graph

CONFIG = PartitionConfig.model_validate(
    {
        "profiling": {"repetitions": 2, "warmup": 1, "codec_repetitions": 1},
        "verification": {"max_samples": 2},
        "accuracy": {"samples": 60},
    }
)


# Free disk the VGG-16 test needs: it writes up to 1.3 GB (the export, then a plan folder with model.onnx and a split).
VGG16_DISK_GB = 2.0


@pytest.fixture(scope="module")
def export_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], ExportedModel]]:
    """Export a reference model once per module, on first use (again if a test removed it); removed at the end."""
    exported: dict[str, ExportedModel] = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(name: str) -> ExportedModel:
        if name not in exported or not exported[name].path.exists():
            exported[name] = get_reference(name).export(folder / name / f"{name}.onnx", 1)
        return exported[name]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


def require_free_disk(path: Path, gigabytes: float, what: str) -> None:
    """Skip, saying why, when the disk holding ``path`` has less than ``gigabytes`` free."""
    free = shutil.disk_usage(path).free / 1e9
    if free < gigabytes:
        pytest.skip(f"{what} needs {gigabytes:.1f} GB of free disk under {path}; {free:.1f} GB is free")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})
    return dict(zip(names, values, strict=True))


def check_recomposition(plan: Plan, folder: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """For every kept split: edge then cloud from the files on disk equals the full model (raw transfer)."""
    full = session(folder / plan.model.path)
    input_names = {t.name for t in plan.model.inputs}
    for split in plan.splits:
        edge = session(folder / split.edge_model) if split.edge_model else None
        cloud = session(folder / split.cloud_model) if split.cloud_model else None
        if edge is not None:
            assert [i.name for i in edge.get_inputs()] == split.edge_inputs
        if cloud is not None:
            assert [i.name for i in cloud.get_inputs()] == [t.name for t in split.crossing]
        for sample in samples:
            want = run(full, sample)
            available = dict(sample)
            if edge is not None:
                available.update(run(edge, sample))
            sent = {t.name: available[t.name] for t in split.crossing}
            for tensor in split.crossing:
                assert list(sent[tensor.name].shape) == tensor.shape and sent[tensor.name].dtype.name == tensor.dtype
            got = {name: available[name] for name in split.edge_outputs}
            if cloud is not None:
                got.update(run(cloud, sent))
            assert set(got) == set(want)
            for name, value in want.items():
                scale = max(float(np.max(np.abs(value))), 1e-12)
                assert float(np.max(np.abs(got[name] - value))) / scale <= 1e-5, (split.id, name)
        raw = split.codec("raw")
        assert raw.verified and raw.max_error is not None and raw.max_error <= 1e-5
        for result in split.codecs:
            assert result.max_error is not None
            if result.verified:  # (a codec within tolerance can still fail on accuracy)
                assert result.max_error <= result.tolerance
        made = {o.name for o in edge.get_outputs()} if edge is not None else set()
        assert {t.name for t in split.crossing} <= input_names | made  # only inputs and activations cross


def check_choices(plan: Plan) -> None:
    for choice in plan.choices:
        # Never slower than edge-only or cloud-only, unless the plan says it tied with them (within the profile's
        # spread, where the split sending fewer bytes is taken, #14).
        tied = {other.split("/", 1)[0] for other in choice.tie_with}
        assert choice.latency_ms <= choice.edge_only_ms * (1 + 1e-9) or "edge-only" in tied
        if choice.cloud_only_ms is not None:
            assert choice.latency_ms <= choice.cloud_only_ms * (1 + 1e-9) or "cloud-only" in tied
        chosen = plan.split(choice.split)
        assert chosen.codec(choice.codec).verified
        assert chosen.predict_ms(choice.codec, choice.bandwidth_mbps, plan.link.rtt_ms) == pytest.approx(
            choice.latency_ms
        )


def forced_cuts(graph: ModelGraph, fractions: tuple[float, ...]) -> list[frozenset[str]]:
    """Splits ending at nodes a given fraction of the way through the graph (closed by construction)."""
    names = graph.node_names
    return [graph.closure([names[int(f * (len(names) - 1))]]) for f in fractions]


def partition_reference(name: str, export_model: Callable[[str], ExportedModel], out: Path,
                        cut: list[str] | None = None) -> tuple[ModelGraph, Plan, ExportedModel]:  # fmt: skip
    exported = export_model(name)
    source = ModelSource(name, exported.path, exported.sample_inputs, reference=True)
    graph = analyse_model(source)
    plan = partition_graph(source, graph, out, CONFIG, cut=cut, progress=False)
    return graph, plan, exported


MODELS = [
    pytest.param("digits_cnn", (0.3, 0.5, 0.7), id="digits_cnn"),
    pytest.param("mobilenet_v2", (0.25, 0.5, 0.75), id="mobilenet_v2"),
    pytest.param("resnet50", (0.25, 0.5, 0.8), id="resnet50"),
    pytest.param("minilm", (0.3, 0.6), id="minilm"),
    # a plain chain: the kept splits' check covers it, and a forced cut would add another 1 GB of files
    pytest.param("vgg16", (), id="vgg16", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "fractions"), MODELS)
def test_every_kept_split_and_forced_cuts_recompose_the_model(
    name: str, fractions: tuple[float, ...], export_model: Callable[[str], ExportedModel], tmp_path: Path
) -> None:
    if name == "vgg16":
        require_free_disk(tmp_path, VGG16_DISK_GB, "the VGG-16 partition test")
    graph, plan, exported = partition_reference(name, export_model, tmp_path / "plan")
    loaded = load_plan(tmp_path / "plan")
    assert loaded == plan
    assert plan.model.sha256 == graph.sha256
    kinds = [s.kind for s in plan.splits]
    assert kinds.count("cloud-only") == 1 and kinds.count("edge-only") == 1
    assert plan.search.exact
    check_recomposition(plan, tmp_path / "plan", exported.sample_inputs[:2])
    check_choices(plan)
    if name == "digits_cnn":
        accuracies = [c.accuracy for s in plan.splits for c in s.codecs]
        assert all(a is not None and a > 0.9 for a in accuracies)  # a trained model, top-1 on held-out digits
    if not fractions:
        if name == "vgg16":
            shutil.rmtree(exported.path.parent)  # 0.53 GB that no other test reads
        return
    shutil.rmtree(tmp_path / "plan")  # checked; keep the disk use down before writing the forced cuts

    # forced cuts through the middle of the graph, with several crossing tensors where there are skips
    out = tmp_path / "forced"
    write_full_model(graph, out)
    full = session(out / "model.onnx")
    samples = graph.samples[:2]
    expected = [run(full, s) for s in samples]
    for index, split in enumerate(forced_cuts(graph, fractions)):
        parts = write_split(graph, f"f{index}", split, out)
        errors = verify_split(parts, out, samples, expected, ["fp16+lz4", "int8"], raw_tolerance=1e-5)
        assert errors["raw"] <= 1e-5
        if name == "minilm":
            assert "attention_mask" in parts.crossing  # every layer reads the mask: it crosses with the hidden state
        (out / parts.edge_model).unlink()  # VGG halves are large; keep the disk use down
        (out / parts.cloud_model).unlink()


def test_minilm_forced_cut_carries_the_mask(export_model: Callable[[str], ExportedModel], tmp_path: Path) -> None:
    exported = export_model("minilm")
    source = ModelSource("minilm", exported.path, exported.sample_inputs, reference=True)
    graph = analyse_model(source)
    # a tensor after the third encoder layer that alone separates the graph (the mask crosses beside it)
    candidates = [
        out
        for node in graph.nodes[len(graph.nodes) // 2 :]
        for out in node.outputs
        if not [t for t in graph.crossing(graph.closure([node.name])) if graph.tensors[t].producer is not None][1:]
        and graph.tensors[out].dtype == "float32"
        and len(graph.tensors[out].shape) == 3
    ]
    assert candidates
    plan = partition_graph(source, graph, tmp_path / "plan", CONFIG, cut=[candidates[0]], progress=False)
    forced = [s for s in plan.splits if s.kind == "split"]
    assert len(forced) == 1 and any("forced with --cut" in r for r in forced[0].reasons)
    assert [t.name for t in forced[0].crossing] == ["attention_mask", candidates[0]]
    assert plan.search.forced_cut == [candidates[0]] and not plan.search.exact
    assert {c.split for c in plan.choices} == {forced[0].id}
    check_recomposition(plan, tmp_path / "plan", exported.sample_inputs[:3])
