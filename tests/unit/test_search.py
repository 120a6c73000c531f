"""Split search: the min cut and the parametric sweep are exact against brute force on random DAGs."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from tandem.partitioner.costs import Link
from tandem.partitioner.search import (
    CutCosts,
    CutGraph,
    CutTensor,
    Limits,
    LinearCosts,
    TooManySplits,
    brute_force,
    candidate_splits,
    choose,
    closed_sets,
    cut_cost,
    enumerate_or_none,
    is_closed,
    lower_envelope,
    min_cut,
    pareto_front,
)


def random_dag(rng: random.Random, n_nodes: int) -> CutGraph:
    """A random DAG: 1-3 graph inputs, multi-consumer tensors, skip connections, nodes with 1-2 outputs."""
    nodes = tuple(f"n{i}" for i in range(n_nodes))
    tensors: list[CutTensor] = []
    producers: list[tuple[str, str | None]] = [(f"in{k}", None) for k in range(rng.randint(1, 3))]
    consumers: dict[str, list[str]] = {name: [] for name, _ in producers}
    for index, node in enumerate(nodes):
        # read 1-3 existing tensors, biased towards recent ones, sometimes far back (skip connections)
        for name, _ in rng.sample(producers, k=min(len(producers), rng.randint(1, 3))):
            if node not in consumers[name]:
                consumers[name].append(node)
        for k in range(rng.choice((1, 1, 1, 2))):
            name = f"t{index}_{k}"
            producers.append((name, node))
            consumers[name] = []
    for name, producer in producers:
        tensors.append(CutTensor(name, producer, tuple(consumers[name])))
    return CutGraph(nodes, tuple(tensors))


def random_costs(rng: random.Random, graph: CutGraph) -> CutCosts:
    def cost() -> float:
        return 0.0 if rng.random() < 0.1 else rng.uniform(0.0, 1.0)

    return CutCosts(
        edge={n: cost() * 3 for n in graph.nodes},
        cloud={n: cost() for n in graph.nodes},
        tensor={t.name: cost() * 2 for t in graph.tensors},
    )


@pytest.mark.parametrize("seed", range(60))
def test_min_cut_equals_brute_force_on_random_dags(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_dag(rng, rng.randint(6, 14))
    costs = random_costs(rng, graph)
    split, value = min_cut(graph, costs)
    best_split, best = brute_force(graph, costs)
    assert is_closed(graph, split)
    assert value == pytest.approx(cut_cost(graph, costs, split))
    assert value == pytest.approx(best, abs=1e-9)
    assert cut_cost(graph, costs, best_split) == pytest.approx(best)


def test_multi_consumer_tensor_is_paid_once() -> None:
    # a -> (b, c, d) all reading tensor "ta"; putting only "a" on the edge sends "ta" once
    graph = CutGraph(
        ("a", "b", "c", "d"),
        (
            CutTensor("x", None, ("a",)),
            CutTensor("ta", "a", ("b", "c", "d")),
            CutTensor("tb", "b", ()),
            CutTensor("tc", "c", ()),
            CutTensor("td", "d", ()),
        ),
    )
    costs = CutCosts(
        edge={"a": 0.0, "b": 5.0, "c": 5.0, "d": 5.0},
        cloud={"a": 10.0, "b": 0.0, "c": 0.0, "d": 0.0},
        tensor={"x": 100.0, "ta": 1.0},
    )
    split, value = min_cut(graph, costs)
    assert split == frozenset({"a"})
    assert value == pytest.approx(1.0)


def test_graph_input_read_late_crosses_with_cloud_nodes() -> None:
    # the mask is read by the first and the last node; any cut before the end sends it
    graph = CutGraph(
        ("embed", "layer", "pool"),
        (
            CutTensor("ids", None, ("embed",)),
            CutTensor("mask", None, ("layer", "pool")),
            CutTensor("h0", "embed", ("layer",)),
            CutTensor("h1", "layer", ("pool",)),
            CutTensor("out", "pool", ()),
        ),
    )
    assert [t.name for t in graph.crossing(frozenset({"embed"}))] == ["mask", "h0"]
    assert [t.name for t in graph.crossing(frozenset())] == ["ids", "mask"]
    assert graph.crossing(frozenset(graph.nodes)) == []
    costs = CutCosts(
        edge={"embed": 0, "layer": 9, "pool": 9},
        cloud={"embed": 9, "layer": 0, "pool": 0},
        tensor={"ids": 5.0, "mask": 2.0, "h0": 1.0, "h1": 0.5},
    )
    split, value = min_cut(graph, costs)
    assert split == frozenset({"embed"})
    assert value == pytest.approx(3.0)  # mask 2 + h0 1


def test_closed_sets_of_a_chain_and_a_diamond() -> None:
    chain = CutGraph(("a", "b", "c"), (CutTensor("ta", "a", ("b",)), CutTensor("tb", "b", ("c",))))
    assert sorted(map(sorted, closed_sets(chain))) == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    diamond = CutGraph(
        ("a", "b", "c", "d"),
        (CutTensor("ta", "a", ("b", "c")), CutTensor("tb", "b", ("d",)), CutTensor("tc", "c", ("d",))),
    )
    sets = list(closed_sets(diamond))
    assert len(sets) == 6  # {}, a, ab, ac, abc, abcd
    assert all(is_closed(diamond, s) for s in sets)
    with pytest.raises(TooManySplits):
        list(closed_sets(diamond, limit=3))
    assert enumerate_or_none(diamond, 3) is None


def random_linear(rng: random.Random, graph: CutGraph) -> LinearCosts:
    base = random_costs(rng, graph)
    # slope: bytes on tensors, and on some cloud nodes (outputs returned from the cloud)
    slope = CutCosts(
        edge={},
        cloud={n: rng.uniform(0, 0.2) if rng.random() < 0.2 else 0.0 for n in graph.nodes},
        tensor={t.name: rng.uniform(0.0, 4.0) for t in graph.tensors},
    )
    return LinearCosts(base, slope)


@pytest.mark.parametrize("seed", range(25))
def test_lower_envelope_holds_the_optimum_for_every_parameter(seed: int) -> None:
    rng = random.Random(1000 + seed)
    graph = random_dag(rng, rng.randint(6, 12))
    linear = random_linear(rng, graph)
    pieces = lower_envelope(graph, linear, 0.0, 10.0)
    assert pieces and pieces[0].u_from == 0.0 and pieces[-1].u_to == 10.0
    envelope_splits = [piece.edge_nodes for piece in pieces]
    all_sets = list(closed_sets(graph))
    # a dense sweep: at every u, the best envelope split is as good as the best of all splits
    for k in range(120):
        u = 10.0 * (k / 119) ** 2
        best = min(cut_cost(graph, linear.at(u), s) for s in all_sets)
        from_envelope = min(cut_cost(graph, linear.at(u), s) for s in envelope_splits)
        assert from_envelope == pytest.approx(best, abs=1e-9)
    # each piece is optimal over its own interval, and the pieces tile [0, 10]
    for previous, piece in itertools.pairwise(pieces):
        assert piece.u_from == pytest.approx(previous.u_to)
        assert piece.slope < previous.slope
    for piece in pieces:
        middle = (piece.u_from + piece.u_to) / 2
        best = min(cut_cost(graph, linear.at(middle), s) for s in all_sets)
        assert piece.intercept + middle * piece.slope == pytest.approx(best, abs=1e-9)


def test_negative_cost_is_rejected() -> None:
    graph = CutGraph(("a",), (CutTensor("x", None, ("a",)),))
    with pytest.raises(ValueError, match="cost of node 'a' on the edge is negative"):
        min_cut(graph, CutCosts(edge={"a": -1.0}, cloud={}, tensor={}))


def test_pareto_front_keeps_non_dominated_points() -> None:
    points = [(0.0, 10.0), (1.0, 5.0), (2.0, 6.0), (3.0, 1.0), (3.0, 1.0), (4.0, 0.0), (5.0, 0.0)]
    assert pareto_front(points) == [0, 1, 3, 5]


class ToyPricer:
    """A cost model over a random DAG: node times and tensor bytes, priced like tandem.partitioner.costs.CostModel."""

    def __init__(self, graph: CutGraph, base: CutCosts, nbytes: dict[str, float], rtt_s: float) -> None:
        self.cut_graph = graph
        self.base = base
        self.nbytes = nbytes
        self.rtt_s = rtt_s

    def linear(self, codec: str) -> LinearCosts:
        return LinearCosts(self.base, CutCosts({}, {}, self.nbytes))

    def edge_time(self, edge_nodes: frozenset[str]) -> float:
        return sum(self.base.edge[n] for n in edge_nodes)

    def wire_bytes(self, edge_nodes: frozenset[str], codec: str) -> int:
        return int(sum(self.nbytes[t.name] for t in self.cut_graph.crossing(edge_nodes)))

    def cost(self, edge_nodes: frozenset[str], codec: str, link: Link) -> SimpleNamespace:
        total = cut_cost(self.cut_graph, self.linear(codec).at(link.seconds_per_byte), edge_nodes)
        if edge_nodes != frozenset(self.cut_graph.nodes):
            total += self.rtt_s
        return SimpleNamespace(
            total_s=total, wire_bytes=self.wire_bytes(edge_nodes, codec), edge_s=self.edge_time(edge_nodes)
        )


def constrained_optimum(pricer: ToyPricer, link: Link, limits: Limits) -> float | None:
    best = None
    for split in closed_sets(pricer.cut_graph):
        cost = pricer.cost(split, "raw", link)
        if limits.max_bytes is not None and cost.wire_bytes > limits.max_bytes:
            continue
        if limits.max_edge_s is not None and cost.edge_s > limits.max_edge_s:
            continue
        best = cost.total_s if best is None else min(best, cost.total_s)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_choice_under_constraints_is_exact_with_enumeration_and_feasible_without(seed: int) -> None:
    rng = random.Random(5000 + seed)
    graph = random_dag(rng, rng.randint(6, 12))
    base = random_costs(rng, graph)
    nbytes = {t.name: float(rng.randint(1, 200_000)) for t in graph.tensors}
    pricer = ToyPricer(graph, base, nbytes, rtt_s=0.02)
    link = Link(bandwidth_mbps=rng.choice([1.0, 10.0, 100.0]), rtt_s=0.02)
    everything = frozenset(graph.nodes)
    sizes = sorted(pricer.wire_bytes(s, "raw") for s in closed_sets(graph))
    limits = Limits(max_bytes=sizes[len(sizes) // 3], max_edge_s=pricer.edge_time(everything) * 0.6)
    # without limits: the envelope alone is exact
    pool, exact = candidate_splits(
        pricer, "raw", limits=Limits(), u_values=[link.seconds_per_byte], u_max=1.0, brute_force_limit=0
    )
    free = choose(pricer, {"raw": pool}, link, Limits())
    assert exact and free is not None
    assert free.cost.total_s == pytest.approx(constrained_optimum(pricer, link, Limits()), abs=1e-9)
    # with limits and every split enumerated: exact
    pool, exact = candidate_splits(
        pricer, "raw", limits=limits, u_values=[link.seconds_per_byte], u_max=1.0, brute_force_limit=100_000
    )
    chosen = choose(pricer, {"raw": pool}, link, limits)
    optimum = constrained_optimum(pricer, link, limits)
    assert exact
    if optimum is None:
        assert chosen is None
        return
    assert chosen is not None and chosen.cost.total_s == pytest.approx(optimum, abs=1e-9)
    # with limits, Lagrangian candidates only: never infeasible, never better than the optimum
    pool, exact = candidate_splits(
        pricer, "raw", limits=limits, u_values=[link.seconds_per_byte], u_max=1.0, brute_force_limit=0
    )
    assert not exact
    heuristic = choose(pricer, {"raw": pool}, link, limits)
    if heuristic is not None:
        assert heuristic.cost.wire_bytes <= limits.max_bytes
        assert heuristic.cost.edge_s <= limits.max_edge_s
        assert heuristic.cost.total_s >= optimum - 1e-9


def test_slo_is_reported_on_the_choice() -> None:
    graph = CutGraph(("a",), (CutTensor("x", None, ("a",)), CutTensor("y", "a", ())))
    pricer = ToyPricer(graph, CutCosts({"a": 0.5}, {"a": 0.01}, {}), {"x": 1000.0, "y": 0.0}, rtt_s=0.02)
    link = Link(bandwidth_mbps=1.0, rtt_s=0.02)
    candidates = {"raw": [frozenset(), frozenset({"a"})]}
    met = choose(pricer, candidates, link, Limits(latency_slo_s=0.1))
    missed = choose(pricer, candidates, link, Limits(latency_slo_s=0.01))
    assert met is not None and met.edge_nodes == frozenset() and met.meets_slo is True
    assert missed is not None and missed.meets_slo is False
    assert choose(pricer, candidates, link, Limits()).meets_slo is None  # type: ignore[union-attr]
