"""The cost model: predicted latency of a split for a link and a codec.

For a split ``S`` (edge nodes), codec ``c`` and a link of bandwidth ``bw``
(bit/s) and round-trip time ``rtt``::

    latency = edge_time(S) + encode_c(crossing) + wire_bytes_c(crossing) * 8 / bw
              + rtt + decode_c(crossing) + cloud_time(not S) + result_bytes(S) * 8 / bw

Edge-only (``S`` = every node) sends nothing and waits for nothing: its
latency is its edge time. ``result_bytes`` are the graph outputs the cloud
computes, returned raw. Everything is in seconds and bytes.

Bytes and codec times are *measured*, not assumed: every activation of the
sample run is encoded with :func:`tandem.transport.codec.encode_tensor` for every
codec, so ``wire_bytes`` is the exact frame size (fp16 halves float tensors,
int8 quarters float32 ones, ``+lz4``/``+zstd`` apply the compression those
very activations get) and the encode/decode times are the fastest of a few
repetitions on this machine, scaled by ``codec_time_scale`` for a slower edge
CPU when configured.

With several samples (a calibration set) every sample's activations are
encoded too: ``CodecCosts.sample_bytes`` keeps each tensor's frame size per
sample, :meth:`CostModel.bytes_quantiles` gives a split's p50 and p95 over the
samples, and the search prices each tensor at the configured quantile
(``search.bytes_quantile``; a sum of per-tensor quantiles, so for p95 an upper
bound of the split's p95). Result bytes travel on the downlink: at
``Link.downlink_mbps`` when the link says, else at the uplink's bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tandem.partitioner.graph import ModelGraph
from tandem.partitioner.search import CutCosts, CutGraph, CutTensor, LinearCosts
from tandem.transport.codec import CodecSpec, StaticScales, TensorSpec, decode_tensor, encode_tensor, tensor_codec

__all__ = [
    "CodecCosts",
    "CostModel",
    "Link",
    "SplitCost",
    "cut_graph",
    "measure_codecs",
    "seconds_per_byte",
]


def seconds_per_byte(bandwidth_mbps: float) -> float:
    """Transfer time of one byte on a link of ``bandwidth_mbps`` Mbit/s."""
    return 8.0 / (bandwidth_mbps * 1e6)


@dataclass(frozen=True)
class Link:
    """A network link: uplink bandwidth in Mbit/s, round-trip time in seconds, downlink (None: as the uplink)."""

    bandwidth_mbps: float
    rtt_s: float
    downlink_mbps: float | None = None

    @property
    def seconds_per_byte(self) -> float:
        """Transfer time of one byte edge -> cloud."""
        return seconds_per_byte(self.bandwidth_mbps)

    @property
    def down_seconds_per_byte(self) -> float:
        """Transfer time of one result byte cloud -> edge."""
        return seconds_per_byte(self.downlink_mbps or self.bandwidth_mbps)


@dataclass(frozen=True)
class CodecCosts:
    """One codec measured on every activation: frame bytes, encode and decode seconds per tensor."""

    codec: str
    wire_bytes: Mapping[str, int]
    encode_s: Mapping[str, float]
    decode_s: Mapping[str, float]
    max_abs_error: Mapping[str, float]
    sample_bytes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    fallbacks: Mapping[str, str] = field(default_factory=dict)


def _fallback(name: str, array: np.ndarray, spec: CodecSpec, header: TensorSpec) -> str | None:
    if header.codec == spec.quantiser and header.axis == spec.axis:
        return None
    finite = header.codec != "raw" or array.dtype.kind != "f" or bool(np.isfinite(array).all())
    reason = tensor_codec(array.dtype.name, array.shape, spec, finite=finite)[2]
    return f"{array.dtype.name} {list(array.shape)}: {reason}"


def measure_codecs(
    activations: Mapping[str, np.ndarray],
    codecs: Sequence[str],
    *,
    repetitions: int = 3,
    progress: bool = True,
    more_samples: Iterable[Mapping[str, np.ndarray]] = (),
    quantile: float = 0.5,
    scales: Mapping[str, Mapping[str, StaticScales]] | None = None,
) -> dict[str, CodecCosts]:
    """Encode and decode every activation with every codec; keep sizes and the fastest times.

    ``more_samples``: the same activations on further samples, whose frame sizes are measured too;
    ``wire_bytes`` is then each tensor's ``quantile`` over all samples. ``scales``: the calibrated scales
    of the ``int8-static`` codecs, by codec text and tensor name.
    """
    scales = scales or {}
    first = _measure_first(activations, codecs, repetitions=repetitions, progress=progress, scales=scales)
    sizes = {codec: {name: [b] for name, b in costs.wire_bytes.items()} for codec, costs in first.items()}
    fallbacks = {codec: dict(costs.fallbacks) for codec, costs in first.items()}
    specs = {codec: CodecSpec.parse(codec) for codec in first}
    for sample in tqdm(more_samples, desc="measuring bytes per sample", unit="sample", disable=not progress):
        for codec, spec in specs.items():
            static = scales.get(codec, {})
            for name in sizes[codec]:
                header, _ = encode_tensor(name, sample[name], spec, static.get(name))
                sizes[codec][name].append(header.nbytes)
                reason = _fallback(name, np.asarray(sample[name]), spec, header)
                if reason is not None:
                    fallbacks[codec].setdefault(name, reason)
    return {
        codec: CodecCosts(
            codec,
            {name: round(float(np.quantile(v, quantile))) for name, v in sizes[codec].items()},
            costs.encode_s,
            costs.decode_s,
            costs.max_abs_error,
            {name: tuple(v) for name, v in sizes[codec].items()},
            fallbacks[codec],
        )
        for codec, costs in first.items()
    }


def _measure_first(
    activations: Mapping[str, np.ndarray],
    codecs: Sequence[str],
    *,
    repetitions: int,
    progress: bool,
    scales: Mapping[str, Mapping[str, StaticScales]],
) -> dict[str, CodecCosts]:
    results: dict[str, CodecCosts] = {}
    bar = tqdm(
        total=len(codecs) * len(activations), desc="measuring codecs", unit="tensor", disable=not progress, leave=False
    )
    for text in codecs:
        spec = CodecSpec.parse(text)
        static = scales.get(str(spec), {})
        wire: dict[str, int] = {}
        encode_s: dict[str, float] = {}
        decode_s: dict[str, float] = {}
        errors: dict[str, float] = {}
        reasons: dict[str, str] = {}
        for name, array in activations.items():
            best_encode = best_decode = float("inf")
            for _ in range(max(1, repetitions)):
                start = time.perf_counter()
                header, frame = encode_tensor(name, array, spec, static.get(name))
                middle = time.perf_counter()
                decoded = decode_tensor(header, frame)
                end = time.perf_counter()
                best_encode = min(best_encode, middle - start)
                best_decode = min(best_decode, end - middle)
            wire[name] = header.nbytes
            encode_s[name] = best_encode
            decode_s[name] = best_decode
            errors[name] = _max_abs_error(array, decoded)
            reason = _fallback(name, np.asarray(array), spec, header)
            if reason is not None:
                reasons[name] = reason
            bar.update(1)
        results[str(spec)] = CodecCosts(str(spec), wire, encode_s, decode_s, errors, {}, reasons)
    bar.close()
    return results


def _max_abs_error(original: np.ndarray, decoded: np.ndarray) -> float:
    if original.size == 0:
        return 0.0
    return float(np.max(np.abs(original.astype(np.float64) - decoded.astype(np.float64))))


def cut_graph(graph: ModelGraph) -> CutGraph:
    """The search's view of a model graph: node names and activations with producer and consumers."""
    return CutGraph(
        graph.node_names,
        tuple(CutTensor(t.name, t.producer, t.consumers) for t in graph.tensors.values()),
    )


@dataclass(frozen=True)
class SplitCost:
    """Predicted latency of one split with one codec on one link, term by term (seconds, bytes)."""

    edge_s: float
    encode_s: float
    wire_bytes: int
    upload_s: float
    rtt_s: float
    decode_s: float
    cloud_s: float
    result_bytes: int
    download_s: float

    @property
    def total_s(self) -> float:
        """End-to-end latency."""
        return self.edge_s + self.encode_s + self.upload_s + self.rtt_s + self.decode_s + self.cloud_s + self.download_s


class CostModel:
    """Per-node device times and per-tensor codec costs of one model; prices splits.

    ``edge_s`` and ``cloud_s`` map each compute node to its seconds on the
    edge and in the cloud. ``codec_time_scale`` multiplies the measured
    encode times (edge CPU) and ``decode_time_scale`` the decode times (cloud
    CPU). ``spread`` is the relative noise of the node times: compute times
    closer than it are not told apart.
    """

    def __init__(
        self,
        graph: ModelGraph,
        edge_s: Mapping[str, float],
        cloud_s: Mapping[str, float],
        codecs: Mapping[str, CodecCosts],
        *,
        codec_time_scale: float = 1.0,
        decode_time_scale: float = 1.0,
        downlink_mbps: float | None = None,
        spread: float = 0.0,
        scales: Mapping[str, Mapping[str, StaticScales]] | None = None,
    ) -> None:
        missing = [n for n in graph.node_names if n not in edge_s or n not in cloud_s]
        if missing:
            raise ValueError(f"model {graph.name!r}: no time for nodes {missing[:5]}")
        unmeasured = {t.name for t in graph.tensors.values() if t.consumers} - set().union(
            *(set(c.wire_bytes) for c in codecs.values())
        )
        if unmeasured:
            raise ValueError(f"model {graph.name!r}: codecs were not measured on tensors {sorted(unmeasured)[:5]}")
        self.graph = graph
        self.cut_graph = cut_graph(graph)
        self.edge_s = {n: float(edge_s[n]) for n in graph.node_names}
        self.cloud_s = {n: float(cloud_s[n]) for n in graph.node_names}
        self.codecs = dict(codecs)
        self.codec_time_scale = codec_time_scale
        self.decode_time_scale = decode_time_scale
        self.downlink_mbps = downlink_mbps
        self.spread = spread
        self.scales = {codec: dict(by_name) for codec, by_name in (scales or {}).items()}
        """Calibrated scales of the int8-static codecs: codec text -> tensor -> scales."""
        self._crossing: dict[frozenset[str], tuple[str, ...]] = {}
        self._result_bytes: dict[str, int] = {}
        for name in graph.outputs:
            producer = graph.tensors[name].producer
            if producer is not None:
                self._result_bytes[producer] = self._result_bytes.get(producer, 0) + graph.tensors[name].nbytes

    @property
    def codec_names(self) -> list[str]:
        """The codecs measured, as their canonical text."""
        return list(self.codecs)

    def crossing(self, edge_nodes: frozenset[str]) -> tuple[str, ...]:
        """The split's crossing activations (cached)."""
        found = self._crossing.get(edge_nodes)
        if found is None:
            found = self._crossing[edge_nodes] = self.graph.crossing(edge_nodes)
        return found

    def edge_time(self, edge_nodes: Iterable[str]) -> float:
        """Seconds of edge compute for these nodes."""
        return sum(self.edge_s[n] for n in edge_nodes)

    def cloud_time(self, edge_nodes: frozenset[str]) -> float:
        """Seconds of cloud compute for the nodes not on the edge."""
        return sum(t for n, t in self.cloud_s.items() if n not in edge_nodes)

    def wire_bytes(self, edge_nodes: frozenset[str], codec: str) -> int:
        """Bytes sent from the edge to the cloud per inference with ``codec``."""
        costs = self.codecs[codec]
        return sum(costs.wire_bytes[name] for name in self.crossing(edge_nodes))

    def bytes_quantiles(self, edge_nodes: frozenset[str], codec: str) -> tuple[int, int]:
        """The split's bytes per inference with ``codec``: median and 95th percentile over the samples."""
        if edge_nodes == self.graph.all_nodes:
            return 0, 0
        costs = self.codecs[codec]
        crossing = self.crossing(edge_nodes)
        if not crossing:
            return 0, 0
        per_sample = np.sum([costs.sample_bytes.get(n, (costs.wire_bytes[n],)) for n in crossing], axis=0)
        p50, p95 = np.quantile(np.atleast_1d(per_sample), [0.5, 0.95])
        return round(float(p50)), round(float(p95))

    def fallbacks(self, edge_nodes: frozenset[str], codec: str) -> list[str]:
        """Crossing tensors that ``codec`` sends otherwise, each with the reason."""
        if edge_nodes == self.graph.all_nodes:
            return []
        reasons = self.codecs[codec].fallbacks
        return [f"{name!r} {reasons[name]}" for name in self.crossing(edge_nodes) if name in reasons]

    def raw_bytes(self, edge_nodes: frozenset[str]) -> int:
        """Bytes of the crossing tensors in their own dtypes."""
        return sum(self.graph.tensors[name].nbytes for name in self.crossing(edge_nodes))

    def result_bytes(self, edge_nodes: frozenset[str]) -> int:
        """Bytes of the graph outputs the cloud computes and returns."""
        return sum(b for producer, b in self._result_bytes.items() if producer not in edge_nodes)

    def cost(self, edge_nodes: frozenset[str], codec: str, link: Link) -> SplitCost:
        """The predicted latency of a split, term by term."""
        if edge_nodes == self.graph.all_nodes:
            return SplitCost(self.edge_time(edge_nodes), 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
        costs = self.codecs[codec]
        crossing = self.crossing(edge_nodes)
        wire = sum(costs.wire_bytes[name] for name in crossing)
        result = self.result_bytes(edge_nodes)
        return SplitCost(
            edge_s=self.edge_time(edge_nodes),
            encode_s=sum(costs.encode_s[name] for name in crossing) * self.codec_time_scale,
            wire_bytes=wire,
            upload_s=wire * link.seconds_per_byte,
            rtt_s=link.rtt_s,
            decode_s=sum(costs.decode_s[name] for name in crossing) * self.decode_time_scale,
            cloud_s=self.cloud_time(edge_nodes),
            result_bytes=result,
            download_s=result * self._down_spb(link),
        )

    def _down_spb(self, link: Link) -> float:
        """Seconds per result byte: the link's downlink, else the model's fixed downlink, else the uplink's."""
        if link.downlink_mbps:
            return link.down_seconds_per_byte
        return seconds_per_byte(self.downlink_mbps) if self.downlink_mbps else link.seconds_per_byte

    def linear(self, codec: str) -> LinearCosts:
        """The search costs without RTT, linear in ``u`` = seconds per byte (see the search module)."""
        costs = self.codecs[codec]
        tensor_base = {
            name: costs.encode_s[name] * self.codec_time_scale + costs.decode_s[name] * self.decode_time_scale
            for name in costs.wire_bytes
        }
        cloud_base = dict(self.cloud_s)
        result_slope = {producer: float(b) for producer, b in self._result_bytes.items()}
        if self.downlink_mbps:  # results travel on a fixed downlink: a constant, not a function of the uplink
            down = seconds_per_byte(self.downlink_mbps)
            for producer, b in result_slope.items():
                cloud_base[producer] += b * down
            result_slope = {}
        base = CutCosts(edge=self.edge_s, cloud=cloud_base, tensor=tensor_base)
        slope = CutCosts(edge={}, cloud=result_slope, tensor={name: float(b) for name, b in costs.wire_bytes.items()})
        return LinearCosts(base, slope)
