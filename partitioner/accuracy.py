"""What a split and a wire codec cost in accuracy, measured with ONNX Runtime.

For each sample the edge part runs once; every tensor the cloud part takes as
input (the tensors crossing the cut, and any model input the tail reads
again, such as an attention mask) is encoded and decoded with
:func:`tandem.transport.codec.encode_tensor` / :func:`decode_tensor`, exactly as it
would travel, and the cloud part runs on the decoded arrays. The baseline is
the same path with the ``raw`` codec.

Metrics:

- ``top1``: the fraction of samples whose arg-max over the last axis of the
  cloud's first output equals ``labels`` (0..1; ``delta`` is in the same
  unit, so 0.01 is one percentage point).
- ``cosine``: the cosine similarity of each row of the cloud's first output
  with ``reference_outputs`` (the full model's outputs); ``value`` is the
  mean and ``worst`` the minimum over all rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from tandem.partitioner.errors import AccuracyError
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor

__all__ = ["AccuracyResult", "accuracy_at_split", "accuracy_for_codecs"]

Metric = Literal["top1", "cosine"]
ModelSource = str | Path | bytes | onnx.ModelProto


@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy of an edge/cloud pair with raw transfer (``baseline``) and with ``codec`` (``value``)."""

    metric: str
    codec: str
    baseline: float
    value: float
    samples: int
    baseline_worst: float | None = None
    worst: float | None = None

    @property
    def delta(self) -> float:
        """``value - baseline``: negative when the codec loses accuracy."""
        return self.value - self.baseline


def accuracy_at_split(
    edge_onnx: ModelSource,
    cloud_onnx: ModelSource,
    samples: Sequence[Mapping[str, np.ndarray]],
    codec: CodecSpec,
    metric: Metric,
    labels: np.ndarray | None = None,
    reference_outputs: Sequence[np.ndarray] | np.ndarray | None = None,
) -> AccuracyResult:
    """Run every sample through edge -> codec -> cloud and score it (see the module docstring)."""
    return accuracy_for_codecs(edge_onnx, cloud_onnx, samples, [codec], metric, labels, reference_outputs)[str(codec)]


def accuracy_for_codecs(
    edge_onnx: ModelSource,
    cloud_onnx: ModelSource,
    samples: Sequence[Mapping[str, np.ndarray]],
    codecs: Sequence[CodecSpec],
    metric: Metric,
    labels: np.ndarray | None = None,
    reference_outputs: Sequence[np.ndarray] | np.ndarray | None = None,
) -> dict[str, AccuracyResult]:
    """Like :func:`accuracy_at_split` for several codecs, running the edge part only once per sample."""
    if not samples:
        raise AccuracyError("accuracy: no samples given")
    if metric == "top1" and labels is None:
        raise AccuracyError("accuracy: metric 'top1' needs labels")
    if metric == "cosine" and reference_outputs is None:
        raise AccuracyError("accuracy: metric 'cosine' needs reference_outputs from the full model")
    if metric not in ("top1", "cosine"):
        raise AccuracyError(f"accuracy: unknown metric {metric!r}; expected 'top1' or 'cosine'")
    edge, edge_name = _session(edge_onnx, "edge")
    cloud, cloud_name = _session(cloud_onnx, "cloud")
    edge_inputs = [i.name for i in edge.get_inputs()]
    edge_outputs = [o.name for o in edge.get_outputs()]
    cloud_inputs = [i.name for i in cloud.get_inputs()]
    all_codecs = [CodecSpec(), *codecs]
    outputs: dict[str, list[np.ndarray]] = {str(c): [] for c in all_codecs}
    for index, sample in enumerate(samples):
        missing = [name for name in edge_inputs if name not in sample]
        if missing:
            raise AccuracyError(f"accuracy: sample {index} lacks edge input(s) {missing} of {edge_name}")
        results = _run(edge, edge_name, edge_outputs, {n: sample[n] for n in edge_inputs}, index)
        produced = dict(zip(edge_outputs, results, strict=True))
        crossing = {}
        for name in cloud_inputs:
            if name in produced:
                crossing[name] = produced[name]
            elif name in sample:
                crossing[name] = sample[name]
            else:
                raise AccuracyError(
                    f"accuracy: cloud input {name!r} of {cloud_name} is neither an output of {edge_name} "
                    f"nor an input of sample {index}"
                )
        for spec in all_codecs:
            feed = {name: _round_trip(name, array, spec) for name, array in crossing.items()}
            outputs[str(spec)].append(np.asarray(_run(cloud, cloud_name, None, feed, index)[0]))
    scores = {key: _score(metric, values, labels, reference_outputs) for key, values in outputs.items()}
    baseline, baseline_worst = scores[str(CodecSpec())]
    return {
        str(spec): AccuracyResult(
            metric=metric,
            codec=str(spec),
            baseline=baseline,
            value=scores[str(spec)][0],
            samples=len(samples),
            baseline_worst=baseline_worst,
            worst=scores[str(spec)][1],
        )
        for spec in codecs
    }


def _session(source: ModelSource, role: str) -> tuple[ort.InferenceSession, str]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if isinstance(source, onnx.ModelProto):
        payload: str | bytes = source.SerializeToString()
        name = f"the {role} model {source.graph.name!r}"
    elif isinstance(source, bytes):
        payload, name = source, f"the {role} model (bytes)"
    else:
        payload, name = str(source), str(source)
        if not Path(source).is_file():
            raise AccuracyError(f"accuracy: {role} model {source} not found")
    try:
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"]), name
    except Exception as exc:  # onnxruntime raises its own exception types without a common public base
        raise AccuracyError(f"accuracy: ONNX Runtime cannot load {name}: {exc}") from exc


def _run(
    session: ort.InferenceSession, name: str, outputs: list[str] | None, feed: dict[str, np.ndarray], index: int
) -> list[np.ndarray]:
    try:
        return list(session.run(outputs, feed))
    except Exception as exc:  # onnxruntime's errors share no public base class
        raise AccuracyError(f"accuracy: ONNX Runtime failed to run {name} on sample {index}: {exc}") from exc


def _round_trip(name: str, array: np.ndarray, spec: CodecSpec) -> np.ndarray:
    header, frame = encode_tensor(name, np.ascontiguousarray(array), spec)
    return np.ascontiguousarray(decode_tensor(header, bytes(frame)))


def _score(
    metric: str,
    outputs: list[np.ndarray],
    labels: np.ndarray | None,
    reference: Sequence[np.ndarray] | np.ndarray | None,
) -> tuple[float, float | None]:
    if metric == "top1":
        predicted = np.concatenate([np.asarray(o).reshape(-1, o.shape[-1]).argmax(axis=-1) for o in outputs])
        truth = np.asarray(labels).reshape(-1)
        if truth.shape != predicted.shape:
            raise AccuracyError(f"accuracy: {truth.size} labels for {predicted.size} predictions")
        return float((predicted == truth).mean()), None
    rows = np.concatenate([np.asarray(o, np.float64).reshape(-1, o.shape[-1]) for o in outputs])
    parts = [reference] if isinstance(reference, np.ndarray) else list(reference or ())
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1, np.shape(r)[-1]) for r in parts]) if parts else None
    if ref is None or ref.shape != rows.shape:
        got = None if ref is None else list(ref.shape)
        raise AccuracyError(f"accuracy: reference outputs of shape {got} do not match the outputs {list(rows.shape)}")
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(ref, axis=1)
    cosine = (rows * ref).sum(axis=1) / np.maximum(norms, 1e-30)
    return float(cosine.mean()), float(cosine.min())
