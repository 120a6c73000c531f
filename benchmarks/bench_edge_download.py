"""Bytes an edge downloads per reference plan: the whole release (before) against what it runs (after).

Each reference model is partitioned with the default config (the plans
`tandem partition MODEL` writes), and, to show a plan whose cuts are kept
whatever this host measures, digits_cnn with its cut forced at the first
ReLU. "before" is every file of the release (what edges fetched until the
hub announced edge manifests), "after" what :func:`edge_manifest` announces:
the release without its cloud-only parts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandem.contracts.manifest import edge_manifest, scan_plan_dir
from tandem.contracts.plan import load_plan

PLANS: dict[str, list[str]] = {
    "mobilenet_v2": [],
    "efficientnet_lite1": [],
    "resnet50": [],
    "digits_cnn --cut /Relu_output_0": ["--cut", "/Relu_output_0"],
}


def measure(plan_dir: Path) -> dict[str, Any]:
    """Whole-release and edge-manifest bytes of one plan folder."""
    plan = load_plan(plan_dir)
    whole = scan_plan_dir(plan_dir, plan_id=plan.plan_id, version=plan.version, model=plan.model.name)
    edge = edge_manifest(whole, plan_dir)
    return {
        "splits": [split.id for split in plan.splits],
        "files_before": len(whole.artifacts),
        "files_after": len(edge.artifacts),
        "bytes_before": whole.total_bytes,
        "bytes_after": edge.total_bytes,
        "saved": round(1 - edge.total_bytes / whole.total_bytes, 3),
        "left_out": sorted(plan.cloud_only_files()),
    }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Partition each reference model and measure its plan."""
    rows = {}
    names = list(PLANS)[-1:] if quick else list(PLANS)
    with tempfile.TemporaryDirectory(prefix="tandem-edge-download-") as tmp:
        for name in names:
            model = name.split()[0]
            out = Path(tmp) / model
            subprocess.run([sys.executable, "-m", "tandem.cli", "partition", model, "--out", str(out), "--no-progress",
                            *PLANS[name]], check=True, capture_output=True, timeout=1800)  # fmt: skip
            rows[name] = measure(out)
            row = rows[name]
            print(f"   {name}: {row['bytes_before'] / 1e6:.1f} MB -> {row['bytes_after'] / 1e6:.1f} MB "
                  f"({100 * row['saved']:.0f} % less; splits {row['splits']})", flush=True)
    return {"plans": rows}
