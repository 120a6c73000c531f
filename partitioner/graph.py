"""An ONNX model as a DAG the partitioner can cut.

:func:`analyse` reads an ONNX file, checks it, names every node, runs ONNX
shape inference and then ONNX Runtime once on a sample input, recording the
dtype, shape and value of every activation (so dims that shape inference left
symbolic, as in transformer graphs, are known exactly). The result is a
:class:`ModelGraph`:

- ``nodes``: the compute nodes in topological order. Constant nodes (a
  ``Constant``, or any node all of whose inputs are weights or constants) are
  not part of it: they cost nothing, and sub-model extraction copies them
  into whichever part needs their value. Dead nodes (feeding no graph output)
  are left out too.
- ``tensors``: the activations (graph inputs and outputs of compute nodes),
  the only tensors that can cross a cut. Weights and constants never cross.

A *split* is the set ``S`` of nodes run on the edge, closed under
predecessors. The tensors crossing it (:meth:`ModelGraph.crossing`) are the
activations produced on the edge, or graph inputs, that a cloud node reads.
Graph inputs the cloud reads (an attention mask reused by every layer) cross
too and are sent from the edge's inputs as they are. Graph outputs computed
on the edge stay there (:meth:`ModelGraph.edge_outputs`); the cloud returns
the others (:meth:`ModelGraph.cloud_outputs`), and the edge merges both.
``S = {}`` is cloud-only (the inputs cross), ``S = all`` edge-only.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, shape_inference

from tandem.hashing import file_sha256
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.flops import ensure_node_names
from tandem.partitioner.shapes import MissingInputShape, ShapeHints, declared_shapes, describe_dims, resolve_shapes

__all__ = [
    "InvalidCut",
    "MissingInputShape",
    "ModelGraph",
    "ModelLoadError",
    "NodeInfo",
    "TensorInfo",
    "UnsupportedOpset",
    "analyse",
    "default_sample_inputs",
    "file_sha256",
    "ort_opset_range",
    "sample_activations",
    "static_model",
    "weightless_copy",
]

MIN_ORT_OPSET = 7
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


class ModelLoadError(PartitionError):
    """An ONNX file is missing, unreadable, not ONNX, invalid, or cannot be run by ONNX Runtime."""


class UnsupportedOpset(ModelLoadError):
    """The model's opset is outside what the installed ONNX Runtime can run."""


class InvalidCut(PartitionError):
    """Tensors named as a cut are not in the graph, are weights, or do not separate it."""


@dataclass(frozen=True)
class TensorInfo:
    """An activation: what it is and who makes and reads it.

    ``producer`` is None for a graph input. ``shape`` is the shape observed on
    the sample input.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    producer: str | None
    consumers: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor in its own dtype."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def is_float(self) -> bool:
        """Whether lossy codecs apply to it (integer and bool tensors always travel raw)."""
        return np.dtype(self.dtype).kind == "f"


@dataclass(frozen=True)
class NodeInfo:
    """A compute node: the activations it reads (weights excluded) and writes."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class ModelGraph:
    """An analysed ONNX model: its DAG of compute nodes and activations, and sample values.

    ``model`` is the shape-inferred model with every node named and a
    ``value_info`` entry for every activation, ready for sub-model extraction.
    ``activations`` holds every activation's value on ``samples[0]``.
    ``external_data`` says whether the file keeps its weights in other files.
    """

    path: Path
    sha256: str
    model: onnx.ModelProto
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[NodeInfo, ...]
    tensors: dict[str, TensorInfo]
    constants: frozenset[str]
    constant_nodes: tuple[str, ...]
    dead_nodes: tuple[str, ...]
    samples: list[dict[str, np.ndarray]]
    activations: dict[str, np.ndarray] = field(repr=False)
    external_data: bool = False
    declared: dict[str, list[int | str | None]] = field(default_factory=dict)
    shape_notes: list[str] = field(default_factory=list)
    synthetic: bool = False

    @property
    def name(self) -> str:
        """The file's stem: how messages refer to the model."""
        return self.path.stem

    @property
    def node_names(self) -> tuple[str, ...]:
        """Compute node names in topological order."""
        return tuple(node.name for node in self.nodes)

    @property
    def all_nodes(self) -> frozenset[str]:
        """Every compute node: the edge-only split."""
        return frozenset(self.node_names)

    def node(self, name: str) -> NodeInfo:
        """The compute node called ``name``."""
        return self._node_index[name]

    def predecessors(self, name: str) -> tuple[str, ...]:
        """Compute nodes whose outputs ``name`` reads."""
        found = []
        for tensor in self._node_index[name].inputs:
            producer = self.tensors[tensor].producer
            if producer is not None and producer not in found:
                found.append(producer)
        return tuple(found)

    def closure(self, names: Iterable[str]) -> frozenset[str]:
        """``names`` and all their ancestors: the smallest split that computes them."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(self.predecessors(name))
        return frozenset(seen)

    def is_closed(self, edge_nodes: Iterable[str]) -> bool:
        """Whether every predecessor of an edge node is on the edge too."""
        edge = set(edge_nodes)
        return all(pred in edge for name in edge for pred in self.predecessors(name))

    def crossing(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """Activations sent from the edge to the cloud for this split, inputs first, then in graph order."""
        return tuple(
            name
            for name, tensor in self.tensors.items()
            if (tensor.producer is None or tensor.producer in edge_nodes)
            and any(consumer not in edge_nodes for consumer in tensor.consumers)
        )

    def edge_inputs(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """Graph inputs that edge nodes read: the edge model's inputs."""
        return tuple(name for name in self.inputs if any(c in edge_nodes for c in self.tensors[name].consumers))

    def edge_outputs(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """Graph outputs computed on the edge; they stay there."""
        return tuple(name for name in self.outputs if self.tensors[name].producer in edge_nodes)

    def cloud_outputs(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """Graph outputs the cloud computes and returns."""
        return tuple(name for name in self.outputs if self.tensors[name].producer not in edge_nodes)

    def edge_model_outputs(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """What the edge model computes: crossing activations made on the edge, then the edge's graph outputs."""
        made = [name for name in self.crossing(edge_nodes) if self.tensors[name].producer is not None]
        return tuple(made + [name for name in self.edge_outputs(edge_nodes) if name not in made])

    def cut_from_tensors(self, names: Sequence[str]) -> frozenset[str]:
        """The split whose crossing activations are ``names`` (graph inputs the cloud reads may cross too).

        The edge part is everything needed to compute ``names``. Raises
        :class:`InvalidCut` when a name is not an activation of this graph,
        or when the tensors do not separate the graph: another activation
        would also cross, or a named tensor is read only on the edge.
        """
        if not names:
            raise InvalidCut(f"model {self.name!r}: a cut needs at least one tensor name")
        for name in names:
            self._check_cut_tensor(name)
        producers = [self.tensors[name].producer for name in names]
        edge = self.closure(p for p in producers if p is not None)
        crossing = self.crossing(edge)
        extra = [t for t in crossing if t not in names and self.tensors[t].producer is not None]
        if extra:
            first = self.tensors[extra[0]]
            readers = [c for c in first.consumers if c not in edge]
            listed = ", ".join(repr(n) for n in names)
            raise InvalidCut(
                f"model {self.name!r}: tensors [{listed}] do not form a cut: {', '.join(map(repr, extra))} also "
                f"cross{'es' if len(extra) == 1 else ''} from the edge part to the cloud part ({extra[0]!r} is made "
                f"by node {first.producer!r} on the edge and read by {readers[0]!r} in the cloud); "
                f"add {'it' if len(extra) == 1 else 'them'} to the cut"
            )
        for name in names:
            tensor = self.tensors[name]
            if name not in crossing and name not in self.outputs and tensor.producer is not None:
                raise InvalidCut(
                    f"model {self.name!r}: tensor {name!r} does not cross this cut: every node that reads it "
                    f"({', '.join(repr(c) for c in tensor.consumers)}) is on the edge side of the other tensors"
                )
        return edge

    def _check_cut_tensor(self, name: str) -> None:
        if name in self.tensors:
            return
        if name in self.constants:
            raise InvalidCut(
                f"model {self.name!r}: tensor {name!r} is a weight or constant; weights never cross a cut "
                "(each part holds its own copy); name an activation instead"
            )
        guesses = difflib.get_close_matches(name, list(self.tensors), n=3)
        hint = f"; did you mean {', '.join(repr(g) for g in guesses)}?" if guesses else ""
        raise InvalidCut(f"model {self.name!r}: there is no tensor {name!r} in the graph{hint}")

    @property
    def _node_index(self) -> dict[str, NodeInfo]:
        index = self.__dict__.get("_nodes_by_name")
        if index is None:
            index = {node.name: node for node in self.nodes}
            self.__dict__["_nodes_by_name"] = index
        return index


# --- loading --------------------------------------------------------------------------------------------------------


@cache
def ort_opset_range() -> tuple[int, int]:
    """The default-domain opsets the installed ONNX Runtime runs, probed once with a one-node model."""
    import onnxruntime as ort

    highest = MIN_ORT_OPSET
    for opset in range(onnx.defs.onnx_opset_version() + 4, MIN_ORT_OPSET, -1):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(probe.SerializeToString(), _quiet_options(), providers=["CPUExecutionProvider"])
        except Exception:  # any failure means this opset is not supported
            continue
        highest = opset
        break
    return MIN_ORT_OPSET, highest


def _quiet_options() -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def _read_model(path: Path) -> tuple[onnx.ModelProto, str, bool]:
    where = str(path)
    if not path.exists():
        raise ModelLoadError(f"{where}: file not found")
    if path.is_dir():
        raise ModelLoadError(f"{where}: is a directory, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot be read: {exc.strerror}") from exc
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{where}: not an ONNX model: the protobuf does not parse ({exc})") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{where}: not an ONNX model: no IR version or no graph nodes in it")
    external = any(init.data_location == TensorProto.EXTERNAL for init in model.graph.initializer)
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{where}: external weight data cannot be read: {exc}") from exc
    return model, hashlib.sha256(data).hexdigest(), external


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 0


def _check_opset(model: onnx.ModelProto, where: str) -> int:
    import onnxruntime as ort

    opset = _default_opset(model)
    low, high = ort_opset_range()
    if not low <= opset <= high:
        raise UnsupportedOpset(
            f"{where}: opset {opset} (domain ai.onnx) cannot be run by ONNX Runtime {ort.__version__}, "
            f"which runs opsets {low} to {high}; re-export the model with an opset in that range"
        )
    return opset


def _check_valid(model: onnx.ModelProto, where: str) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{where}: invalid ONNX model: {first}") from exc
    except ValueError as exc:  # protobuf over 2 GB: the in-memory checker cannot take it
        raise ModelLoadError(f"{where}: cannot be checked: {exc}") from exc


def weightless_copy(model: onnx.ModelProto, threshold: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers over ``threshold`` bytes keep their dtype and dims but no data.

    Their data is marked as external (in a file that does not exist), which
    shape inference and FLOP counting accept: they read dims, not values.
    Small initializers (shape constants) keep their values for data propagation.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.producer_name = model.producer_name
    light.producer_version = model.producer_version
    light.domain = model.domain
    light.model_version = model.model_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    source, target = model.graph, light.graph
    target.name = source.name
    target.node.extend(source.node)
    target.input.extend(source.input)
    target.output.extend(source.output)
    target.value_info.extend(source.value_info)
    target.sparse_initializer.extend(source.sparse_initializer)
    for init in source.initializer:
        size = _declared_bytes(init)
        if init.data_location == TensorProto.EXTERNAL or size <= threshold:
            target.initializer.append(init)
            continue
        stub = target.initializer.add()
        stub.name = init.name
        stub.data_type = init.data_type
        stub.dims.extend(init.dims)
        stub.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights-not-loaded.bin"), ("offset", "0"), ("length", str(size))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
    return light


def _declared_bytes(tensor: TensorProto) -> int:
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _infer_shapes(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Shape inference on a weightless copy; the value_info and output types are copied back into ``model``."""
    try:
        inferred = shape_inference.infer_shapes(
            weightless_copy(model), check_type=False, strict_mode=False, data_prop=True
        )
    except (shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        raise ModelLoadError(f"{where}: ONNX shape inference failed: {exc}") from exc
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


# --- constants and the DAG ------------------------------------------------------------------------------------------


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read inside the node's subgraphs (If/Loop/Scan bodies)."""
    found: list[str] = []
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for graph in graphs:
            defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                for name in [*inner.input, *_subgraph_inputs(inner)]:
                    if name and name not in defined and name not in found:
                        found.append(name)
                defined.update(inner.output)
    return found


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    names = [name for name in node.input if name]
    return names + [name for name in _subgraph_inputs(node) if name not in names]


def _split_constants(model: onnx.ModelProto) -> tuple[set[str], list[str]]:
    """Constant tensor names (weights, constants, values computed from them only) and constant node names."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(init.values.name for init in graph.sparse_initializer)
    constant_nodes = []
    for node in graph.node:
        inputs = _all_inputs(node)
        if node.op_type not in _RANDOM_OPS and all(name in constants for name in inputs):
            constants.update(name for name in node.output if name)
            constant_nodes.append(node.name)
    return constants, constant_nodes


def _live_nodes(model: onnx.ModelProto, constant_nodes: set[str], outputs: Sequence[str]) -> set[str]:
    producer = {out: node for node in model.graph.node for out in node.output if out}
    live: set[str] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        live.add(node.name)
        stack.extend(_all_inputs(node))
    return live - constant_nodes


# --- sample inputs and one ONNX Runtime run -------------------------------------------------------------------------


def default_sample_inputs(
    model: onnx.ModelProto, seed: int = 0, hints: ShapeHints | None = None, *, where: str = "model"
) -> list[dict[str, np.ndarray]]:
    """One synthetic sample for the model's inputs: normal floats, ones for integers.

    Open dims take their sizes from ``hints`` (see :func:`tandem.partitioner.shapes.resolve_shapes`);
    one still open raises :class:`MissingInputShape` naming it. Nothing becomes 1 silently.
    """
    rng = np.random.default_rng(seed)
    shapes, _ = resolve_shapes(model, hints, where=where)
    types = {info.name: info.type.tensor_type.elem_type for info in model.graph.input}
    sample: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(types[name]))
        if dtype.kind == "f":
            sample[name] = rng.standard_normal(shape).astype(dtype)
        else:
            sample[name] = np.ones(shape, dtype=dtype)
    return [sample]


def _check_samples(
    samples: Sequence[Mapping[str, np.ndarray]], model: onnx.ModelProto, inputs: Sequence[str], where: str
) -> list[dict[str, np.ndarray]]:
    if not samples:
        raise ModelLoadError(f"{where}: no sample inputs to analyse the model with")
    types = {info.name: info.type.tensor_type.elem_type for info in model.graph.input}
    checked = []
    for index, sample in enumerate(samples):
        missing = [name for name in inputs if name not in sample]
        unknown = [name for name in sample if name not in inputs]
        if missing or unknown:
            raise ModelLoadError(
                f"{where}: sample input {index} does not match the model's inputs {list(inputs)}: "
                f"missing {missing}, unknown {unknown}"
            )
        converted = {}
        for name in inputs:
            expected = np.dtype(helper.tensor_dtype_to_np_dtype(types[name]))
            array = np.asarray(sample[name])
            if array.dtype != expected:
                raise ModelLoadError(
                    f"{where}: sample input {index}, tensor {name!r}: dtype {array.dtype} but the model expects "
                    f"{expected}"
                )
            converted[name] = np.array(array, order="C", copy=None)  # ascontiguousarray would make a 0-d input 1-d
        checked.append(converted)
    return checked


def _probe_session(model: onnx.ModelProto, names: Sequence[str], where: str) -> Any:
    """An ORT session of ``model`` with every activation in ``names`` exposed as an extra graph output."""
    import onnxruntime as ort

    # expose the activations as extra graph outputs just long enough to serialise (no copy of the weights)
    count = len(model.graph.output)
    existing = {out.name for out in model.graph.output}
    known = {info.name: info for info in model.graph.value_info}
    for name in names:
        if name in existing:
            continue
        info = known.get(name)
        if info is not None and info.type.HasField("tensor_type"):
            model.graph.output.add().CopyFrom(info)
        else:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    try:
        payload = model.SerializeToString()
    finally:
        del model.graph.output[count:]
    try:
        return ort.InferenceSession(payload, _quiet_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{where}: ONNX Runtime cannot load the model: {_first_line(exc)}") from exc


def _probe_run(session: Any, sample: Mapping[str, np.ndarray], where: str, index: int = 0) -> dict[str, np.ndarray]:
    wanted = [out.name for out in session.get_outputs()]
    try:
        values = session.run(wanted, dict(sample))
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: ONNX Runtime cannot run the model on sample input {index} "
            f"({ {n: list(np.shape(v)) for n, v in sample.items()} }): {_first_line(exc)}"
        ) from exc
    result = {}
    for name, value in zip(wanted, values, strict=True):
        if not isinstance(value, np.ndarray):
            raise ModelLoadError(
                f"{where}: tensor {name!r} is a {type(value).__name__}, not a tensor; "
                "sequence and map values cannot be partitioned"
            )
        result[name] = value
    return result


def _probe_activations(
    model: onnx.ModelProto, names: Sequence[str], sample: Mapping[str, np.ndarray], where: str
) -> dict[str, np.ndarray]:
    """Run ORT once with every activation exposed as a graph output; return their values."""
    return _probe_run(_probe_session(model, names, where), sample, where)


def sample_activations(graph: ModelGraph, index: int) -> dict[str, np.ndarray]:
    """Every activation's value on ``graph.samples[index]`` (one ORT session per graph, kept on it)."""
    if index == 0:
        return graph.activations
    session = graph.__dict__.get("_probe_session")
    produced = [out for node in graph.nodes for out in node.outputs]
    if session is None:
        session = graph.__dict__["_probe_session"] = _probe_session(graph.model, produced, str(graph.path))
    sample = graph.samples[index]
    observed = _probe_run(session, sample, str(graph.path), index)
    return {name: sample[name] for name in graph.inputs} | {name: observed[name] for name in produced}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _complete_value_info(
    model: onnx.ModelProto, activations: Mapping[str, np.ndarray], inputs: Sequence[str], outputs: Sequence[str]
) -> None:
    """Give every intermediate activation a typed value_info (observed dtype/shape where inference had none)."""
    io_names = set(inputs) | set(outputs)
    typed = {
        info.name
        for info in model.graph.value_info
        if info.type.HasField("tensor_type")
        and info.type.tensor_type.elem_type != TensorProto.UNDEFINED
        and info.type.tensor_type.HasField("shape")
    }
    keep = [info for info in model.graph.value_info if info.name in typed or info.name not in activations]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for name, value in activations.items():
        if name in io_names or name in typed:
            continue
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        model.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(value.shape)))


def _sample_shape_notes(declared: Mapping[str, list[int | str | None]], sample: Mapping[str, np.ndarray]) -> list[str]:
    """Where the sample inputs fill a model's open dims: one note per such input."""
    return [
        f"input {name!r} {describe_dims(dims)} at {list(np.shape(sample[name]))} from the sample inputs"
        for name, dims in declared.items()
        if name in sample and any(not isinstance(d, int) for d in dims)
    ]


# --- analyse --------------------------------------------------------------------------------------------------------


def analyse(
    path: str | Path, samples: Sequence[Mapping[str, np.ndarray]] | None = None, hints: ShapeHints | None = None
) -> ModelGraph:
    """Load, check and analyse the ONNX file at ``path`` (see the module docstring).

    ``samples`` are input dicts; the first one is run to observe every
    activation. Without samples, :func:`default_sample_inputs` makes one at the
    shapes ``hints`` give (an open dim without a hint raises :class:`MissingInputShape`).
    Raises :class:`ModelLoadError` (or :class:`UnsupportedOpset`) naming the
    file and what is wrong with it.
    """
    path = Path(path)
    where = str(path)
    model, sha256, external = _read_model(path)
    opset = _check_opset(model, where)
    _check_valid(model, where)
    ensure_node_names(model)
    model = _infer_shapes(model, where)

    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(info.name for info in model.graph.input if info.name not in initializers)
    outputs = tuple(info.name for info in model.graph.output)
    constants, constant_nodes = _split_constants(model)
    bad_outputs = [name for name in outputs if name in inputs or name in constants]
    if bad_outputs:
        raise ModelLoadError(
            f"{where}: graph outputs {bad_outputs} are graph inputs or constants; "
            "such a model has nothing to partition for them"
        )
    live = _live_nodes(model, set(constant_nodes), outputs)
    compute = [node for node in model.graph.node if node.name in live]
    dead = tuple(node.name for node in model.graph.node if node.name not in live and node.name not in constant_nodes)

    declared = declared_shapes(model)
    synthetic = samples is None
    if samples is None:
        shape_notes = resolve_shapes(model, hints, where=where)[1]
        samples = default_sample_inputs(model, hints=hints, where=where)
    else:
        shape_notes = _sample_shape_notes(declared, samples[0])
        if hints is not None and (hints.shapes or hints.dims):
            try:
                shapes, notes = resolve_shapes(model, hints, where=where)
            except MissingInputShape:
                pass  # the samples fill what the hints leave open
            else:
                if all(n in samples[0] and tuple(np.shape(samples[0][n])) == shape for n, shape in shapes.items()):
                    shape_notes = notes
    checked = _check_samples(samples, model, inputs, where)
    produced = [out for node in compute for out in node.output if out]
    observed = _probe_activations(model, produced, checked[0], where)
    activations = {name: checked[0][name] for name in inputs} | {name: observed[name] for name in produced}
    _complete_value_info(model, activations, inputs, outputs)

    consumers: dict[str, list[str]] = {name: [] for name in activations}
    nodes = []
    for node in compute:
        reads = [name for name in dict.fromkeys(_all_inputs(node)) if name in activations]
        for name in reads:
            consumers[name].append(node.name)
        nodes.append(NodeInfo(node.name, node.op_type, tuple(reads), tuple(out for out in node.output if out)))
    producer = {out: node.name for node in nodes for out in node.outputs}
    tensors = {
        name: TensorInfo(
            name=name,
            dtype=value.dtype.name,
            shape=tuple(int(d) for d in value.shape),
            producer=producer.get(name),
            consumers=tuple(consumers[name]),
        )
        for name, value in activations.items()
    }
    return ModelGraph(
        path=path,
        sha256=sha256,
        model=model,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        nodes=tuple(nodes),
        tensors=tensors,
        constants=frozenset(constants),
        constant_nodes=tuple(constant_nodes),
        dead_nodes=dead,
        samples=checked,
        activations=activations,
        external_data=external,
        declared=declared,
        shape_notes=shape_notes,
        synthetic=synthetic,
    )


def static_model(graph: ModelGraph) -> onnx.ModelProto:
    """A weightless copy (see :func:`weightless_copy`) whose inputs and activations carry the observed shapes.

    Cached on the graph: FLOP counting and roofline estimates read it, not the weights.
    """
    cached = graph.__dict__.get("_static_model")
    if cached is not None:
        return cached
    model = weightless_copy(graph.model)
    io_names = set(graph.inputs) | set(graph.outputs)
    del model.graph.value_info[:]
    for info_list in (model.graph.input, model.graph.output):
        for info in info_list:
            if info.name in graph.tensors:
                tensor = graph.tensors[info.name]
                elem = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
                info.CopyFrom(helper.make_tensor_value_info(info.name, elem, list(tensor.shape)))
    for name, tensor in graph.tensors.items():
        if name not in io_names:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            model.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(tensor.shape)))
    graph.__dict__["_static_model"] = model
    return model
