"""The demo's world, derived from the plan: links at which cloud-only, a cut and edge-only each win clearly.

A fixed link (say 50 Mbit/s and 20 ms) means different things on different
hosts: the plan's compute times are measured here, the link is not, so on a
fast host edge-only wins everywhere and on a slow one cloud-only does. Here the
links are chosen from the plan's own predictions instead
(:meth:`SplitOption.predicted_ms`, the figures the agents choose with): one
round-trip time for the whole story, and for each winner the uplink bandwidth
at which it beats every other split by more than the agents' hysteresis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from tandem.edge_agent.plan_view import SplitOption
from tandem.errors import TandemError

__all__ = [
    "NEAR",
    "RTT_GRID_MS",
    "SAFETY",
    "Link",
    "NoWorldError",
    "Winner",
    "derive_world",
    "kind_of",
    "link_for",
    "predict",
    "story_kinds",
]

Winner = Literal["cloud-only", "cut", "edge-only"]
WINNERS: tuple[Winner, ...] = ("cloud-only", "cut", "edge-only")

RTT_GRID_MS = (2.0, 5.0, 10.0, 20.0, 40.0)
BANDWIDTH_GRID_MBPS = tuple(float(b) for b in np.geomspace(0.25, 1000.0, 97))
SAFETY = 0.10
"""How far beyond the hysteresis a winner must be ahead: the agents measure the link, and measurements scatter."""


class NoWorldError(TandemError):
    """No link makes each winner the clear choice for this plan; the message says which and what to change."""


@dataclass(frozen=True)
class Link:
    """One emulated uplink, the split the plan predicts for it, and how clearly that split wins."""

    bandwidth_mbps: float
    rtt_ms: float
    split_id: str
    predicted_ms: float
    gains: dict[str, float]
    """Per other split: how much faster the winner is predicted, ``1 - winner_ms / other_ms``."""

    @property
    def gain(self) -> float:
        """The smallest of :attr:`gains`: the winner's lead over its closest rival."""
        return min(self.gains.values(), default=math.inf)

    def describe(self) -> str:
        """``cut-02 beats cloud-only by 31 % and edge-only by 24 % at 8 Mbit/s, 5 ms``."""
        rivals = sorted(self.gains.items(), key=lambda item: item[1])
        lead = " and ".join(f"{split} by {gain:.0%}" for split, gain in rivals[:2])
        return f"{self.split_id} beats {lead} at {self.bandwidth_mbps:.3g} Mbit/s, {self.rtt_ms:.3g} ms"


NEAR = 0.15
"""A cut whose predicted latency stays this close to cloud-only's on every link tells cloud-only's story."""


def kind_of(split: SplitOption, splits: Sequence[SplitOption] | None = None) -> Winner:
    """Which of the three winners ``split`` stands for; with the plan's ``splits``, as the story sees it.

    Partitioners keep cuts that differ from cloud-only by a node or two (a
    padding op at the input, 0.2 % faster at 1 Gbit/s): the agents never tell
    them apart from cloud-only, so they count as cloud-only (see :func:`story_kinds`).
    """
    if splits is None:
        return _plain_kind(split)
    return story_kinds(tuple(splits))[split.split_id]


def _plain_kind(split: SplitOption) -> Winner:
    if split.edge_only:
        return "edge-only"
    return "cloud-only" if split.edge_path is None else "cut"


@cache
def story_kinds(splits: tuple[SplitOption, ...]) -> dict[str, Winner]:
    """Each split's winner kind; a cut within :data:`NEAR` of cloud-only on every link of the grid is cloud-only."""
    cloud = next((s for s in splits if _plain_kind(s) == "cloud-only"), None)

    def near_cloud(split: SplitOption) -> bool:
        return cloud is not None and all(
            abs(split.predicted_ms(bandwidth, rtt) / cloud.predicted_ms(bandwidth, rtt) - 1) < NEAR
            for rtt in RTT_GRID_MS
            for bandwidth in BANDWIDTH_GRID_MBPS
        )

    return {s.split_id: "cloud-only" if _plain_kind(s) == "cut" and near_cloud(s) else _plain_kind(s) for s in splits}


def predict(splits: Sequence[SplitOption], bandwidth_mbps: float, rtt_ms: float) -> Link:
    """The split the plan predicts fastest on this link, with its lead over every other split."""
    times = {s.split_id: s.predicted_ms(bandwidth_mbps, rtt_ms) for s in splits}
    best = min(times, key=lambda split_id: times[split_id])
    gains = {other: 1 - times[best] / ms for other, ms in times.items() if other != best}
    return Link(bandwidth_mbps, rtt_ms, best, times[best], _fold_cuts(splits, best, gains))


def _fold_cuts(splits: Sequence[SplitOption], best: str, gains: dict[str, float]) -> dict[str, float]:
    """Splits of the winner's own kind are no rivals of the story (any cut shows it): they leave ``gains``."""
    kinds = story_kinds(tuple(splits))
    return {other: gain for other, gain in gains.items() if kinds[other] != kinds[best]}


def link_for(splits: Sequence[SplitOption], winner: Winner, rtt_ms: float, required_gain: float) -> Link | None:
    """The uplink at which ``winner`` leads by at least ``required_gain``; None if no bandwidth makes it so.

    A cut is shown where its lead is largest. Cloud-only and edge-only lead
    more the further the bandwidth goes to one end, so they take the bandwidth
    nearest the cut's (the least extreme link) where their lead is halfway
    between ``required_gain`` and the largest lead the grid offers.
    """
    candidates = [
        link
        for link in (predict(splits, bandwidth, rtt_ms) for bandwidth in BANDWIDTH_GRID_MBPS)
        if kind_of(_by_id(splits, link.split_id), splits) == winner
    ]
    if not candidates or max(link.gain for link in candidates) < required_gain:
        return None
    best = max(candidates, key=lambda link: link.gain)
    if winner != "cut":
        enough = (required_gain + best.gain) / 2 if math.isfinite(best.gain) else required_gain
        middle = _cut_bandwidth(splits, rtt_ms)
        clear = [link for link in candidates if link.gain >= enough]
        best = min(clear, key=lambda link: abs(math.log(link.bandwidth_mbps / middle)))
    # A bandwidth a person reads (two significant figures), unless rounding costs the lead.
    rounded = predict(splits, float(f"{best.bandwidth_mbps:.2g}"), rtt_ms)
    keeps_lead = kind_of(_by_id(splits, rounded.split_id), splits) == winner and rounded.gain >= required_gain
    return rounded if keeps_lead else best


def derive_world(splits: Sequence[SplitOption], hysteresis: float) -> dict[Winner, Link]:
    """One RTT and, per winner, the uplink at which it beats every other split by ``hysteresis + SAFETY``.

    Of the round-trip times in :data:`RTT_GRID_MS`, the largest at which all
    three winners lead comfortably (by twice the safety margin) is taken, else
    the one where the weakest winner leads most. Raises :class:`NoWorldError`
    when no RTT lets all three win clearly.
    """
    required = hysteresis + SAFETY
    if not any(kind_of(s, splits) == "cut" for s in splits):
        raise NoWorldError("the plan keeps no mid-network cut, so there is no split to move to")
    for needed in ("cloud-only", "edge-only"):
        if not any(kind_of(s, splits) == needed for s in splits):
            raise NoWorldError(f"the plan keeps no {needed} split for the codec, so the demo cannot show it win")
    worlds = {rtt: _world_at(splits, rtt, required) for rtt in RTT_GRID_MS}
    complete = {rtt: world for rtt, world in worlds.items() if all(world.get(w) for w in WINNERS)}
    if not complete:
        raise NoWorldError(_why_none(splits, required))

    def weakest(world: dict[Winner, Link | None]) -> float:
        return min(link.gain for link in world.values() if link is not None)

    comfortable = [rtt for rtt, world in complete.items() if weakest(world) >= required + SAFETY]
    rtt = max(comfortable) if comfortable else max(complete, key=lambda r: weakest(complete[r]))
    return {winner: link for winner, link in complete[rtt].items() if link is not None}


def _world_at(splits: Sequence[SplitOption], rtt_ms: float, required: float) -> dict[Winner, Link | None]:
    return {winner: link_for(splits, winner, rtt_ms, required) for winner in WINNERS}


def _why_none(splits: Sequence[SplitOption], required: float) -> str:
    """Which winner never leads by ``required``, and its best showing."""
    links = [predict(splits, bandwidth, rtt) for rtt in RTT_GRID_MS for bandwidth in BANDWIDTH_GRID_MBPS]
    lines = []
    for winner in WINNERS:
        won = [link for link in links if kind_of(_by_id(splits, link.split_id), splits) == winner]
        best = max(won, key=lambda link: link.gain, default=None)
        if best is None:
            lines.append(f"{winner} is never the fastest split at any bandwidth and RTT")
        elif best.gain < required:
            lines.append(f"{winner} at best: {best.describe()}")
    return (
        f"no link makes cloud-only, a mid-network cut and edge-only each win by the agents' hysteresis plus "
        f"{SAFETY:.0%} ({required:.0%}): " + "; ".join(lines)
    )


def _cut_bandwidth(splits: Sequence[SplitOption], rtt_ms: float) -> float:
    links = [predict(splits, bandwidth, rtt_ms) for bandwidth in BANDWIDTH_GRID_MBPS]
    cuts = [link for link in links if kind_of(_by_id(splits, link.split_id), splits) == "cut"]
    if not cuts:
        return math.sqrt(BANDWIDTH_GRID_MBPS[0] * BANDWIDTH_GRID_MBPS[-1])
    return max(cuts, key=lambda link: link.gain).bandwidth_mbps


def _by_id(splits: Sequence[SplitOption], split_id: str) -> SplitOption:
    return next(s for s in splits if s.split_id == split_id)
