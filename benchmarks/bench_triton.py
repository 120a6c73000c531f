"""The hub against the anchor a user would pick instead: PyTriton (Triton 2.51's dynamic batcher) on the same tail.

Both serve MobileNetV2 from features[11] to the classifier (the tail of
bench_runtime.py) in ONNX Runtime on this CPU, with the same batching (max
batch 32, 2 ms queue delay), to closed-loop clients: Tandem's over ZeroMQ
(threads of this process against a hub process), PyTriton's over gRPC
(threads of a client process against the Triton server and its Python
backend). Client counts 1, 8 and 64, the two stacks alternated, each for the
same time; and the ceiling of ONNX Runtime alone on the tail at batch 1 and 32.
At 64 clients the pair runs three times (the p99 there swings by 2x with the
host's other load, for either stack) and each stack's row is its run with the
median p99; every pair is kept under ``pairs``.

PyTriton runs only from a venv of Debian's system python3.11 (its stub fails
under pyenv's 3.11.7); the benchmark makes one under build/pytriton-venv on
first use and skips the comparison, saying why, where it cannot.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_runtime import MAX_BATCH, _free_port, export_tail, onnxruntime_alone, throughput

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "pytriton-venv"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
CLIENTS = (1, 8, 64)
PAIRS_AT_MOST = 3  # at the most clients, the pair runs this many times
DELAY_MS = 2.0


def pytriton_python() -> tuple[Path | None, str]:
    """The venv's python with PyTriton importable, or None and why not."""
    python = VENV / "bin" / "python"
    if not python.exists():
        if not SYSTEM_PYTHON.exists():
            return None, f"{SYSTEM_PYTHON} not found (PyTriton's stub needs Debian's python3.11, not pyenv's)"
        made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            return None, f"cannot make {VENV}: {made.stderr.strip()[-300:]}"
    check = subprocess.run([str(python), "-c", "import pytriton, onnxruntime"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"   installing nvidia-pytriton into {VENV}", flush=True)
        installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "nvidia-pytriton==0.7.0",
                                    "onnxruntime", "numpy"], capture_output=True, text=True, timeout=1800)  # fmt: skip
        if installed.returncode != 0:
            return None, f"pip install nvidia-pytriton failed: {installed.stderr.strip()[-300:]}"
    return python, ""


class PyTritonServer:
    """`triton_side.py serve` in the PyTriton venv."""

    def __init__(self, python: Path, tail: Path) -> None:
        self.python, self.tail = python, tail
        self.grpc_port = _free_port()

    def __enter__(self) -> PyTritonServer:
        ports = [str(self.grpc_port), str(_free_port()), str(_free_port())]
        self.process = subprocess.Popen(
            [str(self.python), str(ROOT / "benchmarks" / "triton_side.py"), "serve", "--tail", str(self.tail),
             "--grpc-port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2],
             "--max-batch", str(MAX_BATCH), "--delay-us", str(int(DELAY_MS * 1000))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.strip() == "ready":
                return self
            if not line and self.process.poll() is not None:
                break
        self.__exit__()
        raise RuntimeError("PyTriton did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def load(self, clients: int, seconds: float) -> dict[str, Any]:
        result = subprocess.run(
            [str(self.python), str(ROOT / "benchmarks" / "triton_side.py"), "load", "--grpc-port",
             str(self.grpc_port), "--clients", str(clients), "--seconds", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 300,
        )  # fmt: skip
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Both stacks at each client count, alternated; see the module docstring."""
    seconds = 4.0 if quick else 10.0
    work = ROOT / "build" / "bench_triton"
    work.mkdir(parents=True, exist_ok=True)
    tail = export_tail(work / "tail.onnx")
    result: dict[str, Any] = {"max_batch": MAX_BATCH, "queue_delay_ms": DELAY_MS, "seconds": seconds,
                              "onnxruntime_alone": onnxruntime_alone(tail, seconds)}  # fmt: skip
    python, why = pytriton_python()
    rows: list[dict[str, Any]] = []
    for clients in CLIENTS:
        repeats = PAIRS_AT_MOST if clients == CLIENTS[-1] and not quick else 1
        pairs = _pairs(python, tail, clients, seconds, repeats)
        row: dict[str, Any] = {"clients": clients}
        for stack in ("tandem", "pytriton"):
            runs = sorted((pair[stack] for pair in pairs if stack in pair), key=lambda r: r["p99_ms"])
            if runs:
                row[stack] = runs[len(runs) // 2]
        if repeats > 1:
            row["pairs"] = pairs
        rows.append(row)
    if python is None:
        result["pytriton_skipped"] = why
    result["rows"] = rows
    return result


def _pairs(python: Path | None, tail: Path, clients: int, seconds: float, repeats: int) -> list[dict[str, Any]]:
    """``repeats`` runs of Tandem then PyTriton (one PyTriton server for all) at ``clients`` closed-loop clients."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(PyTritonServer(python, tail)) if python is not None else None
        if server is not None:
            server.load(min(clients, 4), 1.0)  # warm-up
        pairs: list[dict[str, Any]] = []
        for _ in range(repeats):
            pair: dict[str, Any] = {"tandem": throughput(tail, clients, True, seconds, delay_ms=DELAY_MS)}
            if server is not None:
                pair["pytriton"] = server.load(clients, seconds)
            pairs.append(pair)
            tandem, other = pair["tandem"], pair.get("pytriton", {})
            print(f"   {clients:3d} clients: tandem {tandem['throughput_per_s']:7.1f}/s p99 {tandem['p99_ms']} ms; "
                  f"pytriton {other.get('throughput_per_s', '-')}/s p99 {other.get('p99_ms', '-')} ms")  # fmt: skip
        return pairs
