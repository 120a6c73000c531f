"""The PyTriton side of bench_triton.py; runs under its own venv (Debian's python3.11 + nvidia-pytriton).

    python triton_side.py serve --tail tail.onnx --grpc-port P --http-port H --metrics-port M
    python triton_side.py load --grpc-port P --clients 8 --seconds 10

``serve`` binds the tail (ONNX Runtime, one session) to Triton with its
dynamic batcher (max batch 32, 2 ms queue delay) and prints ``ready``;
``load`` runs closed-loop clients (one gRPC ModelClient each) and prints a
JSON line: inferences, throughput and latency percentiles. No Tandem code is
imported here: the point is the other stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np


def serve(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    session = ort.InferenceSession(args.tail, providers=["CPUExecutionProvider"])

    @batch
    def infer(feat: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": session.run(None, {"feat": feat})[0]}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="tail",
            infer_func=infer,
            inputs=[Tensor(name="feat", dtype=np.float32, shape=(64, 14, 14))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(1000,))],
            config=ModelConfig(max_batch_size=args.max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
        )
        print("ready", flush=True)
        triton.serve()


def load(args: argparse.Namespace) -> None:
    from pytriton.client import ModelClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    until = time.perf_counter() + args.warmup + args.seconds
    counting_from = time.perf_counter() + args.warmup

    def loop(seed: int) -> None:
        feat = np.random.default_rng(seed).normal(size=(64, 14, 14)).astype(np.float32)
        with ModelClient(f"grpc://127.0.0.1:{args.grpc_port}", "tail", init_timeout_s=120) as client:
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    client.infer_sample(feat=feat)
                except Exception as exc:  # counted, the run goes on
                    errors.append(repr(exc)[:200])
                    continue
                if started >= counting_from:
                    with lock:
                        latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    print(json.dumps({
        "clients": args.clients,
        "inferences": len(ordered),
        "errors": len(errors),
        "throughput_per_s": round(len(ordered) / args.seconds, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2) if ordered else None,
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2) if ordered else None,
    }), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tail", required=True)
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--http-port", type=int, required=True)
    s.add_argument("--metrics-port", type=int, required=True)
    s.add_argument("--max-batch", type=int, default=32)
    s.add_argument("--delay-us", type=int, default=2000)
    ld = sub.add_parser("load")
    ld.add_argument("--grpc-port", type=int, required=True)
    ld.add_argument("--clients", type=int, required=True)
    ld.add_argument("--seconds", type=float, default=10.0)
    ld.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    serve(args) if args.mode == "serve" else load(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
