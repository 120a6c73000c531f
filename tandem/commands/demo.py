"""``tandem demo``: the whole runtime on loopback, as separate processes.

1. Partition a reference model (``tandem partition``).
2. Start the hub and the agents as processes (``tandem hub``, ``tandem edge``),
   each agent behind an emulated uplink and emulating the slower edge device
   the plan was made for.
3. Stream real photos through the agents' local endpoints; halfway the
   uplink bandwidth drops (the split moves), later the hub is killed for a few
   seconds (answers turn local and degraded, then split inference resumes).
4. Print a summary per phase, check every answer against the unsplit model,
   and plot latency over time with the split in use and degraded periods.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator

from tandem.config import StrictModel, load_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edge_agent.plan_view import SplitOption

__all__ = ["DEMO_MIN_GAIN", "DEMO_MODELS", "DemoConfig", "DemoError", "register", "run", "showcase_bandwidth"]

DEMO_MIN_GAIN = 0.15
"""The agents' hysteresis: a split is left for one predicted this much faster."""


class Phase(StrictModel):
    """From ``at_s`` on, the agents' emulated uplink has these values.

    ``bandwidth_mbps: auto`` lets the demo pick, from the plan's measured costs,
    the uplink at which a mid-network cut wins most clearly (see
    :func:`showcase_bandwidth`): where that is depends on how fast this machine
    computes against a fixed link, so no one figure shows a cut everywhere.
    """

    at_s: float = Field(..., ge=0)
    bandwidth_mbps: float | Literal["auto"] = Field(..., description="Mbit/s (> 0), or auto")
    rtt_ms: float = Field(20.0, ge=0)
    name: str = ""

    @field_validator("bandwidth_mbps")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if value != "auto" and float(value) <= 0:
            raise ValueError("expected a bandwidth > 0 in Mbit/s, or auto")
        return value


class Outage(StrictModel):
    """The hub is killed at ``at_s`` and restarted ``duration_s`` later."""

    at_s: float = Field(..., ge=0)
    duration_s: float = Field(..., gt=0)


# The reference models the demo can feed: it streams 224x224 crops of photos (ImageNet-normalised).
DEMO_MODELS = ("mobilenet_v2", "resnet50", "vgg16")


class DemoError(Exception):
    """A step of the demo failed (partitioning, a process that did not start); the message says which and where."""


class DemoConfig(StrictModel):
    """``configs/demo.yaml``; every key has a default, so ``tandem demo`` runs without a file."""

    model: str = Field("mobilenet_v2", description=f"one of {', '.join(DEMO_MODELS)}")
    workdir: Path = Path("demo-out")
    codec: str = "int8+zstd"
    agents: int = Field(2, ge=1, le=8)
    rate_hz: float = Field(3.0, gt=0, description="requests per second per agent")
    duration_s: float = Field(60.0, gt=0)
    deadline_ms: float = Field(600.0, gt=0)
    phases: list[Phase] = Field(
        default_factory=lambda: [
            Phase(at_s=0, bandwidth_mbps=50, name="good link"),
            Phase(at_s=22, bandwidth_mbps="auto", name="bandwidth drop"),
        ]
    )
    outage: Outage | None = Field(default_factory=lambda: Outage(at_s=40, duration_s=8))
    hub_port: int = Field(5755, gt=0, lt=65536)
    endpoint_port: int = Field(5760, gt=0, lt=65536, description="agent i listens on endpoint_port + i")

    @field_validator("model")
    @classmethod
    def _photo_classifier(cls, value: str) -> str:
        if value not in DEMO_MODELS:
            raise ValueError(
                f"the demo streams 224x224 photo crops, so it runs one of {', '.join(DEMO_MODELS)}; "
                "partition other models with `tandem partition` and serve them with `tandem hub` / `tandem edge`"
            )
        return value


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="partition, start hub and agents, stream, change the link, kill the hub",
        description="Everything on loopback: partition the model, start a hub and edge agents, stream real "
        "photos, change the uplink, kill and restart the hub, and write demo-summary.json and demo.png.",
    )
    parser.add_argument("--config", type=Path, help="demo.yaml (default: built-in MobileNetV2 scenario)")
    parser.add_argument("--reuse-plan", action="store_true", help="skip partitioning when WORKDIR/plan exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the scenario; exit 0 when every request got exactly one correct answer."""
    config = load_config(args.config, DemoConfig) if args.config else DemoConfig()
    work = config.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan_dir = work / "plan"
    if not (args.reuse_plan and (plan_dir / "plan.yaml").exists()):
        _partition(config, plan_dir)
    from partitioner.plan import load_plan

    plan = load_plan(plan_dir)
    slowdown = plan.edge.emulation_factor or 1.0
    print(f"\n== plan {plan.plan_id}: splits {[s.id for s in plan.splits]}; edge emulated x{slowdown:.2f}", flush=True)
    config = _resolve_auto_phases(config, plan_dir)
    inputs, references = _inputs(plan_dir / plan.model.path, plan.model.inputs[0].name)
    processes = _Processes(work)
    try:
        processes.start_hub(_write_hub_config(config, work, plan_dir))
        for i in range(config.agents):
            processes.start_agent(i, _write_edge_config(config, work, plan_dir, i, slowdown))
        records = _stream(config, processes, inputs, references, plan)
    finally:
        processes.stop_all()
    return _report(config, work, records)


def showcase_bandwidth(splits: Sequence[SplitOption], start: SplitOption, rtt_ms: float) -> tuple[float, float]:
    """The uplink (Mbit/s) at which a mid-network cut wins most clearly, and by how much.

    At each bandwidth of a log grid, the best cut must beat every other split
    (it is predicted ``margin`` faster than the best of them) and be worth
    leaving ``start`` for: its gain over ``start`` must clear the agents'
    hysteresis (``DEMO_MIN_GAIN``) by the same margin. Returns the bandwidth
    with the largest margin; a margin <= 0 means no bandwidth shows a cut for
    this plan (the bandwidth returned is then the closest call).
    """
    cuts = [s for s in splits if not s.edge_only and s.edge_path is not None]
    others = [s for s in splits if s not in cuts]
    if not cuts:
        return 0.0, -math.inf
    best_margin, best_bandwidth = -math.inf, 0.0
    for bandwidth in np.geomspace(0.5, 500.0, 241):
        cut_ms = min(s.predicted_ms(bandwidth, rtt_ms) for s in cuts)
        over_others = min((s.predicted_ms(bandwidth, rtt_ms) for s in others), default=math.inf) / cut_ms - 1
        over_start = 1 - cut_ms / start.predicted_ms(bandwidth, rtt_ms) - DEMO_MIN_GAIN
        margin = min(over_others, over_start)
        if margin > best_margin:
            best_margin, best_bandwidth = margin, float(bandwidth)
    return float(f"{best_bandwidth:.2g}"), best_margin


def _resolve_auto_phases(config: DemoConfig, plan_dir: Path) -> DemoConfig:
    """``config`` with each ``bandwidth_mbps: auto`` replaced by :func:`showcase_bandwidth`'s pick."""
    phases = sorted(config.phases, key=lambda p: p.at_s)
    if not any(p.bandwidth_mbps == "auto" for p in phases):
        return config
    from edge_agent.plan_view import load_agent_plan

    splits = load_agent_plan(plan_dir, config.codec).splits
    resolved: list[Phase] = []
    for i, phase in enumerate(phases):
        if phase.bandwidth_mbps != "auto":
            resolved.append(phase)
            continue
        before = resolved[-1] if resolved else None
        start_bandwidth = float(before.bandwidth_mbps) if before else 1000.0
        start = min(splits, key=lambda s: s.predicted_ms(start_bandwidth, before.rtt_ms if before else phase.rtt_ms))
        bandwidth, margin = showcase_bandwidth(splits, start, phase.rtt_ms)
        if margin <= 0:
            print(f"   phase {i} ({phase.name or 'auto'}): no uplink makes a mid-network cut clearly best for this "
                  f"plan with codec {config.codec}; using {bandwidth} Mbit/s, the closest call")  # fmt: skip
        else:
            print(f"   phase {i} ({phase.name or 'auto'}): bandwidth auto -> {bandwidth} Mbit/s, where the plan "
                  f"predicts a cut {margin:.0%} ahead of both edge-only and leaving {start.split_id}")  # fmt: skip
        resolved.append(phase.model_copy(update={"bandwidth_mbps": bandwidth}))
    return config.model_copy(update={"phases": resolved})


def _partition(config: DemoConfig, plan_dir: Path) -> None:
    print(f"== tandem partition {config.model} --out {plan_dir}", flush=True)
    command = [sys.executable, "-m", "tandem.cli", "partition", config.model, "--out", str(plan_dir)]
    if subprocess.run(command).returncode != 0:
        raise DemoError(f"partitioning {config.model} failed (its error is above); nothing was started")


def _inputs(full_model: Path, input_name: str, count: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Crops of the photos scikit-learn ships, and the unsplit model's output on each."""
    from sklearn.datasets import load_sample_image

    from tandem.executors import open_executor

    rng = np.random.default_rng(0)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    images = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    inputs = []
    for i in range(count):
        image = images[i % 2]
        top, left = rng.integers(0, image.shape[0] - 224), rng.integers(0, image.shape[1] - 224)
        crop = image[top : top + 224, left : left + 224].astype(np.float32) / 255
        inputs.append(((crop - mean) / std).transpose(2, 0, 1)[None].astype(np.float32))
    full = open_executor("onnxruntime", full_model)
    return inputs, [next(iter(full.run({input_name: x}).values())) for x in inputs]


def _write_hub_config(config: DemoConfig, work: Path, plan_dir: Path) -> Path:
    hub = {
        "plans": [str(plan_dir)],
        "channels": [{"type": "zmq", "address": f"tcp://127.0.0.1:{config.hub_port}"}],
        "batching": {"enabled": True, "max_batch_size": 8, "max_queue_delay_ms": 4},
        "metrics": {"port": 0},
        "reply_codec": "raw",
    }
    path = work / "hub.yaml"
    path.write_text(yaml.safe_dump(hub, sort_keys=False))
    return path


def _write_edge_config(config: DemoConfig, work: Path, plan_dir: Path, index: int, slowdown: float) -> Path:
    first, *later = sorted(config.phases, key=lambda p: p.at_s)
    edge = {
        "device_id": f"edge-{index}",
        "plan": str(plan_dir),
        "codec": config.codec,
        "channel": {"type": "zmq", "address": f"tcp://127.0.0.1:{config.hub_port}"},
        "executor": "onnxruntime",
        "executor_threads": 1,  # as the partitioner measured it, so the emulation factor applies as planned
        "deadline_ms": config.deadline_ms,
        "hysteresis": {"min_gain": DEMO_MIN_GAIN, "min_dwell_s": 2.0},
        "retry": {"initial_s": 0.5, "max_s": 2.0, "failures_to_mark_down": 2},
        "endpoint": {"address": f"tcp://127.0.0.1:{config.endpoint_port + index}", "workers": 2},
        "probe_interval_s": 1.0,
        "telemetry_interval_s": 5.0,
        "emulation": {
            "edge_slowdown": round(slowdown, 3),
            "link": {"bandwidth_mbps": first.bandwidth_mbps, "rtt_ms": first.rtt_ms, "downlink_mbps": 100},
            "schedule": [{"at_s": p.at_s, "bandwidth_mbps": p.bandwidth_mbps, "rtt_ms": p.rtt_ms} for p in later],
        },
    }
    path = work / f"edge-{index}.yaml"
    path.write_text(yaml.safe_dump(edge, sort_keys=False))
    return path


class _Processes:
    """The hub and agent processes, their logs, and how to stop them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.hub: subprocess.Popen[bytes] | None = None
        self.hub_config: Path | None = None
        self.agents: list[subprocess.Popen[bytes]] = []
        self.endpoints: list[str] = []
        self._spawned: set[str] = set()

    def start_hub(self, config: Path) -> None:
        self.hub_config = config
        self.hub = self._spawn("hub", ["hub", "--config", str(config)], "listening on")

    def start_agent(self, index: int, config: Path) -> None:
        self.agents.append(self._spawn(f"edge-{index}", ["edge", "--config", str(config)], "local endpoint listening"))
        settings = yaml.safe_load(config.read_text())
        self.endpoints.append(settings["endpoint"]["address"])

    def kill_hub(self) -> None:
        if self.hub is not None:
            self.hub.send_signal(signal.SIGKILL)
            self.hub.wait()
            self.hub = None

    def restart_hub(self) -> None:
        if self.hub_config is not None:
            self.start_hub(self.hub_config)

    def stop_all(self) -> None:
        for process in [*self.agents, *([self.hub] if self.hub else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.agents, *([self.hub] if self.hub else [])]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    def _spawn(self, name: str, args: list[str], ready: str, timeout: float = 90.0) -> subprocess.Popen[bytes]:
        """Start ``tandem ARGS`` logging to WORKDIR/NAME.log; return once that start has logged ``ready``.

        A name's first start in this run begins a new log; a restart (the hub
        after the outage) appends to it. Only what this start wrote counts as
        ready: an earlier run's or start's "listening on" must not.
        """
        log = self.work / f"{name}.log"
        restart = name in self._spawned
        self._spawned.add(name)
        offset = log.stat().st_size if restart and log.exists() else 0
        handle = log.open("ab" if restart else "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, "-m", "tandem.cli", *args], stdout=handle, stderr=handle, env=env)
        handle.close()
        deadline = time.monotonic() + timeout
        while ready not in _text_from(log, offset):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"{name} did not start; see {log}:\n{_text_from(log, offset)[-2000:]}")
            time.sleep(0.2)
        print(f"   started {name} (pid {process.pid}), log {log}", flush=True)
        return process


def _text_from(log: Path, offset: int) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _stream(
    config: DemoConfig, processes: _Processes, inputs: list[np.ndarray], references: list[np.ndarray], plan: Any
) -> list[dict[str, Any]]:
    from edge_agent.endpoint import LocalClient

    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop = threading.Event()
    name = plan.model.inputs[0].name

    def drive(index: int) -> None:
        client = LocalClient(processes.endpoints[index], name=f"demo-app-{index}", timeout_s=30)
        sent = 0
        try:
            while not stop.is_set():
                due = started + sent / config.rate_hz
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
                k = (sent + index) % len(inputs)
                t = time.monotonic() - started
                outputs, meta = client.infer({name: inputs[k]})
                error = float(np.abs(next(iter(outputs.values())) - references[k]).max() / np.abs(references[k]).max())
                with lock:
                    records.append({"agent": index, "seq": sent, "t": t, **_pick(meta), "rel_error": error})
                sent += 1
        finally:
            client.close()

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(config.agents)]
    for thread in threads:
        thread.start()
    print(
        f"\n== streaming: {config.agents} agent(s) x {config.rate_hz} req/s for {config.duration_s:.0f} s", flush=True
    )
    for phase in sorted(config.phases, key=lambda p: p.at_s)[1:]:
        print(f"   t={phase.at_s:.0f}s: uplink -> {phase.bandwidth_mbps} Mbit/s ({phase.name})", flush=True)
    outage = config.outage
    killed = restarted = outage is None
    while time.monotonic() - started < config.duration_s:
        now = time.monotonic() - started
        if outage and not killed and now >= outage.at_s:
            print(f"   t={now:.0f}s: killing the hub (SIGKILL)", flush=True)
            processes.kill_hub()
            killed = True
        if outage and killed and not restarted and now >= outage.at_s + outage.duration_s:
            print(f"   t={now:.0f}s: restarting the hub", flush=True)
            processes.restart_hub()
            restarted = True
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(records, key=lambda r: r["t"])


def _pick(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "split": meta["split"],
        "source": meta["source"],
        "degraded": bool(meta["degraded"]),
        "latency_ms": float(meta["latency_ms"]),
        "reason": meta.get("reason", ""),
        "timing": meta.get("timing", {}),
    }


def _phase_of(config: DemoConfig, t: float) -> str:
    if config.outage and config.outage.at_s <= t < config.outage.at_s + config.outage.duration_s:
        return "hub outage"
    current = sorted(config.phases, key=lambda p: p.at_s)[0]
    for phase in sorted(config.phases, key=lambda p: p.at_s):
        if t >= phase.at_s:
            current = phase
    return current.name or f"{current.bandwidth_mbps} Mbit/s"


def _report(config: DemoConfig, work: Path, records: list[dict[str, Any]]) -> int:
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_phase[_phase_of(config, record["t"])].append(record)
    header = ("phase", "requests", "hub", "edge", "local*", "p50 ms", "p99 ms")
    print("\n{:16s} {:>8s} {:>5s} {:>5s} {:>6s} {:>8s} {:>8s}  splits used".format(*header))
    for phase, rows in by_phase.items():
        sources = Counter(r["source"] for r in rows)
        latencies = sorted(r["latency_ms"] for r in rows)
        p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        splits = ", ".join(f"{s} x{n}" for s, n in Counter(r["split"] for r in rows).most_common())
        print(
            f"{phase:16s} {len(rows):8d} {sources['hub']:5d} {sources['edge']:5d} {sources['fallback']:6d} "
            f"{p50:8.1f} {p99:8.1f}  {splits}"
        )
    print("(* local = degraded answers from the full model on the edge while the hub was unreachable)")
    worst = max((r["rel_error"] for r in records), default=0.0)
    per_agent = Counter(r["agent"] for r in records)
    sequences_ok = all(
        sorted(r["seq"] for r in records if r["agent"] == a) == list(range(n)) for a, n in per_agent.items()
    )
    print(f"\nanswers: {len(records)}, each request answered exactly once: {sequences_ok}")
    print(f"max |answer - unsplit model| / max |unsplit| = {worst:.2e} (codec {config.codec})")
    summary = {"records": records, "exactly_once": sequences_ok, "max_rel_error": worst, "codec": config.codec}
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=1))
    _plot(config, records, work / "demo.png")
    print(f"wrote {work / 'demo-summary.json'} and {work / 'demo.png'}")
    return 0 if sequences_ok and records else 1


def _plot(config: DemoConfig, records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    splits = sorted({r["split"] for r in records})
    colours = {split: plt.get_cmap("tab10")(i % 10) for i, split in enumerate(splits)}
    for split in splits:
        rows = [r for r in records if r["split"] == split and not r["degraded"]]
        ax.scatter([r["t"] for r in rows], [r["latency_ms"] for r in rows], s=12, color=colours[split], label=split)
    degraded = [r for r in records if r["degraded"]]
    if degraded:
        ax.scatter([r["t"] for r in degraded], [r["latency_ms"] for r in degraded], s=18, marker="x", color="black",
                   label="degraded (local full model)")  # fmt: skip
    if config.outage:
        ax.axvspan(config.outage.at_s, config.outage.at_s + config.outage.duration_s, color="red", alpha=0.12,
                   label="hub down")  # fmt: skip
    for phase in sorted(config.phases, key=lambda p: p.at_s)[1:]:
        ax.axvline(phase.at_s, color="grey", linestyle="--")
        ax.text(phase.at_s, ax.get_ylim()[1] * 0.95, f" {phase.bandwidth_mbps} Mbit/s", color="grey", va="top")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(f"Tandem demo: {config.model}, {config.agents} agents, codec {config.codec}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
