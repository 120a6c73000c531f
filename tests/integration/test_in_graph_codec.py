"""The codec inside the parts: the edge part ends in Cast / QuantizeLinear, the agent sends its output as is,
and a real hub answers with what the partitioner verified."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_sample_images

from tandem.cloud_hub.config import ExecutorConfig, HubConfig, MetricsConfig
from tandem.cloud_hub.plans import load_tails
from tandem.cloud_hub.server import Hub
from tandem.contracts.plan import Plan, load_plan
from tandem.edge_agent.agent import EdgeAgent
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.plan_view import load_agent_plan
from tandem.partitioner.cli import main
from tandem.partitioner.export import relative_error
from tandem.partitioner.profiling import OrtModel
from tandem.transport.config import ZmqConfig
from tandem.transport.envelope import Envelope
from tandem.transport.zmq_channel import ZmqClient
from tests.integration.test_edge_agent import free_port, wait_until

CODECS = ["raw", "fp16+lz4", "int8+zstd", "int8-static+zstd", "int8-static@1+zstd"]


def _conv_net(path: Path) -> None:
    """conv -> relu (the cut: ``feat``) -> conv -> relu -> global pool -> gemm -> 10 class scores."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32),
        "w3": rng.normal(0, 0.3, (10, 16)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["feat"]),
        helper.make_node("Conv", ["feat", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _photo_crops(count: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    crops = []
    for index in range(count):
        photo = load_sample_images().images[index % 2]
        top, left = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
        crop = photo[top : top + 32, left : left + 32].astype(np.float32)
        crops.append(((crop - 127.0) / 128.0).transpose(2, 0, 1)[None])
    return np.stack(crops)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("in_graph")
    _conv_net(work / "convnet.onnx")
    np.savez(work / "cal.npz", x=_photo_crops(16))
    (work / "p.yaml").write_text(f"edge: {{source: spec}}\ncloud: {{source: spec}}\ncodecs: {CODECS}\n")
    out = work / "plan"
    args = ["partition", str(work / "convnet.onnx"), "--out", str(out), "--config", str(work / "p.yaml")]
    assert main([*args, "--calibration", str(work / "cal.npz"), "--cut", "feat", "--no-progress"]) == 0
    return out


class _Counting:
    """An executor that counts its runs (the hub's variant choice, seen from outside)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.runs = inner, 0

    def run(self, feeds: dict) -> dict:
        self.runs += 1
        return self.inner.run(feeds)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _cut(plan: Plan) -> object:
    return next(split for split in plan.splits if split.kind == "split")


def _output_type(path: Path, name: str) -> int:
    model = onnx.load(str(path))
    return next(o.type.tensor_type.elem_type for o in model.graph.output if o.name == name)


def test_the_parts_carry_the_cast_or_symmetric_qdq_and_are_verified(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    cut = _cut(plan)
    assert cut.codec("raw").in_graph is None and cut.codec("int8+zstd").in_graph is None  # per-message scales
    fp16 = cut.codec("fp16+lz4").in_graph
    assert fp16 is not None and fp16.verified and fp16.tensors == ["feat"]
    assert _output_type(plan_dir / fp16.edge_model, "feat") == TensorProto.FLOAT16
    # Clip + Cast in the graph is the host codec's clip + astype: the same numbers
    assert fp16.max_error == pytest.approx(cut.codec("fp16+lz4").max_error, rel=1e-5, abs=1e-7)
    for codec, channels in (("int8-static+zstd", 1), ("int8-static@1+zstd", 8)):
        pair = cut.codec(codec).in_graph
        assert pair is not None and pair.verified, (codec, pair)
        assert _output_type(plan_dir / pair.edge_model, "feat") == TensorProto.INT8
        assert pair.scales is not None and pair.scales["feat"].zero_point == [0] * channels  # TensorRT: symmetric
        cloud = onnx.load(str(plan_dir / pair.cloud_model))
        assert cloud.graph.node[0].op_type == "DequantizeLinear"
        assert cloud.graph.input[0].type.tensor_type.elem_type == TensorProto.INT8
        assert pair.fidelity is not None and pair.fidelity.kind == "classes"
    assert {p.cloud_model for s in plan.splits for c in s.codecs if (p := c.in_graph)} <= plan.cloud_only_files()


@pytest.mark.parametrize("in_graph", [True, False])
def test_the_agent_sends_what_the_in_graph_edge_part_computed_and_the_hub_answers(
    plan_dir: Path, in_graph: bool
) -> None:
    codec = "int8-static+zstd"
    plan = load_plan(plan_dir)
    figures = _cut(plan).codec(codec)
    assert figures.in_graph is not None and figures.scales is not None
    agent_plan = load_agent_plan(plan_dir, codec, in_graph=in_graph)
    option = agent_plan.split(_cut(plan).id)
    port = free_port()
    hub_config = HubConfig(
        plans=[plan_dir], channels=[ZmqConfig(address=f"tcp://127.0.0.1:{port}")], metrics=MetricsConfig(port=None)
    )
    tails = [t for t in load_tails(plan_dir, ExecutorConfig(name="onnxruntime")) if t.split_id == option.split_id]
    counted = [dataclasses.replace(t, executor=_Counting(t.executor)) for t in tails]
    hub = Hub(hub_config, counted)
    hub.start()
    config = EdgeConfig(
        device_id="cam-1", plan=plan_dir, codec=codec, codec_in_graph=in_graph,
        channel=ZmqConfig(address=f"tcp://127.0.0.1:{port}"), deadline_ms=10_000, probe_interval_s=0.2,
    )  # fmt: skip
    channel = ZmqClient(address=config.channel.address, device_id=config.device_id, connect_timeout_s=None)
    sent: list[Envelope] = []
    send = channel.send
    channel.send = lambda envelope, **kw: (sent.append(envelope), send(envelope, **kw))[1]  # type: ignore[method-assign]
    agent = EdgeAgent(config, dataclasses.replace(agent_plan, splits=(option,)), channel)  # the cut only
    agent.start()
    try:
        wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)
        full = OrtModel(plan_dir / "model.onnx")
        pair_error = figures.in_graph.max_error if in_graph else figures.max_error
        for x in np.load(plan_dir.parent / "cal.npz")["x"][:6]:
            result = agent.infer(x)
            assert (result.source, result.split_id) == ("hub", option.split_id), result
            # the calibration samples are the ones verified: no sample is worse than the plan's worst
            assert relative_error(result.outputs, full.run({"x": x})) <= pair_error * (1 + 1e-4) + 1e-6
    finally:
        agent.stop()
        hub.stop()
    # The hub took the int8 tensor straight into the part that starts with DequantizeLinear, or (host scales, which
    # that part was not built for) dequantised it for the plain part.
    runs = {t.variant: t.executor.runs for t in counted}  # type: ignore[attr-defined]
    variant = Path(figures.in_graph.cloud_model).parent.name
    assert runs[variant if in_graph else ""] >= 6 and runs["" if in_graph else variant] == 0, runs
    want = figures.in_graph.scales if in_graph else figures.scales
    assert want is not None
    activations = [e for e in sent if e.split_id == option.split_id]
    assert activations
    for envelope in activations:
        (header,) = [t for t in envelope.tensors if t.name == "feat"]
        assert (header.codec, header.compression, header.dtype) == ("int8", "zstd", "float32")
        assert list(header.scale) == want["feat"].scale and list(header.zero_point) == want["feat"].zero_point
    assert option.edge_path == plan_dir / (figures.in_graph.edge_model if in_graph else _cut(plan).edge_model)
