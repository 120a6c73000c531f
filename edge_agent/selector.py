"""Pick the split for the current link from the plan's cost table, without flapping."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tandem.edge_agent.config import HysteresisConfig, ObjectiveConfig
from tandem.edge_agent.link_estimator import LinkEstimate
from tandem.edge_agent.plan_view import AgentPlan, SplitOption

__all__ = ["SplitSelector"]

logger = logging.getLogger("tandem.edge.selector")


class SplitSelector:
    """Chooses among the plan's kept splits by the configured objective.

    The ideal split for the link is recomputed at every call; the selector
    moves to it only when the current one breaks the objective's constraint,
    or when it has been in use ``min_dwell_s`` and the new one is predicted
    ``min_gain`` faster (for ``min_latency``) or better by the objective.
    """

    def __init__(
        self,
        plan: AgentPlan,
        objective: ObjectiveConfig,
        hysteresis: HysteresisConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.objective = objective
        self.hysteresis = hysteresis
        self._clock = clock
        self.current: SplitOption | None = None
        self._since = 0.0
        self.switches = 0

    def choose(self, link: LinkEstimate, request_rate_hz: float | None = None) -> SplitOption:
        """The split to use for the next request on ``link``."""
        bandwidth, rtt = link.bandwidth_mbps or 1e-3, link.rtt_ms or 0.0
        best = self.ideal(bandwidth, rtt, request_rate_hz)
        current = self.current
        if current is None or current.split_id not in {s.split_id for s in self.plan.splits}:
            return self._switch(best, bandwidth, rtt, "first choice")
        if best.split_id == current.split_id:
            return current
        if not self._allowed(current, bandwidth, rtt, request_rate_hz):
            return self._switch(best, bandwidth, rtt, "current split breaks the objective")
        if self._clock() - self._since < self.hysteresis.min_dwell_s:
            return current
        if self.objective.mode == "min_latency":
            gain = 1 - best.predicted_ms(bandwidth, rtt) / max(current.predicted_ms(bandwidth, rtt), 1e-9)
            if gain < self.hysteresis.min_gain:
                return current
        return self._switch(best, bandwidth, rtt, "better for the link")

    def ideal(self, bandwidth_mbps: float, rtt_ms: float, request_rate_hz: float | None = None) -> SplitOption:
        """The objective's best split for this link, ignoring hysteresis."""
        by_latency = sorted(self.plan.splits, key=lambda s: s.predicted_ms(bandwidth_mbps, rtt_ms))
        allowed = [s for s in by_latency if self._allowed(s, bandwidth_mbps, rtt_ms, request_rate_hz)]
        if self.objective.mode == "latency_slo" and allowed:
            return min(
                allowed, key=lambda s: (0 if s.edge_only else s.wire_bytes, s.predicted_ms(bandwidth_mbps, rtt_ms))
            )
        return (allowed or by_latency)[0]

    def _allowed(self, split: SplitOption, bandwidth: float, rtt: float, rate_hz: float | None) -> bool:
        if self.objective.mode == "bandwidth_cap" and not split.edge_only:
            rate = rate_hz or 1000 / max(split.predicted_ms(bandwidth, rtt), 1e-3)
            return split.wire_bytes * 8 * rate / 1e6 <= float(self.objective.bandwidth_cap_mbps or 0)
        if self.objective.mode == "latency_slo":
            return split.predicted_ms(bandwidth, rtt) <= float(self.objective.latency_slo_ms or 0)
        return True

    def _switch(self, split: SplitOption, bandwidth: float, rtt: float, why: str) -> SplitOption:
        before = "start" if self.current is None else self.current.split_id
        if self.current is not None:
            self.switches += 1
        logger.info(
            "split %s -> %s (%s; link %.2f Mbit/s, RTT %.1f ms, predicted %.1f ms)",
            before, split.split_id, why, bandwidth, rtt, split.predicted_ms(bandwidth, rtt),
        )  # fmt: skip
        self.current = split
        self._since = self._clock()
        return split
