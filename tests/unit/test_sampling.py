"""What the recorder writes per answer: the top prediction, the sampling policy, refusals that never raise."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tandem.edge_agent.agent import InferenceResult
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.sampling import InferenceRecorder, SamplingPolicy, top_prediction
from tandem.edge_agent.sync_config import SamplingConfig
from tandem.transport.envelope import Kind, unpack
from tests.fixtures.full_disk import cap_at_current_size


def result(logits: np.ndarray, i: int = 0) -> InferenceResult:
    return InferenceResult({"logits": logits}, f"req-{i}", "s1", "fallback", True, 4.25, reason="hub unreachable")


def test_top_prediction_softmaxes_logits_and_keeps_probabilities() -> None:
    logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    top = top_prediction({"logits": logits})
    expected = np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum()
    assert top is not None and top.index == 0 and top.confidence == pytest.approx(expected)
    probabilities = np.array([[0.1, 0.7, 0.2]], np.float32)
    assert top_prediction({"p": probabilities}).confidence == pytest.approx(0.7)  # type: ignore[union-attr]
    batch = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)  # the least confident row counts
    top = top_prediction({"p": batch})
    assert top is not None and (top.index, top.confidence) == (1, pytest.approx(0.6))
    assert top_prediction({"ids": np.array([3, 1])}).confidence is None  # type: ignore[union-attr]
    with pytest.raises(KeyError, match=r"sampling.output 'scores' is not an output of the model; outputs: \['p'\]"):
        top_prediction({"p": probabilities}, "scores")


def test_policies_pick_every_nth_hard_all_or_none() -> None:
    every = SamplingPolicy(SamplingConfig(mode="every_nth", every_n=3))
    assert [every.choose(0.9) for _ in range(6)] == [None, None, "every_nth", None, None, "every_nth"]
    hard = SamplingPolicy(SamplingConfig(mode="hard", confidence_below=0.6))
    assert [hard.choose(c) for c in (0.59, 0.6, 0.95, None)] == ["hard", None, None, None]
    assert SamplingPolicy(SamplingConfig(mode="all")).choose(None) == "all"
    assert SamplingPolicy(SamplingConfig(mode="none")).choose(0.01) is None


def test_recorder_writes_a_record_per_answer_and_samples_hard_inputs(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="cam-1") as outbox:
        recorder = InferenceRecorder(outbox, SamplingConfig(mode="hard", confidence_below=0.5), device_id="cam-1",
                                     plan_in_use=lambda: ("plan-a", 3))  # fmt: skip
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        recorder(result(np.array([[5.0, 0.0, 0.0]], np.float32), 0), {"x": x})  # confident: record only
        recorder(result(np.array([[0.1, 0.0, 0.05]], np.float32), 1), {"x": x})  # hard: record and sample
        entries = outbox.peek()
        assert [e.kind for e in entries] == ["record", "record", "sample"]
        record = msgpack.unpackb(entries[0].body)
        assert record["request_id"] == "req-0" and (record["plan_id"], record["plan_version"]) == ("plan-a", 3)
        assert (record["split"], record["source"], record["degraded"], record["latency_ms"]) == ("s1", "fallback",
                                                                                                 True, 4.25)
        assert record["top"]["index"] == 0 and record["top"]["confidence"] > 0.9
        sample = unpack(entries[2].body)
        assert (sample.kind, sample.request_id, sample.device_id) == (Kind.SAMPLE, "req-1", "cam-1")
        assert sample.meta["why"] == "hard"
        np.testing.assert_array_equal(sample.arrays()["x"], x)
        assert recorder.counts == {"records": 2, "samples": 1, "refused": 0, "too_large": 0, "storage_failed": 0}
        assert recorder.last_feeds is not None


def test_refusals_are_logged_and_counted_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="cam-1", max_record_bytes=2048, max_bytes=4096,
                max_records=3, when_full="stop_sampling") as outbox:  # fmt: skip
        recorder = InferenceRecorder(outbox, SamplingConfig(mode="all"), device_id="cam-1")
        logits = np.ones((1, 3), np.float32)
        with caplog.at_level(logging.WARNING):
            recorder(result(logits), {"x": np.zeros((1, 1000), np.float32)})  # a 4000-byte sample is too large
        assert "sample not stored: record_too_large: a sample entry of 4" in caplog.text
        assert recorder.counts["too_large"] == 1 and recorder.counts["records"] == 1
        for i in range(4):
            with caplog.at_level(logging.WARNING):
                recorder(result(logits, i), {"x": np.zeros((1, 4), np.float32)})
        assert outbox.backlog == 3 and outbox.full
        full = f"outbox {outbox.path} is full (max_records reached): 1 new entry refused (when_full: stop_sampling)"
        assert f"{full}; raise sync.outbox.max_records" in caplog.text
        assert recorder.counts["refused"] >= 2
        assert outbox.dropped == recorder.counts["refused"]


def test_a_full_disk_costs_records_not_answers_and_warns_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="cam-1") as outbox:
        cap_at_current_size(outbox._db)  # SQLite now fails as on a full disk
        recorder = InferenceRecorder(outbox, SamplingConfig(mode="all"), device_id="cam-1")
        clock = [0.0]
        recorder._storage_failures.clock = lambda: clock[0]
        x = np.zeros((1, 4000), np.float32)
        with caplog.at_level(logging.WARNING):
            for i in range(3):  # a record and a sample each
                recorder(result(np.ones((1, 3), np.float32), i), {"x": x})
            clock[0] = 61.0
            recorder(result(np.ones((1, 3), np.float32), 3), {"x": x})
        # the small records still fit in the file's free pages; the 16 KB samples do not
        assert [e.kind for e in outbox.peek()] == ["record"] * 4 and recorder.counts["storage_failed"] == 4
        lines = [r.getMessage() for r in caplog.records if "not stored, serving goes on" in r.getMessage()]
        assert len(lines) == 2, lines
        assert lines[0] == (
            "sample not stored, serving goes on (free disk space for the outbox): "
            f"{outbox.path}: storing 1 sample entry failed: database or disk is full"
        )
        assert lines[1].endswith("database or disk is full (3 times in the last 61 s)")
