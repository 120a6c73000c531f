"""Plan manifests, resumable staged files, the releases folder with its atomic `current` link, the plan gate."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from pathlib import Path

import pytest

from tandem.contracts.manifest import ArtifactEntry, ArtifactRejected, PlanManifest, scan_plan_dir
from tandem.edge_agent.artifacts import ArtifactDownloader, PlanReleases, StagedFile
from tandem.edge_agent.plan_gate import PlanGate
from tandem.transport.artifact_reply import chunk_reply
from tandem.transport.envelope import Envelope


def entry_for(data: bytes, path: str = "model.onnx") -> ArtifactEntry:
    return ArtifactEntry(path, len(data), hashlib.sha256(data).hexdigest())


def manifest(version: int = 2, **meta: object) -> dict[str, object]:
    base: dict[str, object] = {
        "plan_id": "toy",
        "version": version,
        "model": "resnet18",
        "artifacts": [{"path": "model.onnx", "bytes": 3, "sha256": "a" * 64}],
    }
    base.update(meta)
    return base


def test_manifest_round_trips_and_names_each_bad_field() -> None:
    parsed = PlanManifest.from_meta(manifest())
    assert parsed.key == "toy@2" and parsed.release_name == "toy-v2" and parsed.total_bytes == 3
    assert PlanManifest.from_meta(parsed.to_meta()) == parsed
    bad = {
        "version": (manifest(version=0), "bad_manifest: version: expected an integer >= 1, got 0"),
        "escape": (manifest(artifacts=[{"path": "../etc/passwd", "bytes": 1, "sha256": "a" * 64}]),
                   "bad_manifest: artifacts[0].path: '../etc/passwd' is not a relative path inside the plan"),
        "absolute": (manifest(artifacts=[{"path": "/etc/passwd", "bytes": 1, "sha256": "a" * 64}]),
                     "artifacts[0].path: '/etc/passwd' is not a relative path"),
        "sha": (manifest(artifacts=[{"path": "m", "bytes": 1, "sha256": "xyz"}]),
                "bad_manifest: artifacts[0].sha256: expected 64 lowercase hex digits, got 'xyz'"),
        "size": (manifest(artifacts=[{"path": "m", "bytes": -1, "sha256": "a" * 64}]),
                 "artifacts[0].bytes: expected a size >= 0, got -1"),
        "twice": (manifest(artifacts=[{"path": "m", "bytes": 1, "sha256": "a" * 64}] * 2),
                  "artifacts: the same path is listed twice"),
    }  # fmt: skip
    for meta, message in bad.values():
        with pytest.raises(ArtifactRejected) as caught:
            PlanManifest.from_meta(meta)
        assert caught.value.code == "bad_manifest"
        assert message in str(caught.value)


def test_scan_lists_and_hashes_every_file_or_those_of_plan_yaml(tmp_path: Path) -> None:
    (tmp_path / "splits" / "s1").mkdir(parents=True)
    (tmp_path / "model.onnx").write_bytes(b"full")
    (tmp_path / "splits" / "s1" / "edge.onnx").write_bytes(b"edge")
    scanned = scan_plan_dir(tmp_path, plan_id="p", version=1, model="m")
    assert [(e.path, e.bytes) for e in scanned.artifacts] == [("model.onnx", 4), ("splits/s1/edge.onnx", 4)]
    assert scanned.entry("model.onnx") == entry_for(b"full")
    (tmp_path / "plan.yaml").write_text("plan_id: p\nartifacts:\n  - {path: model.onnx}\n")
    (tmp_path / "model.batch.onnx").write_bytes(b"made by the hub, not part of the plan")
    listed = scan_plan_dir(tmp_path, plan_id="p", version=1, model="m")
    assert [e.path for e in listed.artifacts] == ["plan.yaml", "model.onnx"]


def test_staged_file_resumes_from_its_part_and_verifies(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    entry = entry_for(data)
    first = StagedFile(tmp_path, entry)
    first.write(0, data[:1000])
    first.write(1000, data[1000:2500])
    with pytest.raises(ValueError, match=r"chunk at 4000 does not follow the 2500 bytes written"):
        first.write(4000, data[4000:5000])
    first.abort()  # the process goes away
    again = StagedFile(tmp_path, entry)
    assert again.resumed_from == 2500
    again.write(2500, data[2500:])
    again.finish()
    assert (tmp_path / "model.onnx").read_bytes() == data
    assert not (tmp_path / "model.onnx.part").exists()
    assert StagedFile(tmp_path, entry).complete  # already there: nothing to fetch


def test_staged_file_refuses_wrong_bytes_and_sizes_by_name(tmp_path: Path) -> None:
    data = b"0123456789" * 100
    corrupt = StagedFile(tmp_path, entry_for(data))
    corrupt.write(0, data[:-1] + b"X")
    with pytest.raises(ArtifactRejected, match=r"artifact_corrupted: model.onnx: sha256 [0-9a-f]{16}\.\.\. differs "
                       r"from the manifest's [0-9a-f]{16}\.\.\. \(1000 bytes\)"):  # fmt: skip
        corrupt.finish()
    assert not (tmp_path / "model.onnx.part").exists()
    short = StagedFile(tmp_path, entry_for(data))
    short.write(0, data[:10])
    with pytest.raises(ArtifactRejected, match=r"artifact_size_mismatch: model.onnx: 10 bytes downloaded, the "
                       r"manifest says 1000"):  # fmt: skip
        short.finish()
    long = StagedFile(tmp_path, entry_for(data))
    with pytest.raises(ArtifactRejected, match=r"artifact_size_mismatch: model.onnx: the hub sent over 1000 bytes"):
        long.write(0, data + b"!")


def test_releases_swap_current_atomically_and_remember_failures(tmp_path: Path) -> None:
    releases = PlanReleases(tmp_path)
    assert releases.current() is None
    for version in (1, 2):
        meta = manifest(version, artifacts=[{"path": "model.onnx", "bytes": 1, "sha256": "b" * 64}])
        plan = PlanManifest.from_meta(meta)
        folder = releases.stage(plan)
        (folder / "model.onnx").write_bytes(b"x")
        assert releases.staged()[0] == plan
        released = releases.commit(plan)
        releases.activate(plan)
        current = releases.current()
        assert current is not None and current[0] == plan and current[1] == released
        assert (tmp_path / "current").readlink() == Path("releases") / f"toy-v{version}"
    assert releases.staged() == []
    releases.mark_failed(plan, "plan_failed_check: nope")
    assert PlanReleases(tmp_path).failed() == {"toy@2": "plan_failed_check: nope"}


def test_plan_gate_swaps_between_requests_and_is_not_starved() -> None:
    gate = PlanGate()
    events: list[str] = []
    in_request, finish = threading.Event(), threading.Event()

    def request() -> None:
        with gate.serving():
            events.append("request start")
            in_request.set()
            finish.wait(10)
            events.append("request end")

    def swap() -> None:
        with gate.swapping():
            events.append("swap")

    first = threading.Thread(target=request)
    first.start()
    in_request.wait()
    swapper = threading.Thread(target=swap)
    swapper.start()
    deadline = time.monotonic() + 10
    while gate._waiting_swaps == 0:  # the swap is waiting for the first request
        assert time.monotonic() < deadline, "the swap never started waiting"
        time.sleep(0.001)
    late = threading.Thread(target=request)  # arrives while the swap waits: runs after it
    late.start()
    time.sleep(0.05)  # give a wrong gate the chance to let it in now (a right one holds it either way)
    finish.set()
    for thread in (first, swapper, late):
        thread.join()
    assert events == ["request start", "request end", "swap", "request start", "request end"]


class HubFiles:
    """Answers the downloader's chunk requests from the files of a plan folder, as the hub does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[Envelope] = []
        self.failures: list[str] = []  # error codes to answer the next requests with, one each

    def serve(self, downloader: ArtifactDownloader) -> None:
        """Answer every request (and those its answers cause) until none is left."""
        downloader.pump()
        while self.requests:
            request = self.requests.pop(0)
            if self.failures:
                downloader.on_reply(request.error_reply(self.failures.pop(0), "the hub failed on this message"))
                continue
            path, offset, length = request.meta["path"], request.meta["offset"], request.meta["length"]
            data = (self.folder / path).read_bytes()
            downloader.on_reply(chunk_reply(request, data[offset : offset + length], path=path, offset=offset,
                                            size=len(data)))  # fmt: skip
            downloader.pump()


def downloader_for(
    tmp_path: Path, hub: HubFiles, free: list[int], clock: list[float]
) -> tuple[ArtifactDownloader, list[tuple[str, str]]]:
    outcomes: list[tuple[str, str]] = []
    downloader = ArtifactDownloader(
        PlanReleases(tmp_path / "plans"), hub.requests.append, device_id="cam-1",
        install=lambda manifest, folder: None, on_outcome=lambda m, state, why: outcomes.append((state, why)),
        chunk_bytes=16 << 10, timeout_s=5.0, clock=lambda: clock[0],
        free_bytes=lambda path: free[0], reserve_bytes=lambda: 1000,
    )  # fmt: skip
    return downloader, outcomes


def hub_plan(tmp_path: Path, version: int = 2) -> tuple[HubFiles, PlanManifest]:
    plan = tmp_path / f"hub-plan-v{version}"
    plan.mkdir()
    (plan / "model.onnx").write_bytes(bytes(range(256)) * 800)  # 200 KB
    return HubFiles(plan), scan_plan_dir(plan, plan_id="toy", version=version, model="m")


def wait_for_outcome(outcomes: list[tuple[str, str]], state: str) -> None:
    deadline = time.monotonic() + 10  # the install runs on a thread of its own
    while (not outcomes or outcomes[-1][0] != state) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes and outcomes[-1][0] == state, outcomes


def test_a_plan_the_disk_cannot_hold_waits_and_a_full_disk_mid_download_frees_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, announced = hub_plan(tmp_path)
    free, clock = [205_000], [0.0]
    downloader, outcomes = downloader_for(tmp_path, hub, free, clock)
    staging = tmp_path / "plans" / "staging" / "toy-v2"

    downloader.offer(announced)  # 204800 bytes fit, but not with the 1000 kept for the outbox: nothing is asked
    assert hub.requests == [] and downloader.busy_with is None
    waiting = (f"storage_failed: plan toy@2 needs 204800 more bytes in {staging} and 1000 kept for the outbox "
               "(sync.outbox.max_bytes less what it holds), 205000 are free")  # fmt: skip
    assert outcomes == [("waiting", waiting)]

    free[0] = 10**9  # the check passes, but the disk fills at 64 KB
    write = StagedFile.write

    def write_until_full(staged: StagedFile, offset: int, data: bytes | memoryview) -> None:
        if offset + len(data) > 64 << 10:
            raise OSError(errno.ENOSPC, "No space left on device", str(staged.part))
        write(staged, offset, data)

    monkeypatch.setattr(StagedFile, "write", write_until_full)
    downloader.offer(announced)
    hub.serve(downloader)
    full = f"storage_failed: [Errno 28] No space left on device: '{staging}/model.onnx.part'"
    assert outcomes[-1] == ("waiting", full)
    assert downloader.busy_with is None and not staging.exists()  # the space is given back

    monkeypatch.setattr(StagedFile, "write", write)
    downloader.offer(announced)  # the hub announces it again
    hub.serve(downloader)
    wait_for_outcome(outcomes, "installed")
    assert (tmp_path / "plans" / "current" / "model.onnx").read_bytes() == (hub.folder / "model.onnx").read_bytes()


def test_a_chunk_the_hub_could_not_serve_is_asked_again_and_the_plan_is_not_failed(tmp_path: Path) -> None:
    hub, announced = hub_plan(tmp_path)
    free, clock = [10**9], [0.0]
    downloader, outcomes = downloader_for(tmp_path, hub, free, clock)
    hub.failures = ["store_failed", "internal"]  # the hub's disk was full for a moment
    downloader.offer(announced)
    hub.serve(downloader)
    assert outcomes == [] and downloader.busy_with == announced and hub.requests == []
    clock[0] = 6.0  # past timeout_s: the two chunks are asked again
    hub.serve(downloader)
    wait_for_outcome(outcomes, "installed")
    assert downloader.stats["retries"] == 2 and "toy@2" not in downloader.releases.failed()


def test_a_newer_plan_removes_the_staged_files_of_an_older_one(tmp_path: Path) -> None:
    hub, v2 = hub_plan(tmp_path, 2)
    free, clock = [10**9], [0.0]
    first, _ = downloader_for(tmp_path, hub, free, clock)
    first.offer(v2)
    first.pump()
    request = hub.requests[0]
    first.on_reply(chunk_reply(request, (hub.folder / "model.onnx").read_bytes()[: 16 << 10], path="model.onnx",
                               offset=0, size=204800))  # fmt: skip
    assert first.download is not None and first.download.file is not None
    first.download.file.abort()  # the process stops here: v2 stays half-staged
    assert (tmp_path / "plans" / "staging" / "toy-v2" / "model.onnx.part").stat().st_size == 16 << 10
    hub3, v3 = hub_plan(tmp_path, 3)
    second, outcomes = downloader_for(tmp_path, hub3, free, clock)
    second.offer(v3)
    assert not (tmp_path / "plans" / "staging" / "toy-v2").exists()
    hub3.serve(second)
    wait_for_outcome(outcomes, "installed")
