"""Plan versions down to the edge: a chunked resumable download, verification, staging, swap.

A plan announcement (``plan`` message, hub -> edge) carries a
:class:`~tandem.contracts.manifest.PlanManifest` in its ``meta``::

    {"plan_id": str, "version": int, "model": str,
     "artifacts": [{"path": "model.onnx", "bytes": 123, "sha256": "<64 hex>"}, ...]}

The edge asks for each artifact in chunks (``artifact`` request: ``plan``,
``plan_version`` and ``meta`` ``{"path", "offset", "length"}``); the hub
answers with an ``artifact`` reply (:func:`~tandem.transport.artifact_reply.chunk_reply`)
holding the bytes as one ``uint8`` tensor ``data`` and ``meta`` ``{"path", "offset", "size"}`` (``size``: the file's
size on the hub), or an ``error``. Chunks are appended in order to
``<file>.part`` under ``staging/``; a download interrupted by anything
(process killed, link down) resumes from the part file's size.

Each file is checked against the manifest's size and sha256; the staged plan
then moves to ``releases/<plan>-v<version>/``, the installer callback loads and
self-checks it (and swaps it into the agent), and only then does the
``current`` symlink move to it (a rename, so it is atomic). Any failure leaves
``current`` and the serving plan as they were (a rollback), and the version is
remembered in ``failed.json`` so that it is not tried again.

Every refusal is an :class:`ArtifactRejected` whose ``code`` names it:
``bad_manifest``, ``plan_for_another_model``, ``artifact_size_mismatch``,
``artifact_corrupted``, ``unknown_plan`` (the hub does not serve it),
``plan_failed_load``, ``plan_failed_check``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.contracts.manifest import MANIFEST_FILE, ArtifactEntry, ArtifactRejected, PlanManifest
from tandem.hashing import file_sha256
from tandem.throttled_log import ThrottledWarning
from tandem.transport.envelope import Envelope, Kind, new_request_id

__all__ = [
    "ArtifactDownloader",
    "Installer",
    "PlanReleases",
    "StagedFile",
]

logger = logging.getLogger("tandem.edge.artifacts")

_HASH_BLOCK = 1 << 20

Installer = Callable[[PlanManifest, Path], None]


class PlanReleases:
    """The plan versions on the edge's disk::

    root/staging/<plan>-v<n>/          partial downloads (manifest.json, <file>.part)
    root/releases/<plan>-v<n>/         verified versions (manifest.json, files)
    root/current -> releases/<...>     the version in use (symlink, swapped by rename)
    root/failed.json                   versions refused, with the reason
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.releases = self.root / "releases"
        self.current_link = self.root / "current"
        self._failed_file = self.root / "failed.json"
        self._lock = threading.Lock()
        for folder in (self.staging, self.releases):
            folder.mkdir(parents=True, exist_ok=True)

    def current(self) -> tuple[PlanManifest, Path] | None:
        """The manifest and folder of the version in use, if one was installed here."""
        if not self.current_link.is_symlink():
            return None
        target = self.current_link.resolve()
        manifest = _read_manifest(target / MANIFEST_FILE)
        return (manifest, target) if manifest else None

    def staged(self) -> list[PlanManifest]:
        """Downloads that were under way (to resume), newest version first."""
        found = [_read_manifest(folder / MANIFEST_FILE) for folder in self.staging.iterdir() if folder.is_dir()]
        return sorted((m for m in found if m), key=lambda m: m.version, reverse=True)

    def stage(self, manifest: PlanManifest) -> Path:
        """The staging folder of ``manifest``, made (with its manifest.json) if new."""
        folder = self.staging / manifest.release_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_FILE
        if _read_manifest(path) != manifest:
            _write_json(path, manifest.to_meta())
        return folder

    def discard(self, manifest: PlanManifest) -> None:
        """Delete the staged download of ``manifest``."""
        shutil.rmtree(self.staging / manifest.release_name, ignore_errors=True)

    def commit(self, manifest: PlanManifest) -> Path:
        """Move the verified staging folder to ``releases/``; its new path."""
        source = self.staging / manifest.release_name
        target = self.releases / manifest.release_name
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
        _fsync_dir(self.releases)
        return target

    def activate(self, manifest: PlanManifest) -> Path:
        """Point ``current`` at the release of ``manifest`` (atomic rename of a new symlink)."""
        target = self.releases / manifest.release_name
        temporary = self.root / f".current-{os.getpid()}-{threading.get_ident()}"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(Path("releases") / manifest.release_name, temporary)
        os.replace(temporary, self.current_link)
        _fsync_dir(self.root)
        return target

    def remove_release(self, manifest: PlanManifest) -> None:
        """Delete a release that failed to install (never the current one)."""
        current = self.current()
        if current is None or current[0] != manifest:
            shutil.rmtree(self.releases / manifest.release_name, ignore_errors=True)

    def failed(self) -> dict[str, str]:
        """``plan_id@version`` -> why it was refused."""
        with self._lock:
            return _read_failed(self._failed_file)

    def mark_failed(self, manifest: PlanManifest, reason: str) -> None:
        """Remember that ``manifest`` was refused, so that it is not tried again."""
        with self._lock:
            failed = _read_failed(self._failed_file)
            failed[manifest.key] = reason
            _write_json(self._failed_file, failed)


def _read_manifest(path: Path) -> PlanManifest | None:
    try:
        return PlanManifest.from_meta(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ArtifactRejected):
        return None


def _read_failed(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedFile:
    """One artifact being downloaded: appends in order to ``<path>.part``, resumes from its size, verifies."""

    def __init__(self, folder: Path, entry: ArtifactEntry) -> None:
        self.entry = entry
        self.final = folder / entry.path
        self.part = self.final.with_name(self.final.name + ".part")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._hash = hashlib.sha256()
        self.complete = self.final.is_file()
        self.offset = entry.bytes if self.complete else 0
        self._handle = None
        if not self.complete:
            if self.part.is_file() and self.part.stat().st_size > entry.bytes:
                self.part.unlink()  # longer than the file can be: start again
            if self.part.is_file():
                with self.part.open("rb") as handle:
                    while block := handle.read(_HASH_BLOCK):
                        self._hash.update(block)
                        self.offset += len(block)
            self._handle = self.part.open("ab")
        self.resumed_from = self.offset if not self.complete else 0

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Append ``data``, which must start where the file ends."""
        if self._handle is None or offset != self.offset:
            raise ValueError(f"{self.part}: chunk at {offset} does not follow the {self.offset} bytes written")
        if self.offset + len(data) > self.entry.bytes:
            self.abort()
            raise ArtifactRejected(
                "artifact_size_mismatch",
                f"{self.entry.path}: the hub sent over {self.offset + len(data) - 1} bytes, "
                f"the manifest says {self.entry.bytes}",
            )
        self._handle.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def finish(self) -> None:
        """Verify size and sha256 against the manifest and rename the part file into place."""
        if self.complete:
            digest = file_sha256(self.final)
            if self.final.stat().st_size == self.entry.bytes and digest == self.entry.sha256:
                return
            self.final.unlink()
            raise ArtifactRejected("artifact_corrupted", f"{self.entry.path}: the staged file no longer matches")
        if self._handle is None:
            raise ValueError(f"{self.part}: already closed")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        if self.offset != self.entry.bytes:
            self.part.unlink(missing_ok=True)
            raise ArtifactRejected(
                "artifact_size_mismatch",
                f"{self.entry.path}: {self.offset} bytes downloaded, the manifest says {self.entry.bytes}",
            )
        digest = self._hash.hexdigest()
        if digest != self.entry.sha256:
            self.part.unlink(missing_ok=True)
            raise ArtifactRejected(
                "artifact_corrupted",
                f"{self.entry.path}: sha256 {digest[:16]}... differs from the manifest's {self.entry.sha256[:16]}... "
                f"({self.entry.bytes} bytes)",
            )
        os.replace(self.part, self.final)
        self.complete = True

    def abort(self) -> None:
        """Close the part file (kept for a later resume)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            with contextlib.suppress(OSError):  # a full disk fails the flush too; the part holds a valid prefix
                handle.close()


@dataclass
class _Request:
    offset: int
    length: int
    sent_at: float


@dataclass
class _Download:
    manifest: PlanManifest
    folder: Path
    remaining: list[ArtifactEntry]
    file: StagedFile | None = None
    next_offset: int = 0
    pending: dict[str, _Request] = field(default_factory=dict)
    arrived: dict[int, bytes] = field(default_factory=dict)
    started: float = 0.0
    fetched_bytes: int = 0
    resumed_bytes: int = 0


# Hub error codes that say nothing about the plan: the chunk is asked again later.
_PASSING_HUB_ERRORS = {"store_failed", "internal"}


class ArtifactDownloader:
    """Fetches one plan version at a time in chunks and hands the verified folder to ``install``.

    It is driven by its owner's thread: :meth:`offer` an announced manifest,
    :meth:`on_reply` each ``artifact``/``error`` message, :meth:`pump` often
    (sends requests within ``window``, re-requests chunks after ``timeout_s``).
    Installation (``install(manifest, folder)``: load, self-check, swap; raise
    to refuse) runs on a thread of its own; ``on_outcome(manifest, state,
    reason)`` hears ``installed``, ``rejected``, ``rolled_back`` or ``waiting``.

    A plan is not started when the disk under the staging folder has less free
    space (``free_bytes``) than its files still need plus ``reserve_bytes()``
    (room the outbox may still fill), and a download the disk fails part-way is
    dropped with its staged files, which frees the space for the outbox: both
    are ``waiting`` with a ``storage_failed`` reason, and the hub's next
    announcement tries again. A chunk the hub could not serve for a passing
    reason (``store_failed``, ``internal``) is asked again after ``timeout_s``.
    """

    def __init__(
        self,
        releases: PlanReleases,
        send: Callable[[Envelope], None],
        *,
        device_id: str,
        install: Installer,
        on_outcome: Callable[[PlanManifest, str, str], None],
        chunk_bytes: int = 128 << 10,
        window: int = 4,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        free_bytes: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
        reserve_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.releases = releases
        self.send = send
        self.device_id = device_id
        self.install = install
        self.on_outcome = on_outcome
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.timeout_s = timeout_s
        self.clock = clock
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        self._no_room = ThrottledWarning(logger, interval_s=600)  # the hub re-announces every reoffer_s
        self.download: _Download | None = None
        self.installing: PlanManifest | None = None
        self._install_thread: threading.Thread | None = None
        self.stats = {"chunks": 0, "bytes": 0, "retries": 0, "resumed_bytes": 0}

    @property
    def busy_with(self) -> PlanManifest | None:
        """The version being downloaded or installed, if any."""
        return self.download.manifest if self.download else self.installing

    def offer(self, manifest: PlanManifest) -> None:
        """Start (or resume) downloading ``manifest``; a newer version replaces one under way."""
        current = self.download
        if current is not None:
            if current.manifest.version >= manifest.version:
                return
            logger.info("plan %s supersedes the download of %s", manifest.key, current.manifest.key)
            self._abandon(discard=True)
        try:
            for older in self.releases.staged():  # an interrupted download this one supersedes: its space back
                if older.version < manifest.version:
                    self.releases.discard(older)
            folder = self.releases.stage(manifest)
            needed = manifest.total_bytes - _bytes_under(folder)
            free, reserve = self.free_bytes(folder), self.reserve_bytes()
            if needed + reserve > free:
                kept = f" and {reserve} kept for the outbox (sync.outbox.max_bytes less what it holds)"
                kept = kept if reserve else ""
                reason = (f"storage_failed: plan {manifest.key} needs {needed} more bytes in {folder}{kept}, "
                          f"{free} are free")  # fmt: skip
                self._no_room.warn(f"plan {manifest.key} not downloaded, the current plan keeps serving: {reason}")
                self.on_outcome(manifest, "waiting", reason)
                return
            download = _Download(manifest, folder, list(manifest.artifacts), started=self.clock())
            self.download = download
            logger.info(
                "downloading plan %s (%d files, %d bytes) into %s",
                manifest.key, len(manifest.artifacts), manifest.total_bytes, folder,
            )  # fmt: skip
            self._next_file()
        except OSError as exc:
            self._storage_failed(manifest, exc)

    def on_reply(self, envelope: Envelope) -> bool:
        """Take an ``artifact`` reply or an ``error`` for one of our requests; False if it is not ours."""
        download = self.download
        if download is None or envelope.request_id not in download.pending:
            return False
        request = download.pending.pop(envelope.request_id)
        try:
            if envelope.kind is Kind.ERROR:
                code = str(envelope.meta.get("code", "error"))
                if code in _PASSING_HUB_ERRORS:
                    download.pending[envelope.request_id] = request  # pump asks again after timeout_s
                    return True
                raise ArtifactRejected(code, str(envelope.meta.get("message", "the hub refused the request")))
            self._take_chunk(download, request, envelope)
        except ArtifactRejected as exc:
            self._fail(exc)
        except OSError as exc:
            self._storage_failed(download.manifest, exc)
        return True

    def pump(self) -> None:
        """Send chunk requests within the window and re-request the late ones."""
        download = self.download
        if download is None or download.file is None:
            return
        now = self.clock()
        for request_id, request in list(download.pending.items()):
            if now - request.sent_at > self.timeout_s:
                del download.pending[request_id]
                self.stats["retries"] += 1
                self._request(download, request.offset, request.length)
        entry = download.file.entry
        while len(download.pending) < self.window and download.next_offset < entry.bytes:
            length = min(self.chunk_bytes, entry.bytes - download.next_offset)
            self._request(download, download.next_offset, length)
            download.next_offset += length

    def resend_all(self) -> None:
        """Re-request every chunk in flight now (after a reconnect, replies may have been lost)."""
        download = self.download
        if download is None:
            return
        for request_id, request in list(download.pending.items()):
            del download.pending[request_id]
            self._request(download, request.offset, request.length)

    def stop(self) -> None:
        """Close the file being written (kept for a resume) and wait for an installation under way."""
        if self.download is not None and self.download.file is not None:
            self.download.file.abort()
        if self._install_thread is not None:
            self._install_thread.join(timeout=30)

    # -- internals ------------------------------------------------------------------------------------------------

    def _request(self, download: _Download, offset: int, length: int) -> None:
        if download.file is None:
            return
        request_id = new_request_id()
        download.pending[request_id] = _Request(offset, length, self.clock())
        request = Envelope(
            kind=Kind.ARTIFACT,
            request_id=request_id,
            device_id=self.device_id,
            plan_id=download.manifest.plan_id,
            plan_version=download.manifest.version,
            meta={"path": download.file.entry.path, "offset": offset, "length": length},
        )
        self.send(request)

    def _take_chunk(self, download: _Download, request: _Request, envelope: Envelope) -> None:
        staged = download.file
        if staged is None:
            return
        entry = staged.entry
        size = envelope.meta.get("size")
        if envelope.meta.get("path") != entry.path or envelope.meta.get("offset") != request.offset:
            raise ArtifactRejected("bad_chunk", f"{entry.path}: a reply names another path or offset")
        if size != entry.bytes:
            raise ArtifactRejected(
                "artifact_size_mismatch",
                f"{entry.path}: the hub's file is {size} bytes, the manifest says {entry.bytes} "
                "(truncated or replaced after it was published)",
            )
        if len(envelope.frames) != 1 or envelope.tensors[0].dtype != "uint8" or envelope.tensors[0].codec != "raw":
            raise ArtifactRejected("bad_chunk", f"{entry.path}: a chunk must be one raw uint8 tensor")
        data = bytes(envelope.frames[0])
        if len(data) != request.length:
            raise ArtifactRejected(
                "artifact_size_mismatch",
                f"{entry.path}: chunk at {request.offset} holds {len(data)} bytes, {request.length} were asked for",
            )
        download.arrived[request.offset] = data
        while staged.offset in download.arrived:
            chunk = download.arrived.pop(staged.offset)
            staged.write(staged.offset, chunk)
            download.fetched_bytes += len(chunk)
            self.stats["chunks"] += 1
            self.stats["bytes"] += len(chunk)
        if staged.offset == entry.bytes:
            staged.finish()
            self._next_file()

    def _next_file(self) -> None:
        download = self.download
        if download is None:
            return
        while download.remaining:
            entry = download.remaining.pop(0)
            staged = StagedFile(download.folder, entry)
            if staged.resumed_from:
                download.resumed_bytes += staged.resumed_from
                self.stats["resumed_bytes"] += staged.resumed_from
                logger.info("resuming %s of plan %s at byte %d of %d",
                            entry.path, download.manifest.key, staged.resumed_from, entry.bytes)  # fmt: skip
            if staged.offset < entry.bytes:
                download.file = staged
                download.next_offset = staged.offset
                download.pending.clear()
                download.arrived.clear()
                return
            try:
                staged.finish()
            except ArtifactRejected as exc:
                self._fail(exc)
                return
        download.file = None
        self._downloaded(download)

    def _downloaded(self, download: _Download) -> None:
        manifest = download.manifest
        elapsed = self.clock() - download.started
        logger.info("plan %s downloaded and verified: %d bytes fetched (%d resumed) in %.2f s",
                    manifest.key, download.fetched_bytes, download.resumed_bytes, elapsed)  # fmt: skip
        self.download = None
        self.installing = manifest
        thread = threading.Thread(target=self._install, args=(manifest,), name="edge-plan-install", daemon=True)
        self._install_thread = thread
        thread.start()

    def _install(self, manifest: PlanManifest) -> None:
        try:
            folder = self.releases.commit(manifest)
            try:
                self.install(manifest, folder)
            except ArtifactRejected:
                raise
            except Exception as exc:  # whatever the loader raises, the plan is refused and the old one serves
                raise ArtifactRejected("plan_failed_load", f"{type(exc).__name__}: {exc}") from exc
            self.releases.activate(manifest)
        except ArtifactRejected as exc:
            logger.warning("plan %s rolled back, the previous plan keeps serving: %s", manifest.key, exc)
            self.releases.mark_failed(manifest, str(exc))
            self.releases.remove_release(manifest)
            self.installing = None
            self.on_outcome(manifest, "rolled_back", str(exc))
            return
        except OSError as exc:
            logger.error("plan %s could not be installed: %s", manifest.key, exc)
            self.installing = None
            self.on_outcome(manifest, "rolled_back", f"install_failed: {exc}")
            return
        logger.info("plan %s installed and in use (%s)", manifest.key, self.releases.current_link)
        self.installing = None
        self.on_outcome(manifest, "installed", "")

    def _fail(self, exc: ArtifactRejected) -> None:
        download = self.download
        if download is None:
            return
        manifest = download.manifest
        if exc.code == "unknown_plan":
            logger.warning("plan %s: the hub does not serve it (%s); waiting for a new announcement", manifest.key, exc)
            self._abandon(discard=False)
            self.on_outcome(manifest, "waiting", str(exc))
            return
        logger.warning("plan %s rejected, the current plan keeps serving: %s", manifest.key, exc)
        self._abandon(discard=True)
        self.releases.mark_failed(manifest, str(exc))
        self.on_outcome(manifest, "rejected", str(exc))

    def _storage_failed(self, manifest: PlanManifest, exc: OSError) -> None:
        """The disk failed the download (full, say): drop it and its staged files; wait for the next offer."""
        logger.error("plan %s: download dropped, the current plan keeps serving: the disk failed it: %s; "
                     "its staged files are removed to free the space", manifest.key, exc)  # fmt: skip
        if self.download is not None and self.download.manifest == manifest:
            self._abandon(discard=True)
        else:
            self.releases.discard(manifest)
        self.on_outcome(manifest, "waiting", f"storage_failed: {exc}")

    def _abandon(self, *, discard: bool) -> None:
        download = self.download
        if download is None:
            return
        if download.file is not None:
            download.file.abort()
        self.download = None
        if discard:
            self.releases.discard(download.manifest)


def _bytes_under(folder: Path) -> int:
    """Bytes of the files already in ``folder`` (a resumed download needs only the rest)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST_FILE)
