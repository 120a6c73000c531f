"""Run every ``benchmarks/bench_*.py`` and write each result as JSON.

Each module exposes ``run(out_dir: Path, quick: bool) -> dict``. Results land in
``benchmarks/results/<name>.json`` (plus any plot the module draws there).

    python -m benchmarks.run_all [--quick] [--only codec,zmq]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the benchmark modules, e.g. ``codec`` for bench_codec.py."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; exit non-zero if any raised."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--only", help="comma-separated names, from: " + ", ".join(discover()))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(discover())}")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        started = time.time()
        try:
            result = importlib.import_module(f"benchmarks.bench_{name}").run(args.out, args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            print(f"!! {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
            continue
        result = {
            "benchmark": name,
            "machine": {"cpu_count": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
            "quick": args.quick,
            "seconds": round(time.time() - started, 1),
            **result,
        }
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"   wrote {path}", flush=True)
    return 1 if failed else 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
