"""Pick the split for the current link from the plan's cost table, without flapping."""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable

from tandem.edge_agent.config import HysteresisConfig, ObjectiveConfig
from tandem.edge_agent.link_estimator import LinkEstimate
from tandem.edge_agent.plan_view import AgentPlan, SplitOption, WireBytes

__all__ = ["SplitSelector"]

logger = logging.getLogger("tandem.edge.selector")

_MEASURED_WINDOW_S = 10.0  # answers older than this no longer speak for a split
_MEASURED_MIN = 5  # answers needed before measured latency can overrule the prediction
_MAX_MARGIN = 0.5


class SplitSelector:
    """Chooses among the plan's kept splits by the configured objective.

    The ideal split for the link is recomputed at every call; the selector
    moves to it only when the current one breaks the objective's constraint,
    or when it has been in use ``min_dwell_s`` and the new one is predicted
    better by more than :meth:`margin`: twice the relative standard error of
    the bandwidth estimate, never less than ``min_gain``.

    Costs use the bytes each split really sent and the hub time it really took
    (``wire``), and the link's downlink estimate for the result. For ``latency_slo``, a split whose
    measured p50 over its last answers (``observe``) exceeds the SLO breaks it,
    whatever its prediction says.
    """

    def __init__(
        self,
        plan: AgentPlan,
        objective: ObjectiveConfig,
        hysteresis: HysteresisConfig,
        *,
        wire: WireBytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.objective = objective
        self.hysteresis = hysteresis
        self.wire = wire or WireBytes("")
        self._clock = clock
        self.current: SplitOption | None = None
        self._since = 0.0
        self.switches = 0
        self._measured: dict[str, deque[tuple[float, float]]] = {}

    def choose(self, link: LinkEstimate, request_rate_hz: float | None = None) -> SplitOption:
        """The split to use for the next request on ``link``."""
        best = self.ideal(link, request_rate_hz)
        current = self.current
        if current is None or current.split_id not in {s.split_id for s in self.plan.splits}:
            return self._switch(best, link, "first choice")
        if best.split_id == current.split_id:
            return current
        if not self._allowed(current, link, request_rate_hz):
            return self._switch(best, link, self._breaks(current, link))
        if self._clock() - self._since < self.hysteresis.min_dwell_s:
            return current
        if self.objective.mode == "min_latency":
            gain = 1 - self.predicted_ms(best, link) / max(self.predicted_ms(current, link), 1e-9)
            if gain <= self.margin(link):
                return current
        return self._switch(best, link, "better for the link")

    def margin(self, link: LinkEstimate) -> float:
        """The predicted gain a switch needs: the estimate's noise (2 standard errors), ``min_gain`` at least."""
        return min(max(self.hysteresis.min_gain, 2 * link.spread), _MAX_MARGIN)

    def predicted_ms(self, split: SplitOption, link: LinkEstimate) -> float:
        """``split``'s end-to-end latency on ``link`` with the bytes it really sends."""
        bandwidth, rtt = link.bandwidth_mbps or 1e-3, link.rtt_ms or 0.0
        wire = self.wire.of(split)
        return split.predicted_ms(
            bandwidth, rtt, downlink_mbps=link.downlink_mbps, wire_bytes=wire, burst_bytes=link.burst_bytes,
            cloud_ms=self.wire.cloud_ms_of(split),
        )  # fmt: skip

    def ideal(self, link: LinkEstimate, request_rate_hz: float | None = None) -> SplitOption:
        """The objective's best split for this link, ignoring hysteresis."""
        by_latency = sorted(self.plan.splits, key=lambda s: self.predicted_ms(s, link))
        allowed = [s for s in by_latency if self._allowed(s, link, request_rate_hz)]
        if self.objective.mode == "latency_slo" and allowed:
            return min(allowed, key=lambda s: (0 if s.edge_only else self.wire.of(s), self.predicted_ms(s, link)))
        return (allowed or by_latency)[0]

    def observe(self, split_id: str, latency_ms: float) -> None:
        """An answer on ``split_id`` took ``latency_ms`` end to end."""
        self._measured.setdefault(split_id, deque(maxlen=32)).append((self._clock(), latency_ms))

    def measured_p50(self, split_id: str) -> float | None:
        """The median latency of ``split_id``'s recent answers (None with fewer than five)."""
        horizon = self._clock() - _MEASURED_WINDOW_S
        recent = [ms for at, ms in self._measured.get(split_id, ()) if at >= horizon]
        return statistics.median(recent) if len(recent) >= _MEASURED_MIN else None

    def _allowed(self, split: SplitOption, link: LinkEstimate, rate_hz: float | None) -> bool:
        if self.objective.mode == "bandwidth_cap" and not split.edge_only:
            rate = rate_hz or 1000 / max(self.predicted_ms(split, link), 1e-3)
            return self.wire.of(split) * 8 * rate / 1e6 <= float(self.objective.bandwidth_cap_mbps or 0)
        if self.objective.mode == "latency_slo":
            slo = float(self.objective.latency_slo_ms or 0)
            measured = self.measured_p50(split.split_id)
            return self.predicted_ms(split, link) <= slo and (measured is None or measured <= slo)
        return True

    def _breaks(self, split: SplitOption, link: LinkEstimate) -> str:
        measured = self.measured_p50(split.split_id)
        slo = float(self.objective.latency_slo_ms or 0)
        if self.objective.mode == "latency_slo" and measured is not None and measured > slo:
            return f"current split measured p50 {measured:.1f} ms over the {slo:.0f} ms SLO"
        return "current split breaks the objective"

    def _switch(self, split: SplitOption, link: LinkEstimate, why: str) -> SplitOption:
        before = "start" if self.current is None else self.current.split_id
        if self.current is not None:
            self.switches += 1
        logger.info(
            "split %s -> %s (%s; link %.2f Mbit/s%s, RTT %.1f ms, predicted %.1f ms)",
            before, split.split_id, why, link.bandwidth_mbps or 0.0,
            " assumed, not yet measured" if link.assumed else "", link.rtt_ms or 0.0, self.predicted_ms(split, link),
        )  # fmt: skip
        self.current = split
        self._since = self._clock()
        return split
