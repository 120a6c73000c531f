"""Label-free fidelity: how closely a split and codec reproduce the unsplit model, by output kind.

Scored on the first graph output over the verification samples, against the
unsplit fp32 model's own outputs (no labels needed):

- ``classes`` (class scores ``[N, C]``): top-1 agreement (the value) and mean top-5 overlap;
- ``embedding``: cosine of each row with the unsplit row (the value is the mean, the worst row is kept);
- ``other``: relative error ``|got - full| / max |full|`` per element, p50 and p99 over
  elements and samples, and arg-max agreement along the last axis (the value; where the
  last axis has one element, ``1 - min(1, p99)``).

:func:`output_kind` guesses the kind from the output's name and shape when the config does not say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tandem.contracts.plan import Fidelity

__all__ = ["output_kind", "score"]

_EMBEDDING_WORDS = ("embed", "pool", "sentence", "hidden", "feature")


def output_kind(name: str, shape: Sequence[int], configured: Mapping[str, str] | None = None) -> str:
    """``classes``, ``embedding`` or ``other`` for a graph output (the config's word wins)."""
    if configured and name in configured:
        return configured[name]
    if any(word in name.lower() for word in _EMBEDDING_WORDS):
        return "embedding"
    if len(shape) == 2 and shape[-1] >= 2:
        return "classes"
    return "other"


def _rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).reshape(-1, max(1, a.shape[-1] if a.ndim else 1)) for a in arrays])


def _classes(got: np.ndarray, want: np.ndarray, output: str, samples: int) -> Fidelity:
    top1 = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
    k = min(5, got.shape[1])
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    top_want = np.argsort(-want, axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_got, top_want, strict=True)])
    return Fidelity(output=output, kind="classes", value=top1, samples=samples, top5_overlap=float(overlap))


def _embedding(got: np.ndarray, want: np.ndarray, output: str, samples: int) -> Fidelity:
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosine = (got * want).sum(axis=1) / np.maximum(norms, 1e-30)
    return Fidelity(
        output=output, kind="embedding", value=float(cosine.mean()), samples=samples, cosine_min=float(cosine.min())
    )


def _other(got: Sequence[np.ndarray], want: Sequence[np.ndarray], output: str) -> Fidelity:
    errors = []
    agree = []
    for g, w in zip(got, want, strict=True):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        scale = float(np.max(np.abs(w64))) if w64.size else 0.0
        errors.append((np.abs(g64 - w64) / (scale if scale > 0 else 1.0)).reshape(-1))
        if w64.ndim and w64.shape[-1] > 1:
            agree.append((g64.argmax(axis=-1) == w64.argmax(axis=-1)).reshape(-1))
    pooled = np.concatenate(errors) if errors else np.zeros(1)
    p50, p99 = (float(q) for q in np.quantile(pooled, [0.5, 0.99])) if pooled.size else (0.0, 0.0)
    value = float(np.concatenate(agree).mean()) if agree else 1.0 - min(1.0, p99)
    return Fidelity(output=output, kind="other", value=value, samples=len(got), rel_err_p50=p50, rel_err_p99=p99)


def score(kind: str, output: str, got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> Fidelity:
    """Fidelity of ``got`` (one array per sample) against the unsplit model's ``want``."""
    if kind == "other" or any(np.asarray(w).ndim == 0 for w in want):
        return _other(got, want, output)
    rows_got, rows_want = _rows(got), _rows(want)
    if kind == "classes" and rows_want.shape[1] >= 2:
        return _classes(rows_got, rows_want, output, len(got))
    if kind == "embedding":
        return _embedding(rows_got, rows_want, output, len(got))
    return _other(got, want, output)
