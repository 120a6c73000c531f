"""The partitioner's steps on small graphs written inline in ONNX text: analysis, cuts, costs, export, plan, profiles.

The main graph has a constant, a branch (Sigmoid and Tanh of the same tensor), a skip connection (``a`` read again
by the second Add), a graph output computed half-way (``h``) and an int64 mask input reused by two later layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from tandem.contracts.plan import ArtifactError, PlanError, load_plan, save_plan
from tandem.partitioner.costs import CostModel, Link, measure_codecs
from tandem.partitioner.export import VerificationError, relative_error, verify_split, write_full_model, write_split
from tandem.partitioner.graph import InvalidCut, ModelGraph, ModelLoadError, UnsupportedOpset, analyse, ort_opset_range
from tandem.partitioner.profiling import OrtModel, ProfileError, load_profile, profile_model
from tandem.partitioner.search import closed_sets, cut_cost, min_cut

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[1,4,8] x, int64[1,8] mask) => (float[1,4] y, float[1,4,8] h)
<float[4,4] w1 = {0.5,0,0,0.1, 0,1,0,0, 0.2,0,1,0, 0,0,0,1}>
{
  axes = Constant<value = int64[1] {1}>()
  mf = Cast<to = 1>(mask)
  mu = Unsqueeze(mf, axes)
  a = MatMul(w1, x)
  b = Relu(a)
  c = Mul(b, mu)
  d1 = Sigmoid(c)
  d2 = Tanh(c)
  e = Add(d1, d2)
  h = Neg(e)
  f = Add(e, a)
  g = Mul(f, mu)
  y = ReduceMean<axes = [2], keepdims = 0>(g)
}
"""

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
dyn (float[N,6] x) => (float[N,M] y)
{
  s = Shape(x)
  n = Slice(s, starts, ends)
  shape = Concat<axis = 0>(n, minus_one)
  r = Reshape(x, shape)
  t = Relu(r)
  y = Reshape(t, shape2)
}
"""


def write_model(tmp_path: Path, text: str, name: str = "tiny", opset: int | None = None) -> Path:
    model = onnx.parser.parse_model(text)
    if opset is not None:
        model.opset_import[0].version = opset
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def tiny_samples(count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    samples = []
    for _ in range(count):
        mask = np.ones((1, 8), np.int64)
        mask[0, 5:] = 0
        samples.append({"x": rng.standard_normal((1, 4, 8)).astype(np.float32), "mask": mask})
    return samples


@pytest.fixture()
def tiny(tmp_path: Path) -> ModelGraph:
    model = onnx.parser.parse_model(TINY)
    onnx.checker.check_model(model, full_check=True)
    return analyse(write_model(tmp_path, TINY), tiny_samples())


def test_analysis_lists_compute_nodes_and_activations(tiny: ModelGraph) -> None:
    assert [n.op_type for n in tiny.nodes] == [
        "Cast",
        "Unsqueeze",
        "MatMul",
        "Relu",
        "Mul",
        "Sigmoid",
        "Tanh",
        "Add",
        "Neg",
        "Add",
        "Mul",
        "ReduceMean",
    ]
    assert len(set(tiny.node_names)) == len(tiny.nodes)  # every node got a unique name
    assert tiny.constant_nodes == ("Constant_0",)
    assert "w1" in tiny.constants and "axes" in tiny.constants
    assert "w1" not in tiny.tensors and "axes" not in tiny.tensors  # weights and constants never cross
    assert tiny.tensors["mask"].dtype == "int64" and tiny.tensors["mask"].nbytes == 64
    assert tiny.tensors["mu"].shape == (1, 1, 8) and tiny.tensors["mu"].nbytes == 32
    assert tiny.tensors["a"].consumers == (tiny.node_names[3], tiny.node_names[9])  # Relu and the skip Add
    assert tiny.tensors["x"].producer is None
    assert tiny.inputs == ("x", "mask") and tiny.outputs == ("y", "h")


def test_crossing_tensors_of_cuts_with_branches_skip_and_mask(tiny: ModelGraph) -> None:
    names = tiny.node_names
    # edge runs the mask path and MatMul..Mul: c feeds both branches (one tensor), a feeds the skip, mu the last Mul
    edge = tiny.closure([names[4]])
    assert edge == frozenset(names[:5])
    assert tiny.crossing(edge) == ("mu", "a", "c")
    # cut between the branches: c, d1 (or d2) and the skip a all cross
    edge = tiny.closure([names[5]])
    assert set(tiny.crossing(edge)) == {"a", "mu", "c", "d1"}
    # the mask is a graph input the cloud reads when only MatMul runs on the edge
    edge = tiny.closure([names[2]])
    assert tiny.crossing(edge) == ("mask", "a")
    assert tiny.edge_inputs(edge) == ("x",)
    # h is a graph output computed half-way: it stays on the edge when Neg runs there
    edge = tiny.closure([names[8]])
    assert tiny.edge_outputs(edge) == ("h",) and tiny.cloud_outputs(edge) == ("y",)
    assert "h" in tiny.edge_model_outputs(edge) and "h" not in tiny.crossing(edge)
    assert tiny.crossing(frozenset()) == ("x", "mask")
    assert tiny.crossing(tiny.all_nodes) == ()
    assert all(tiny.is_closed(s) for s in [tiny.closure([n]) for n in names])
    assert not tiny.is_closed(frozenset({names[3]}))


def test_cut_from_tensors_accepts_a_real_cut(tiny: ModelGraph) -> None:
    edge = tiny.cut_from_tensors(["c", "a", "mu"])
    assert tiny.crossing(edge) == ("mu", "a", "c")
    assert tiny.cut_from_tensors(["a"]) == tiny.closure([tiny.node_names[2]])  # the mask itself crosses implicitly
    assert tiny.cut_from_tensors(["x", "mask"]) == frozenset()
    assert tiny.cut_from_tensors(["y", "h"]) == tiny.all_nodes


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["nope"], "model 'tiny': there is no tensor 'nope' in the graph"),
        (["d"], "there is no tensor 'd' in the graph; did you mean"),
        (["w1"], "tensor 'w1' is a weight or constant; weights never cross a cut"),
        (["axes"], "tensor 'axes' is a weight or constant"),
        (["c"], "tensors ['c'] do not form a cut: 'mu', 'a' also cross from the edge part to the cloud part"),
        (["e", "a"], "tensors ['e', 'a'] do not form a cut: 'mu' also crosses"),
        (["mu", "a", "b", "c"], "tensor 'b' does not cross this cut"),
        ([], "a cut needs at least one tensor name"),
    ],
)
def test_cut_that_does_not_exist_is_a_named_error(tiny: ModelGraph, names: list[str], message: str) -> None:
    with pytest.raises(InvalidCut) as caught:
        tiny.cut_from_tensors(names)
    assert message in str(caught.value)


def test_dynamic_dims_are_resolved_by_running_the_model(tmp_path: Path) -> None:
    text = DYNAMIC.replace(
        "{\n  s = Shape",
        "<int64[1] starts = {0}, int64[1] ends = {1}, int64[1] minus_one = {-1}, "
        "int64[2] shape2 = {-1, 2}>\n{\n  s = Shape",
    )
    path = write_model(tmp_path, text, "dyn")
    graph = analyse(path, [{"x": np.ones((3, 6), np.float32)}])
    assert graph.tensors["r"].shape == (3, 6)
    assert graph.tensors["y"].shape == (9, 2)
    assert [n.op_type for n in graph.nodes] == ["Shape", "Slice", "Concat", "Reshape", "Relu", "Reshape"]
    default = analyse(path)  # no samples: unknown dims become 1
    assert default.tensors["x"].shape == (1, 6)


def test_unreadable_and_invalid_models_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: file not found"):
        analyse(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="is a directory, not an ONNX file"):
        analyse(tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx: not an ONNX model"):
        analyse(garbage)
    text_file = tmp_path / "notes.onnx"
    text_file.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"notes\.onnx: not an ONNX model"):
        analyse(text_file)
    broken = onnx.parser.parse_model(TINY)
    broken.graph.node[3].input[1] = "undefined_tensor"
    broken_path = tmp_path / "broken.onnx"
    broken_path.write_bytes(broken.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"broken\.onnx: invalid ONNX model: .*undefined_tensor"):
        analyse(broken_path)


def test_opset_onnx_runtime_cannot_run_is_a_named_error(tmp_path: Path) -> None:
    low, high = ort_opset_range()
    assert low == 7 and high >= 17
    with pytest.raises(UnsupportedOpset, match=rf"opset {high + 5} \(domain ai.onnx\) cannot be run by ONNX Runtime"):
        analyse(write_model(tmp_path, TINY, "future", opset=high + 5), tiny_samples())
    with pytest.raises(UnsupportedOpset, match=rf"opset 5 .* runs opsets 7 to {high}"):
        analyse(write_model(tmp_path, TINY, "ancient", opset=5), tiny_samples())


def test_samples_that_do_not_match_the_inputs_are_rejected(tmp_path: Path) -> None:
    path = write_model(tmp_path, TINY)
    with pytest.raises(ModelLoadError, match=r"missing \['mask'\]"):
        analyse(path, [{"x": np.zeros((1, 4, 8), np.float32)}])
    with pytest.raises(ModelLoadError, match="tensor 'mask': dtype int32 but the model expects int64"):
        analyse(path, [{"x": np.zeros((1, 4, 8), np.float32), "mask": np.ones((1, 8), np.int32)}])


def tiny_costs(graph: ModelGraph) -> CostModel:
    movable = {n: graph.activations[n] for n, t in graph.tensors.items() if t.consumers}
    codecs = measure_codecs(movable, ["raw", "fp16+lz4", "int8"], repetitions=1, progress=False)
    edge = {name: 1e-3 * (i + 1) for i, name in enumerate(graph.node_names)}
    cloud = {name: 1e-4 * (i + 1) for i, name in enumerate(graph.node_names)}
    return CostModel(graph, edge, cloud, codecs)


def test_codec_bytes_are_measured_per_tensor(tiny: ModelGraph) -> None:
    costs = tiny_costs(tiny)
    raw, fp16, int8 = (costs.codecs[c].wire_bytes for c in ("raw", "fp16+lz4", "int8"))
    assert raw["a"] == 4 * 32 and int8["a"] == 32  # float32 -> int8 is a quarter
    assert raw["mask"] == int8["mask"] == 64  # integer tensors are never quantised
    assert fp16["mask"] < 64  # but they are compressed
    assert fp16["a"] <= 2 * 32 + 16  # half, and lz4 adds at most a few bytes on 64 random bytes


def test_search_objective_equals_the_predicted_latency(tiny: ModelGraph) -> None:
    costs = tiny_costs(tiny)
    link = Link(bandwidth_mbps=3.0, rtt_s=0.02)
    for codec in costs.codec_names:
        at_link = costs.linear(codec).at(link.seconds_per_byte)
        for split in closed_sets(costs.cut_graph):
            predicted = costs.cost(split, codec, link)
            rtt = 0.0 if split == tiny.all_nodes else link.rtt_s
            assert cut_cost(costs.cut_graph, at_link, split) + rtt == pytest.approx(predicted.total_s)
        best, value = min_cut(costs.cut_graph, at_link)
        assert value == pytest.approx(min(cut_cost(costs.cut_graph, at_link, s) for s in closed_sets(costs.cut_graph)))
        assert tiny.is_closed(best)


def test_every_split_of_the_tiny_graph_exports_and_recomposes(tiny: ModelGraph, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    write_full_model(tiny, out)
    full = OrtModel(out / "model.onnx")
    expected = [full.run(sample) for sample in tiny.samples]
    splits = list(closed_sets(tiny_costs(tiny).cut_graph))
    assert len(splits) > 20
    for index, split in enumerate(splits):
        parts = write_split(tiny, f"s{index:03d}", split, out)
        errors = verify_split(parts, out, tiny.samples, expected, ["fp16+lz4", "int8"], raw_tolerance=1e-6)
        assert errors["raw"] <= 1e-6
        assert errors["fp16+lz4"] < 1e-2 and errors["int8"] < 0.1
        if parts.edge_model and parts.edge_model != "model.onnx":
            edge = onnx.load(str(out / parts.edge_model))
            cloud = onnx.load(str(out / parts.cloud_model))
            assert [i.name for i in edge.graph.input] == list(tiny.edge_inputs(split))
            assert [i.name for i in cloud.graph.input] == list(tiny.crossing(split))
            assert not {i.name for i in edge.graph.initializer} & {i.name for i in edge.graph.input}


def test_a_wrong_split_fails_verification(tiny: ModelGraph, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    write_full_model(tiny, out)
    full = OrtModel(out / "model.onnx")
    expected = [full.run(s) for s in tiny.samples]
    parts = write_split(tiny, "cut", tiny.closure([tiny.node_names[4]]), out)
    wrong = [{name: value * 1.5 if value.dtype == np.float32 else value for name, value in e.items()} for e in expected]
    with pytest.raises(VerificationError, match="split 'cut': cloud\\(edge\\(x\\)\\) differs from the full model"):
        verify_split(parts, out, tiny.samples, wrong, [], raw_tolerance=1e-5)
    assert relative_error({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 4.0])}) == pytest.approx(0.5)


def test_profile_measures_every_node_and_checks_the_model_hash(tiny: ModelGraph, tmp_path: Path) -> None:
    profile = profile_model(tiny, "test-box", repetitions=3, warmup=1, progress=False)
    assert set(profile.node_seconds) == set(tiny.node_names)
    assert sum(profile.node_seconds.values()) == pytest.approx(profile.total_seconds)
    assert all(v >= 0 for v in profile.node_seconds.values())
    path = profile.save(tmp_path / "profile.json")
    loaded = load_profile(path, model_sha256=tiny.sha256)
    assert loaded == profile
    with pytest.raises(ProfileError, match="profile of another model: it was measured on 'tiny'"):
        load_profile(path, model_sha256="0" * 64, model_name="other")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match=r"bad\.json: not a device profile: invalid JSON"):
        load_profile(tmp_path / "bad.json")
    data = json.loads(path.read_text())
    del data["node_seconds"]
    (tmp_path / "partial.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"partial\.json: node_seconds: Field required"):
        load_profile(tmp_path / "partial.json")
    with pytest.raises(ProfileError, match="profile file not found"):
        load_profile(tmp_path / "absent.json")


def test_plan_round_trip_and_artifact_checks(tmp_path: Path) -> None:
    from tandem.partitioner.config import PartitionConfig
    from tandem.partitioner.pipeline import partition

    path = write_model(tmp_path, TINY)
    np.savez(tmp_path / "inputs.npz", **tiny_samples(1)[0])
    config = PartitionConfig.model_validate(
        {"profiling": {"repetitions": 2, "warmup": 1}, "edge": {"emulation_factor": 20}}
    )
    out = tmp_path / "plan"
    plan = partition(str(path), out, config, inputs=tmp_path / "inputs.npz", progress=False)
    assert load_plan(out) == plan
    assert {a.path for a in plan.artifacts} >= {"model.onnx", "latency.png"}
    assert plan.edge.emulation_factor == 20 and plan.edge.source == "emulated"
    for split in plan.splits:
        for result in split.codecs:
            if result.codec == "raw":
                assert result.verified and result.max_error is not None and result.max_error <= 1e-5
        for prediction in split.predicted:
            assert split.predict_ms(prediction.codec, prediction.bandwidth_mbps, plan.link.rtt_ms) == pytest.approx(
                prediction.latency_ms
            )
    for choice in plan.choices:
        _, _, latency = plan.best_for(choice.bandwidth_mbps)
        assert latency <= choice.latency_ms + 1e-9
        assert latency <= choice.edge_only_ms + 1e-9
    # a corrupted or missing artifact is found on load
    target = out / plan.artifacts[0].path
    original = target.read_bytes()
    target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="artifact corrupted: sha256"):
        load_plan(out)
    target.write_bytes(original + b"x")
    with pytest.raises(ArtifactError, match=r"artifact corrupted: \d+ bytes, the plan says"):
        load_plan(out)
    target.unlink()
    with pytest.raises(ArtifactError, match="artifact missing"):
        load_plan(out)
    assert load_plan(out, verify=False).plan_id == plan.plan_id
    escaped = plan.model_copy(update={"artifacts": [plan.artifacts[1].model_copy(update={"path": "../x.onnx"})]})
    save_plan(escaped, out)
    with pytest.raises(ArtifactError, match="leaves the plan folder"):
        load_plan(out)
    (out / "plan.yaml").write_text("format: tandem-plan/1\nplan_id: [\n")
    with pytest.raises(PlanError, match=r"plan\.yaml: line \d+, column \d+: not valid YAML"):
        load_plan(out)
    with pytest.raises(PlanError, match="no plan in this folder"):
        load_plan(tmp_path)


def test_constraints_limit_the_choice_and_infeasible_ones_are_named(tmp_path: Path) -> None:
    from tandem.partitioner.config import PartitionConfig
    from tandem.partitioner.errors import PartitionError
    from tandem.partitioner.pipeline import ModelSource, analyse_model, partition_graph

    source = ModelSource("tiny", write_model(tmp_path, TINY), tiny_samples(), reference=False)
    graph = analyse_model(source)
    base = {
        "profiling": {"repetitions": 2, "warmup": 1},
        "edge": {"emulation_factor": 50.0},
        "link": {"bandwidths_mbps": [0.01, 1000], "rtt_ms": 0},
    }
    free = partition_graph(source, graph, tmp_path / "free", PartitionConfig.model_validate(base), progress=False)
    assert [c.split for c in free.choices] == ["edge-only", "cloud-only"]  # slow link: stay; fast link: offload
    budget = {
        **base,
        "codecs": ["raw"],
        "constraints": {"max_bytes_per_inference": 100, "max_edge_ms": 1e6, "latency_slo_ms": 1e5},
    }
    limited = partition_graph(
        source, graph, tmp_path / "limited", PartitionConfig.model_validate(budget), progress=False
    )
    assert limited.search.exact  # the tiny graph's splits are all enumerated
    for choice in limited.choices:
        assert choice.wire_bytes <= 100 and choice.meets_slo is True
    # raw, every split but edge-only sends over 100 bytes (the inputs alone are 128 + 64)
    assert [c.split for c in limited.choices] == ["edge-only", "edge-only"]
    edge_budget = {**base, "constraints": {"max_edge_ms": 0.0}}
    only_cloud = partition_graph(
        source, graph, tmp_path / "cloud", PartitionConfig.model_validate(edge_budget), progress=False
    )
    assert {c.split for c in only_cloud.choices} == {"cloud-only"}
    impossible = {**base, "constraints": {"max_edge_ms": 0.0, "max_bytes_per_inference": 1}}
    with pytest.raises(PartitionError, match=r"model .tiny.: no split meets the constraints \(byte budget 1 bytes"):
        partition_graph(source, graph, tmp_path / "none", PartitionConfig.model_validate(impossible), progress=False)
