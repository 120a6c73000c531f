"""``tandem demo``: the whole runtime on loopback, as separate processes.

1. Partition EfficientNet-Lite1 with its real ImageNet weights (``tandem partition``).
2. Derive the demo's world from the plan's own predictions
   (:mod:`tandem.commands.demo_world`): a link where cloud-only wins, one
   where a mid-network cut wins, one where edge-only wins, each by more than
   the agents' hysteresis, so the story shows on a fast host as on a slow one.
3. Start the hub and the agents as processes (``tandem hub``, ``tandem edge``),
   each agent behind an emulated uplink and emulating the slower edge device
   the plan was made for (each edge run takes its profiled time x the factor).
4. Stream real photos through the agents' local endpoints while the link moves
   through the phases; then kill the hub for a few seconds (answers turn local
   and degraded, then split inference resumes).
5. Print a summary per phase, the labels the split pipeline gave next to the
   unsplit model's, top-1 agreement over every answer, and plot latency over
   time. Exit non-zero when a phase did not show its winner, the outage showed
   no fallback, or the answers disagree with the unsplit model.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from tandem.commands.demo_world import (
    SAFETY,
    Link,
    NoWorldError,
    Winner,
    derive_world,
    kind_of,
    link_for,
    predict,
    story_kinds,
)
from tandem.config import StrictModel, load_config
from tandem.errors import TandemError

__all__ = ["DEMO_MIN_GAIN", "DEMO_MODELS", "DemoConfig", "DemoError", "Phase", "register", "resolve_phases", "run"]

DEMO_MIN_GAIN = 0.15
"""The agents' hysteresis: a split is left for one predicted this much faster."""

AGENT_RETRY_MAX_S = 2.0
"""The agents' longest backoff between tries to reach a hub that is down."""

# The reference models the demo can feed photos and name their classes: real weights only.
DEMO_MODELS = ("efficientnet_lite1",)


class Phase(StrictModel):
    """From ``at_s`` on, the agents' emulated uplink has these values.

    ``winner`` is the split the phase should show (``cloud-only``, ``cut`` or
    ``edge-only``); ``auto`` values are derived from the plan so that it wins
    by more than the agents' hysteresis (see :mod:`tandem.commands.demo_world`).
    Numbers override: the demo then reports what the plan predicts there.
    """

    at_s: float = Field(..., ge=0)
    winner: Winner | None = None
    bandwidth_mbps: float | Literal["auto"] = Field("auto", description="Mbit/s (> 0), or auto")
    rtt_ms: float | Literal["auto"] = Field("auto", description="ms (>= 0), or auto")
    name: str = ""

    @field_validator("bandwidth_mbps")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if value != "auto" and float(value) <= 0:
            raise ValueError("expected a bandwidth > 0 in Mbit/s, or auto")
        return value

    @field_validator("rtt_ms")
    @classmethod
    def _not_negative(cls, value: float | str) -> float | str:
        if value != "auto" and float(value) < 0:
            raise ValueError("expected a round-trip time >= 0 in ms, or auto")
        return value

    @model_validator(mode="after")
    def _auto_needs_a_winner(self) -> Phase:
        if self.winner is None and "auto" in (self.bandwidth_mbps, self.rtt_ms):
            raise ValueError(
                "an auto bandwidth_mbps or rtt_ms is derived for the phase's winner: "
                "set winner (cloud-only, cut or edge-only), or give both numbers"
            )
        return self

    @property
    def label(self) -> str:
        """The phase's name, or its link."""
        return self.name or f"{self.bandwidth_mbps} Mbit/s"


class Outage(StrictModel):
    """The hub is killed at ``at_s`` and restarted ``duration_s`` later."""

    at_s: float = Field(..., ge=0)
    duration_s: float = Field(..., gt=0)


class DemoError(TandemError):
    """A step of the demo failed (partitioning, a process that did not start); the message says which and where."""


def _default_phases() -> list[Phase]:
    return [
        Phase(at_s=0, winner="cloud-only", name="good link"),
        Phase(at_s=15, winner="cut", name="bandwidth drop"),
        Phase(at_s=30, winner="edge-only", name="deep drop"),
        Phase(at_s=45, winner="cut", name="link recovers"),
    ]


class DemoConfig(StrictModel):
    """``configs/demo.yaml``; every key has a default, so ``tandem demo`` runs without a file."""

    model: str = Field("efficientnet_lite1", description=f"one of {', '.join(DEMO_MODELS)}")
    workdir: Path = Path("demo-out")
    codec: str = "int8+zstd"
    agents: int = Field(2, ge=1, le=8)
    rate_hz: float = Field(3.0, gt=0, description="requests per second per agent")
    duration_s: float = Field(75.0, gt=0)
    deadline_ms: float = Field(600.0, gt=0)
    settle_s: float = Field(4.0, ge=0, description="after a change, how long the agents get before a phase is judged")
    min_agreement: float = Field(0.99, ge=0, le=1, description="top-1 agreement with the unsplit model required")
    phases: list[Phase] = Field(default_factory=_default_phases, min_length=1)
    outage: Outage | None = Field(default_factory=lambda: Outage(at_s=52, duration_s=8))
    hub_port: int = Field(5755, gt=0, lt=65536)
    endpoint_port: int = Field(5760, gt=0, lt=65536, description="agent i listens on endpoint_port + i")

    @field_validator("model")
    @classmethod
    def _photo_classifier(cls, value: str) -> str:
        if value not in DEMO_MODELS:
            raise ValueError(
                f"the demo streams photos and names their ImageNet classes, so it runs a model with real "
                f"weights: one of {', '.join(DEMO_MODELS)}; partition other models with `tandem partition` and "
                "serve them with `tandem hub` / `tandem edge`"
            )
        return value

    @field_validator("phases")
    @classmethod
    def _in_time_order(cls, phases: list[Phase]) -> list[Phase]:
        return sorted(phases, key=lambda phase: phase.at_s)


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="partition, start hub and agents, stream, change the link, kill the hub",
        description="Everything on loopback: partition the model, derive links where cloud-only, a cut and "
        "edge-only each win, start a hub and edge agents, stream real photos, kill and restart the hub, and "
        "write demo-summary.json and demo.png.",
    )
    parser.add_argument("--config", type=Path, help="demo.yaml (default: built-in EfficientNet-Lite1 scenario)")
    parser.add_argument("--reuse-plan", action="store_true", help="skip partitioning when WORKDIR/plan exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the scenario; exit 0 when every phase showed its winner and every answer agreed with the unsplit model."""
    from tandem.commands.demo_report import report
    from tandem.contracts.plan import load_plan
    from tandem.edge_agent.plan_view import load_agent_plan

    started = time.monotonic()
    config = load_config(args.config, DemoConfig) if args.config else DemoConfig()
    work = config.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan_dir = work / "plan"
    if not (args.reuse_plan and (plan_dir / "plan.yaml").exists()):
        _partition(config, plan_dir)
    plan = load_plan(plan_dir)
    slowdown = plan.edge.emulation_factor or 1.0
    print(f"\n== plan {plan.plan_id}: splits {[s.id for s in plan.splits]}; edge emulated x{slowdown:.2f}", flush=True)
    splits = load_agent_plan(plan_dir, config.codec).splits
    print(f"== the demo's world, from the plan's predictions with codec {config.codec}:", flush=True)
    config, links = resolve_phases(config, splits)
    photos = _photos(plan_dir / plan.model.path, plan.model.inputs[0].name)
    processes = _Processes(work)
    try:
        processes.start_hub(_write_hub_config(config, work, plan_dir))
        for i in range(config.agents):
            processes.start_agent(i, _write_edge_config(config, work, plan_dir, i, slowdown))
        records = _stream(config, processes, photos, plan.model.inputs[0].name)
    finally:
        processes.stop_all()
    kinds = story_kinds(tuple(splits))
    return report(config, links, photos, records, work, time.monotonic() - started, processes.hub_back_at, kinds)


def resolve_phases(config: DemoConfig, splits: Any) -> tuple[DemoConfig, list[Link]]:
    """``config`` with every ``auto`` replaced from the plan, and what the plan predicts in each phase.

    Prints each phase's link and why it was chosen. Raises :class:`DemoError`
    when the plan offers no such world, or when the outage falls in a phase
    that does not use the hub (it would show nothing).
    """
    required = DEMO_MIN_GAIN + SAFETY
    world: dict[Winner, Link] = {}
    if any("auto" in (p.bandwidth_mbps, p.rtt_ms) for p in config.phases):
        try:
            world = derive_world(splits, DEMO_MIN_GAIN)
        except NoWorldError as exc:
            raise DemoError(
                f"{exc}. The demo would show nothing, so it stops here. Change the codec (`codec` in demo.yaml), "
                "the edge device the plan emulates (edge.spec / edge.emulation_factor in the partition config), "
                "or give each phase bandwidth_mbps and rtt_ms in demo.yaml"
            ) from exc
    resolved, links = [], []
    for phase in config.phases:
        rtt = phase.rtt_ms if phase.rtt_ms != "auto" else next(iter(world.values())).rtt_ms
        bandwidth = phase.bandwidth_mbps
        if bandwidth == "auto" and phase.winner is not None:
            derived = world[phase.winner] if phase.rtt_ms == "auto" else link_for(splits, phase.winner, rtt, required)
            if derived is None:
                raise DemoError(
                    f"phase {phase.label!r}: at rtt_ms {rtt:g} no uplink bandwidth makes {phase.winner} win by "
                    f"{required:.0%}; set rtt_ms: auto or a smaller RTT, or give bandwidth_mbps"
                )
            bandwidth = derived.bandwidth_mbps
        link = predict(splits, float(bandwidth), float(rtt))
        links.append(link)
        resolved.append(phase.model_copy(update={"bandwidth_mbps": float(bandwidth), "rtt_ms": float(rtt)}))
        origin = "derived from the plan" if "auto" in (phase.bandwidth_mbps, phase.rtt_ms) else "from demo.yaml"
        print(f"   t={phase.at_s:>4g} s  {phase.label:<15} {link.describe()} ({origin})", flush=True)
        shown = kind_of(next(s for s in splits if s.split_id == link.split_id), splits)
        if phase.winner is not None and shown != phase.winner:
            print(f"      note: demo.yaml wants {phase.winner} here; the plan predicts {link.split_id}", flush=True)
        elif link.gain < required:
            print(f"      note: a close call (under {required:.0%}); this phase is reported, not judged", flush=True)
    config = config.model_copy(update={"phases": resolved})
    _check_outage(config, links, splits)
    return config, links


def _check_outage(config: DemoConfig, links: list[Link], splits: Any) -> None:
    if config.outage is None:
        return
    index = max(i for i, phase in enumerate(config.phases) if phase.at_s <= config.outage.at_s or i == 0)
    split = next(s for s in splits if s.split_id == links[index].split_id)
    if split.edge_only:
        raise DemoError(
            f"the hub outage at {config.outage.at_s:g} s falls in phase {config.phases[index].label!r}, where "
            f"the plan predicts edge-only: nothing uses the hub there, so the outage would show nothing; move "
            "outage.at_s into a phase where the hub is used"
        )


def _partition(config: DemoConfig, plan_dir: Path) -> None:
    print(f"== tandem partition {config.model} --out {plan_dir}", flush=True)
    command = [sys.executable, "-m", "tandem.cli", "partition", config.model, "--out", str(plan_dir)]
    if subprocess.run(command).returncode != 0:
        raise DemoError(f"partitioning {config.model} failed (its error is above); nothing was started")


def _photos(full_model: Path, input_name: str) -> list[dict[str, Any]]:
    """The bundled photos as model inputs, with the unsplit fp32 model's output and label on each."""
    from tandem.executors import open_executor
    from tandem.models.efficientnet_lite import label_of, photos, preprocess

    full = open_executor("onnxruntime", full_model)
    loaded = []
    for name, pixels in photos():
        x = preprocess(pixels)
        reference = next(iter(full.run({input_name: x}).values()))
        loaded.append({"name": name, "input": x, "reference": reference, "label": label_of(reference)})
    return loaded


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
    first, *later = config.phases
    edge = {
        "device_id": f"edge-{index}",
        "plan": str(plan_dir),
        "codec": config.codec,
        "channel": {"type": "zmq", "address": f"tcp://127.0.0.1:{config.hub_port}"},
        "executor": "onnxruntime",
        "executor_threads": 1,  # as the partitioner measured it
        "deadline_ms": config.deadline_ms,
        "hysteresis": {"min_gain": DEMO_MIN_GAIN, "min_dwell_s": 2.0},
        "retry": {"initial_s": 0.5, "max_s": AGENT_RETRY_MAX_S, "failures_to_mark_down": 2},
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
        self.hub_back_at: float | None = None  # seconds into the stream when the restarted hub listened
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
            ended = process.poll() is not None
            if (ended or time.monotonic() > deadline) and ready not in _text_from(log, offset):
                raise DemoError(f"{name} did not start; see {log}:\n{_text_from(log, offset)[-2000:]}")
            time.sleep(0 if ended else 0.2)
        print(f"   started {name} (pid {process.pid}), log {log}", flush=True)
        return process


def _text_from(log: Path, offset: int) -> str:
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _stream(
    config: DemoConfig, processes: _Processes, photos: list[dict[str, Any]], input_name: str
) -> list[dict[str, Any]]:
    from tandem.edge_agent.endpoint import LocalClient
    from tandem.models.efficientnet_lite import label_of

    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop = threading.Event()

    def drive(index: int) -> None:
        client = LocalClient(processes.endpoints[index], name=f"demo-app-{index}", timeout_s=30)
        sent = 0
        try:
            while not stop.is_set():
                due = started + sent / config.rate_hz
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
                photo = photos[(sent + index) % len(photos)]
                t = time.monotonic() - started
                outputs, meta = client.infer({input_name: photo["input"]})
                answer = next(iter(outputs.values()))
                reference = photo["reference"]
                error = float(np.abs(answer - reference).max() / np.abs(reference).max())
                row = {"agent": index, "seq": sent, "t": t, "photo": photo["name"], **_pick(meta)}
                row.update(rel_error=error, label=label_of(answer), reference_label=photo["label"])
                with lock:
                    records.append(row)
                sent += 1
        finally:
            client.close()

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(config.agents)]
    for thread in threads:
        thread.start()
    print(
        f"\n== streaming {len(photos)} photos: {config.agents} agent(s) x {config.rate_hz} req/s for "
        f"{config.duration_s:.0f} s",
        flush=True,
    )
    for phase in config.phases[1:]:
        print(f"   t={phase.at_s:.0f}s: uplink -> {phase.bandwidth_mbps:g} Mbit/s, {phase.rtt_ms:g} ms ({phase.name})")
    outage = config.outage
    killed = restarted = outage is None
    end = config.duration_s
    while time.monotonic() - started < end:
        now = time.monotonic() - started
        if outage and not killed and now >= outage.at_s:
            print(f"   t={now:.0f}s: killing the hub (SIGKILL)", flush=True)
            processes.kill_hub()
            killed = True
        if outage and killed and not restarted and now >= outage.at_s + outage.duration_s:
            print(f"   t={now:.0f}s: restarting the hub", flush=True)
            processes.restart_hub()
            restarted = True
            processes.hub_back_at = time.monotonic() - started
            # However long this host took to restart it, the agents get their retry and settle time after it.
            end = max(end, processes.hub_back_at + AGENT_RETRY_MAX_S + config.settle_s)
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
