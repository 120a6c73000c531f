"""The artifact manifest: what a plan announcement promises, and how a plan folder on the hub is scanned into one.

A plan announcement (``plan`` message, hub -> edge) carries a
:class:`PlanManifest` in its ``meta``::

    {"plan_id": str, "version": int, "model": str,
     "artifacts": [{"path": "model.onnx", "bytes": 123, "sha256": "<64 hex>"}, ...]}

The hub builds it with :func:`scan_plan_dir`; the edge validates it with
:meth:`PlanManifest.from_meta` and downloads the files it lists
(:mod:`tandem.edge_agent.artifacts`). Every refusal is an
:class:`ArtifactRejected` whose ``code`` names it (see that module's docstring).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tandem.errors import TandemError
from tandem.hashing import file_sha256

__all__ = [
    "MANIFEST_FILE",
    "ArtifactEntry",
    "ArtifactRejected",
    "PlanManifest",
    "edge_manifest",
    "safe_name",
    "scan_plan_dir",
]

MANIFEST_FILE = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

class ArtifactRejected(TandemError):
    """A plan or one of its artifacts was refused; ``code`` names why (see the module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def safe_name(text: str) -> str:
    """``text`` as one harmless path component."""
    name = _UNSAFE.sub("_", text) or "_"
    return f"_{name}" if name.startswith(".") else name


@dataclass(frozen=True)
class ArtifactEntry:
    """One file of a plan: its path inside the plan folder, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class PlanManifest:
    """What a plan announcement promises: which plan, which version, for which model, which files."""

    plan_id: str
    version: int
    model: str
    artifacts: tuple[ArtifactEntry, ...]

    @property
    def release_name(self) -> str:
        """The folder name of this version under ``releases/`` and ``staging/``."""
        return f"{safe_name(self.plan_id)}-v{self.version}"

    @property
    def key(self) -> str:
        """``plan_id@version``."""
        return f"{self.plan_id}@{self.version}"

    @property
    def total_bytes(self) -> int:
        """Bytes of all artifacts."""
        return sum(entry.bytes for entry in self.artifacts)

    def entry(self, path: str) -> ArtifactEntry | None:
        """The artifact at ``path``, if the manifest lists it."""
        return next((entry for entry in self.artifacts if entry.path == path), None)

    def to_meta(self) -> dict[str, Any]:
        """The ``meta`` of a plan announcement."""
        return {
            "plan_id": self.plan_id,
            "version": self.version,
            "model": self.model,
            "artifacts": [{"path": e.path, "bytes": e.bytes, "sha256": e.sha256} for e in self.artifacts],
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> PlanManifest:
        """Validate an announcement's ``meta``; ``ArtifactRejected("bad_manifest")`` names the bad field."""
        plan_id, version, model, artifacts = (meta.get(k) for k in ("plan_id", "version", "model", "artifacts"))
        if not isinstance(plan_id, str) or not plan_id:
            raise ArtifactRejected("bad_manifest", f"plan_id: expected a non-empty string, got {plan_id!r:.80}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ArtifactRejected("bad_manifest", f"version: expected an integer >= 1, got {version!r:.80}")
        if not isinstance(model, str):
            raise ArtifactRejected("bad_manifest", f"model: expected a string, got {model!r:.80}")
        if not isinstance(artifacts, list) or not artifacts:
            raise ArtifactRejected("bad_manifest", "artifacts: expected a non-empty list")
        entries = tuple(_entry(item, i) for i, item in enumerate(artifacts))
        if len({e.path for e in entries}) != len(entries):
            raise ArtifactRejected("bad_manifest", "artifacts: the same path is listed twice")
        return cls(plan_id, version, model, entries)


def _entry(item: object, index: int) -> ArtifactEntry:
    where = f"artifacts[{index}]"
    if not isinstance(item, dict):
        raise ArtifactRejected("bad_manifest", f"{where}: expected a map")
    path, size, digest = item.get("path"), item.get("bytes"), item.get("sha256")
    if not isinstance(path, str) or not _relative_inside(path):
        raise ArtifactRejected("bad_manifest", f"{where}.path: {path!r:.80} is not a relative path inside the plan")
    if path == MANIFEST_FILE:
        raise ArtifactRejected("bad_manifest", f"{where}.path: {MANIFEST_FILE} is reserved")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ArtifactRejected("bad_manifest", f"{where}.bytes: expected a size >= 0, got {size!r:.80}")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ArtifactRejected("bad_manifest", f"{where}.sha256: expected 64 lowercase hex digits, got {digest!r:.80}")
    return ArtifactEntry(path, size, digest)


def _relative_inside(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and "\\" not in path and not any(p in ("..", ".") for p in parts)


def scan_plan_dir(directory: Path, *, plan_id: str, version: int, model: str) -> PlanManifest:
    """The manifest of a plan folder: ``plan.yaml`` and the artifacts it lists, else every file; hashed now."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: plan folder not found")
    listed = _listed_in_plan_yaml(directory)
    if listed is not None:
        paths = ["plan.yaml", *listed]
    else:
        paths = sorted(
            p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and not p.is_symlink()
        )
    entries = []
    for relative in paths:
        path = directory / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {directory / 'plan.yaml'} but missing")
        entries.append(ArtifactEntry(relative, path.stat().st_size, file_sha256(path)))
    return PlanManifest.from_meta(
        PlanManifest(plan_id, version, model, tuple(entries)).to_meta()  # same checks as on the edge
    )


def edge_manifest(manifest: PlanManifest, directory: Path) -> PlanManifest:
    """``manifest`` without the plan's cloud-only parts: what an edge downloads (it never runs them).

    A folder without a readable plan.yaml (not a partition plan) is announced whole.
    """
    from tandem.contracts.plan import PlanError, load_plan

    try:
        cloud_only = load_plan(directory, verify=False).cloud_only_files()
    except PlanError:
        return manifest
    kept = tuple(entry for entry in manifest.artifacts if entry.path not in cloud_only)
    return dataclasses.replace(manifest, artifacts=kept)


def _listed_in_plan_yaml(directory: Path) -> list[str] | None:
    path = directory / "plan.yaml"
    if not path.is_file():
        return None
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    artifacts = data.get("artifacts") if isinstance(data, dict) else None
    if not isinstance(artifacts, list):
        return None
    return [str(item["path"]) for item in artifacts if isinstance(item, dict) and "path" in item]
