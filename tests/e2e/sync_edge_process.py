"""An edge process for the kill -9 test: a real agent answering requests, its outbox, and EdgeSync.

    python -m tests.e2e.sync_edge_process --port 1883 --workdir DIR --plan PLAN_DIR --device cam-1 \\
        --inferences 3000 --rate 1000

It answers ``--inferences`` requests with the plan's full model (an edge-only
split), each recorded into the outbox (a record, and a sample every 10th), while
EdgeSync drains the outbox to the hub through the broker. It prints
``produced N`` when done and keeps syncing; on SIGTERM it waits (up to 20 s)
for the outbox to drain and exits. Killed with SIGKILL, it leaves its outbox on
disk for the next run to send.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tandem.edge_agent.agent import EdgeAgent
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.plan_view import AgentPlan, SplitOption
from tandem.edge_agent.sampling import InferenceRecorder
from tandem.edge_agent.sync import EdgeSync, open_sync_channel
from tandem.edge_agent.sync_config import EdgeSyncConfig, SamplingConfig
from tandem.transport.config import InProcConfig, MqttConfig
from tandem.transport.inproc import InProcServer


def main(argv: list[str] | None = None) -> int:
    """Run the edge until SIGTERM; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--device", default="cam-1")
    parser.add_argument("--inferences", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--pause-after", type=int, default=None, help="stop producing after N until killed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    only = SplitOption("edge_only", None, (), edge_ms=1.0, cloud_ms=0.0, wire_bytes=0, edge_only=True)
    plan = AgentPlan("toy-a", 1, ("x",), ("logits",), args.plan / "model.onnx", (only,))
    config = EdgeConfig(device_id=args.device, plan=args.plan, codec="raw", executor="onnxruntime",
                        channel=InProcConfig(), telemetry_interval_s=3600)  # fmt: skip
    server = InProcServer()
    agent = EdgeAgent(config, plan, server.connect(args.device))
    outbox = Outbox(args.workdir / "outbox.sqlite", device_id=args.device)
    agent.on_result = InferenceRecorder(outbox, SamplingConfig(mode="every_nth", every_n=10), device_id=args.device,
                                        plan_in_use=lambda: (agent.plan.plan_id, agent.plan.version))  # fmt: skip
    sync_config = EdgeSyncConfig(mqtt=MqttConfig(port=args.port, keepalive_s=5), model="toy", ack_timeout_s=2.0,
                                 max_ack_timeout_s=4.0, status_interval_s=0.5, telemetry_interval_s=3600,
                                 plans_dir=args.workdir / "plans")  # fmt: skip
    sync = EdgeSync(
        sync_config,
        outbox,
        lambda: open_sync_channel(sync_config, args.device, reconnect_min_s=0.1, reconnect_max_s=0.5),
        device_id=args.device,
        plan_in_use=lambda: (agent.plan.plan_id, agent.plan.version),
    )
    agent.start()
    sync.start()
    print(f"started: outbox {outbox.path} holds {outbox.backlog} entries, epoch {outbox.epoch}", flush=True)
    rng = np.random.default_rng(int(time.time()))
    started = time.monotonic()
    for i in range(args.inferences):
        if stop.is_set():
            break
        agent.infer(rng.normal(size=(1, 4)).astype(np.float32))
        if i + 1 == args.pause_after:
            print(f"paused after {i + 1}", flush=True)
            stop.wait()  # a kill comes mid-stream, however fast this host produced
            break
        ahead = started + (i + 1) / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    else:
        print(f"produced {args.inferences}", flush=True)
    stop.wait()
    deadline = time.monotonic() + 20
    while outbox.backlog and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"stopping with {outbox.backlog} entries waiting", flush=True)
    sync.stop()
    agent.stop()
    outbox.close()
    server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
