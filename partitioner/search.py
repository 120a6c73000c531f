"""Exact split search: an s-t minimum cut (as in DADS), brute force, and parametric sweeps.

The problem. A :class:`CutGraph` has nodes and tensors; a tensor has one
producer (or none: a graph input, always available on the edge) and any
number of consumers. A split ``S`` (the edge's nodes) must be closed under
predecessors. Its cost under :class:`CutCosts` is::

    sum(edge[v] for v in S) + sum(cloud[v] for v not in S)
        + sum(tensor[t] for t crossing S)

where ``t`` crosses when its producer is in ``S`` (or it is a graph input) and
some consumer is not. :func:`min_cut` finds the minimum exactly:

- source ``s`` is the edge, sink ``t`` the cloud; ``s -> v`` has capacity
  ``cloud[v]`` (cut when ``v`` runs in the cloud), ``v -> t`` capacity
  ``edge[v]``;
- ``consumer -> producer`` has infinite capacity, so no finite cut puts a
  consumer on the edge and its producer in the cloud (predecessor closure);
- each tensor gets an auxiliary node ``x``: ``producer -> x`` with capacity
  ``tensor[t]`` (``s -> x`` for graph inputs) and ``x -> consumer`` infinite.
  Whenever one consumer is in the cloud and the producer on the edge, ``x``
  must be on the cloud side and the cut pays ``tensor[t]`` exactly once,
  however many consumers there are.

Capacities are rounded to integer picoseconds so that the flow is exact;
:func:`cut_cost` evaluates a split in floating point.

Parametric sweeps. When every cost is linear in a parameter ``u`` (``u`` =
seconds per byte, i.e. 8 / bandwidth, or a Lagrange multiplier on edge time),
:func:`lower_envelope` finds every split that is optimal for some ``u`` in an
interval, exactly, with one min cut per breakpoint (Eisner and Severance):
cut at both ends; where the two lines cross, cut again; if the new split is
strictly better there it is a new piece of the envelope, recurse on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx

__all__ = [
    "Choice",
    "CutCosts",
    "CutGraph",
    "CutTensor",
    "EnvelopePiece",
    "Limits",
    "LinearCosts",
    "SplitPricer",
    "TooManySplits",
    "brute_force",
    "candidate_splits",
    "choose",
    "choose_with_ties",
    "closed_sets",
    "cut_cost",
    "enumerate_or_none",
    "front",
    "is_closed",
    "lower_envelope",
    "min_cut",
    "pareto_front",
]

_SCALE = 1e12  # capacities in picoseconds
_SOURCE = ("s",)
_SINK = ("t",)


class TooManySplits(RuntimeError):
    """Enumerating closed sets went over the given limit."""


@dataclass(frozen=True)
class CutTensor:
    """A tensor of a :class:`CutGraph`: ``producer`` None means a graph input (on the edge)."""

    name: str
    producer: str | None
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class CutGraph:
    """Nodes in topological order and the tensors between them."""

    nodes: tuple[str, ...]
    tensors: tuple[CutTensor, ...]
    preds: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        preds: dict[str, list[str]] = {node: [] for node in self.nodes}
        for tensor in self.tensors:
            if tensor.producer is None:
                continue
            for consumer in tensor.consumers:
                if tensor.producer not in preds[consumer]:
                    preds[consumer].append(tensor.producer)
        object.__setattr__(self, "preds", {node: tuple(p) for node, p in preds.items()})

    def crossing(self, edge_nodes: frozenset[str]) -> list[CutTensor]:
        """Tensors produced on the edge (or graph inputs) that a cloud node reads."""
        return [
            t
            for t in self.tensors
            if (t.producer is None or t.producer in edge_nodes) and any(c not in edge_nodes for c in t.consumers)
        ]


@dataclass(frozen=True)
class CutCosts:
    """Seconds for each node on either side and for each tensor crossing."""

    edge: Mapping[str, float]
    cloud: Mapping[str, float]
    tensor: Mapping[str, float]


@dataclass(frozen=True)
class LinearCosts:
    """Costs linear in a parameter ``u``: ``base + u * slope``."""

    base: CutCosts
    slope: CutCosts

    def at(self, u: float) -> CutCosts:
        """The costs at ``u``."""

        def mix(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
            return {key: a.get(key, 0.0) + u * b.get(key, 0.0) for key in a.keys() | b.keys()}

        return CutCosts(
            mix(self.base.edge, self.slope.edge),
            mix(self.base.cloud, self.slope.cloud),
            mix(self.base.tensor, self.slope.tensor),
        )

    def line(self, graph: CutGraph, edge_nodes: frozenset[str]) -> tuple[float, float]:
        """``(intercept, slope)`` of the split's cost as a function of ``u``."""
        return cut_cost(graph, self.base, edge_nodes), cut_cost(graph, self.slope, edge_nodes)


@dataclass(frozen=True)
class EnvelopePiece:
    """A split optimal for ``u`` in ``[u_from, u_to]``, with its cost line ``intercept + u * slope``."""

    edge_nodes: frozenset[str]
    intercept: float
    slope: float
    u_from: float
    u_to: float


def is_closed(graph: CutGraph, edge_nodes: frozenset[str]) -> bool:
    """Whether every predecessor of an edge node is on the edge."""
    return all(pred in edge_nodes for node in edge_nodes for pred in graph.preds[node])


def cut_cost(graph: CutGraph, costs: CutCosts, edge_nodes: frozenset[str]) -> float:
    """The cost of a split, in floating point."""
    total = 0.0
    for node in graph.nodes:
        total += costs.edge.get(node, 0.0) if node in edge_nodes else costs.cloud.get(node, 0.0)
    for tensor in graph.crossing(edge_nodes):
        total += costs.tensor.get(tensor.name, 0.0)
    return total


def _capacity(value: float, what: str) -> int:
    if value < 0:
        raise ValueError(f"cost of {what} is negative ({value}); costs must be non-negative")
    return round(value * _SCALE)


def min_cut(graph: CutGraph, costs: CutCosts) -> tuple[frozenset[str], float]:
    """The split of least cost and that cost (exact; see the module docstring)."""
    network = nx.DiGraph()
    network.add_node(_SOURCE)
    network.add_node(_SINK)
    for node in graph.nodes:
        key = ("n", node)
        network.add_node(key)
        cloud = _capacity(costs.cloud.get(node, 0.0), f"node {node!r} in the cloud")
        edge = _capacity(costs.edge.get(node, 0.0), f"node {node!r} on the edge")
        if cloud:
            network.add_edge(_SOURCE, key, capacity=cloud)
        if edge:
            network.add_edge(key, _SINK, capacity=edge)
        for pred in graph.preds[node]:
            network.add_edge(key, ("n", pred))  # no capacity attribute: infinite
    for tensor in graph.tensors:
        if not tensor.consumers:
            continue
        aux = ("x", tensor.name)
        tail = _SOURCE if tensor.producer is None else ("n", tensor.producer)
        weight = _capacity(costs.tensor.get(tensor.name, 0.0), f"tensor {tensor.name!r}")
        if weight:
            network.add_edge(tail, aux, capacity=weight)
        else:
            network.add_node(aux)
        for consumer in tensor.consumers:
            network.add_edge(aux, ("n", consumer))
    _, (source_side, _) = nx.minimum_cut(network, _SOURCE, _SINK)
    edge_nodes = frozenset(key[1] for key in source_side if key[0] == "n")
    return edge_nodes, cut_cost(graph, costs, edge_nodes)


def closed_sets(graph: CutGraph, limit: int | None = None) -> Iterator[frozenset[str]]:
    """Every split (predecessor-closed node set), by deciding nodes in topological order.

    Raises :class:`TooManySplits` after ``limit`` sets when a limit is given.
    """
    nodes = graph.nodes
    count = 0

    def walk(index: int, chosen: frozenset[str]) -> Iterator[frozenset[str]]:
        nonlocal count
        if index == len(nodes):
            count += 1
            if limit is not None and count > limit:
                raise TooManySplits(f"more than {limit} splits")
            yield chosen
            return
        node = nodes[index]
        yield from walk(index + 1, chosen)
        if all(pred in chosen for pred in graph.preds[node]):
            yield from walk(index + 1, chosen | {node})

    yield from walk(0, frozenset())


def brute_force(graph: CutGraph, costs: CutCosts) -> tuple[frozenset[str], float]:
    """The split of least cost by trying every closed set (small graphs only)."""
    return min(((s, cut_cost(graph, costs, s)) for s in closed_sets(graph)), key=lambda item: item[1])


def lower_envelope(
    graph: CutGraph,
    linear: LinearCosts,
    u_low: float,
    u_high: float,
    solve: Callable[[CutGraph, CutCosts], tuple[frozenset[str], float]] = min_cut,
) -> list[EnvelopePiece]:
    """Every split optimal for some ``u`` in ``[u_low, u_high]``, ordered by increasing ``u``, exactly."""
    if not 0 <= u_low <= u_high:
        raise ValueError(f"need 0 <= u_low <= u_high, got {u_low}, {u_high}")
    lines: dict[frozenset[str], tuple[float, float]] = {}

    def solve_at(u: float) -> frozenset[str]:
        split, _ = solve(graph, linear.at(u))
        lines.setdefault(split, linear.line(graph, split))
        return split

    def value(split: frozenset[str], u: float) -> float:
        intercept, slope = lines[split]
        return intercept + u * slope

    def refine(left: frozenset[str], right: frozenset[str], depth: int) -> None:
        (a0, a1), (b0, b1) = lines[left], lines[right]
        if left == right or a1 <= b1 or depth > 200:
            return
        u = (b0 - a0) / (a1 - b1)
        if not u_low <= u <= u_high:
            return
        middle = solve_at(u)
        tolerance = 1e-9 * max(1.0, abs(value(left, u))) + 1e-10
        if middle in (left, right) or value(middle, u) >= value(left, u) - tolerance:
            return
        refine(left, middle, depth + 1)
        refine(middle, right, depth + 1)

    low, high = solve_at(u_low), solve_at(u_high)
    refine(low, high, 0)
    return _pieces(lines, u_low, u_high)


def _pieces(lines: Mapping[frozenset[str], tuple[float, float]], u_low: float, u_high: float) -> list[EnvelopePiece]:
    """The lower envelope of the lines over ``[u_low, u_high]``, one piece per optimal split."""
    ordered = sorted(lines.items(), key=lambda item: (-item[1][1], item[1][0]))
    pieces: list[EnvelopePiece] = []
    u = u_low
    while u <= u_high:
        best = min(ordered, key=lambda item: (item[1][0] + u * item[1][1], item[1][1]))
        split, (intercept, slope) = best
        # where does the next line (with a smaller slope) overtake this one?
        end = u_high
        for _, (b0, b1) in ordered:
            if b1 < slope:
                crossing = (b0 - intercept) / (slope - b1)
                if u < crossing < end:
                    end = crossing
        if not pieces or pieces[-1].edge_nodes != split:
            pieces.append(EnvelopePiece(split, intercept, slope, u, end))
        if end >= u_high:
            break
        u = end * (1 + 1e-12) + 1e-300
    return pieces


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indexes of the points not dominated in both coordinates (smaller is better), ties kept once."""
    keep: list[int] = []
    for i, (a, b) in enumerate(points):
        dominated = any(
            (c <= a and d <= b) and ((c, d) != (a, b) or j < i) for j, (c, d) in enumerate(points) if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


def enumerate_or_none(graph: CutGraph, limit: int) -> list[frozenset[str]] | None:
    """All splits when there are at most ``limit`` of them, else None."""
    try:
        return list(closed_sets(graph, limit))
    except TooManySplits:
        return None


# --- choosing splits for links, codecs and constraints --------------------------------------------------------------


class SplitPricer(Protocol):
    """What the choice needs from a cost model (see :class:`tandem.partitioner.costs.CostModel`)."""

    cut_graph: CutGraph

    def linear(self, codec: str) -> LinearCosts: ...

    def cost(self, edge_nodes: frozenset[str], codec: str, link: Any) -> Any: ...

    def edge_time(self, edge_nodes: Iterable[str]) -> float: ...

    def wire_bytes(self, edge_nodes: frozenset[str], codec: str) -> int: ...


@dataclass(frozen=True)
class Limits:
    """Constraints on a chosen split: bytes on the wire, edge compute seconds, and a latency SLO (checked)."""

    max_bytes: int | None = None
    max_edge_s: float | None = None
    latency_slo_s: float | None = None

    @property
    def active(self) -> bool:
        """Whether any limit restricts the choice (the SLO only reports)."""
        return self.max_bytes is not None or self.max_edge_s is not None


@dataclass(frozen=True)
class Choice:
    """The split and codec of least predicted latency on one link, and its cost terms."""

    edge_nodes: frozenset[str]
    codec: str
    cost: Any
    meets_slo: bool | None


def front(
    pricer: SplitPricer, codec: str, u_low: float, u_high: float
) -> tuple[list[EnvelopePiece], list[frozenset[str]]]:
    """The splits optimal for some ``u`` in the range, and the Pareto front of (edge time, bytes) over them,
    edge-only and cloud-only."""
    graph = pricer.cut_graph
    pieces = lower_envelope(graph, pricer.linear(codec), u_low, u_high)
    everything = frozenset(graph.nodes)
    splits = list(dict.fromkeys([frozenset(), *(p.edge_nodes for p in pieces), everything]))
    points = [(pricer.edge_time(s), float(pricer.wire_bytes(s, codec)) if s != everything else 0.0) for s in splits]
    return pieces, [splits[i] for i in pareto_front(points)]


def candidate_splits(
    pricer: SplitPricer, codec: str, *, limits: Limits, u_values: Sequence[float], u_max: float, brute_force_limit: int
) -> tuple[set[frozenset[str]], bool]:
    """Splits worth pricing for ``codec``, and whether choosing among them is exact.

    Without limits the lower envelope over ``[0, u_max]`` holds the optimum
    for every link (exact). With limits it also holds the Lagrangian
    candidates: the envelope at lower bandwidths (a byte budget is a price on
    bytes) and, with an edge-time budget, the envelope of a price on edge
    time at each link in ``u_values``. That is exact only when every split is
    enumerated as well, which happens when there are at most
    ``brute_force_limit`` of them.
    """
    graph = pricer.cut_graph
    linear = pricer.linear(codec)
    pool = {frozenset(), frozenset(graph.nodes)}
    pool.update(piece.edge_nodes for piece in lower_envelope(graph, linear, 0.0, u_max))
    if not limits.active:
        return pool, True
    if limits.max_edge_s is not None:
        edge_price = CutCosts(edge=dict(linear.base.edge), cloud={}, tensor={})
        for u in u_values:
            priced = LinearCosts(linear.at(u), edge_price)
            pool.update(piece.edge_nodes for piece in lower_envelope(graph, priced, 0.0, 1e6))
    everything = enumerate_or_none(graph, brute_force_limit) if brute_force_limit > 0 else None
    if everything is not None:
        pool.update(everything)
        return pool, True
    return pool, False


def choose_with_ties(
    pricer: SplitPricer,
    candidates: Mapping[str, Iterable[frozenset[str]]],
    link: Any,
    limits: Limits,
    allowed: Callable[[frozenset[str], str], bool] | None = None,
    *,
    spread: float = 0.0,
) -> tuple[Choice, list[Choice]] | None:
    """Like :func:`choose`, but latencies within ``spread`` (relative, of the best one's compute time) tie.

    Among tied (split, codec) pairs the one with fewest bytes on the wire wins, then fewer edge nodes,
    then less latency: a measurement's noise cannot flip the choice. Returns the choice and the others
    it tied with; None if nothing qualifies.
    """
    qualifying = _qualifying(pricer, candidates, link, limits, allowed)
    order = {codec: index for index, codec in enumerate(candidates)}
    if not qualifying:
        return None
    best = min(qualifying, key=lambda c: (c.cost.total_s, c.cost.wire_bytes, c.cost.edge_s))
    margin = spread * (best.cost.edge_s + best.cost.cloud_s)
    tied = [c for c in qualifying if c.cost.total_s <= best.cost.total_s + margin]
    tied.sort(
        key=lambda c: (c.cost.wire_bytes, len(c.edge_nodes), order[c.codec], c.cost.total_s, sorted(c.edge_nodes))
    )
    chosen = tied[0]
    # the same split sending the same bytes another way (edge-only with any codec) is no alternative
    others = [
        c for c in tied[1:] if not (c.edge_nodes == chosen.edge_nodes and c.cost.wire_bytes == chosen.cost.wire_bytes)
    ]
    return chosen, others


def choose(
    pricer: SplitPricer,
    candidates: Mapping[str, Iterable[frozenset[str]]],
    link: Any,
    limits: Limits,
    allowed: Callable[[frozenset[str], str], bool] | None = None,
) -> Choice | None:
    """The (split, codec) of least predicted latency on ``link`` within the limits; None if none qualifies.

    Ties go to fewer bytes on the wire, then to less edge time.
    """
    qualifying = _qualifying(pricer, candidates, link, limits, allowed)
    return min(qualifying, key=lambda c: (c.cost.total_s, c.cost.wire_bytes, c.cost.edge_s), default=None)


def _qualifying(
    pricer: SplitPricer,
    candidates: Mapping[str, Iterable[frozenset[str]]],
    link: Any,
    limits: Limits,
    allowed: Callable[[frozenset[str], str], bool] | None,
) -> list[Choice]:
    """Every (split, codec) in ``candidates`` that ``allowed`` admits and the byte and edge-time limits pass."""
    qualifying: list[Choice] = []
    for codec, splits in candidates.items():
        for split in splits:
            if allowed is not None and not allowed(split, codec):
                continue
            cost = pricer.cost(split, codec, link)
            if limits.max_bytes is not None and cost.wire_bytes > limits.max_bytes:
                continue
            if limits.max_edge_s is not None and cost.edge_s > limits.max_edge_s * (1 + 1e-12):
                continue
            meets = None if limits.latency_slo_s is None else cost.total_s <= limits.latency_slo_s
            qualifying.append(Choice(split, codec, cost, meets))
    return qualifying
