"""Load a plan's cloud parts as hub tails, batch-capable where the model allows it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from tandem.cloud_hub.batcher import Tail, WireForm
from tandem.cloud_hub.config import ExecutorConfig
from tandem.executors import Executor, ExecutorError, open_executor
from tandem.transport.codec import CodecSpec

__all__ = ["load_tails"]

logger = logging.getLogger("tandem.hub.plans")


def load_tails(plan_dir: Path, executor: ExecutorConfig) -> list[Tail]:
    """One :class:`Tail` per split of the plan in ``plan_dir`` that has a cloud part, and one per cloud part with
    the codec inside it (``CodecResult.in_graph``, verified), which takes its inputs as sent (int8, float16).

    Artifacts are verified (size and sha256) before anything is loaded. A cloud
    part exported with a fixed batch of 1 is given a dynamic batch dimension
    when running two samples as one batch gives the same outputs as running
    them apart; otherwise it is served one request at a time.
    """
    from tandem.contracts.plan import load_plan

    plan = load_plan(plan_dir)
    tails = []
    for split in plan.splits:
        if split.cloud_model is None:
            continue
        tails.append(Tail(plan.plan_id, plan.version, split.id, _load(executor, plan_dir / split.cloud_model)))
        variants: dict[str, Tail] = {}
        for result in split.codecs:
            pair = result.in_graph
            if pair is None or not pair.verified or pair.cloud_model in variants:
                continue
            quantiser = CodecSpec.parse(result.codec).quantiser
            as_sent = {}
            for name in pair.tensors:
                scales = (pair.scales or {}).get(name)
                if quantiser == "fp16":
                    as_sent[name] = WireForm("fp16")
                elif scales is not None:
                    as_sent[name] = WireForm("int8", tuple(scales.scale), tuple(scales.zero_point), scales.axis)
            if not as_sent:
                continue
            loaded = _load(executor, plan_dir / pair.cloud_model)
            variant = Path(pair.cloud_model).parent.name
            variants[pair.cloud_model] = Tail(plan.plan_id, plan.version, split.id, loaded, variant, as_sent)
        tails.extend(variants.values())
    return tails


def _load(config: ExecutorConfig, path: Path) -> Executor:
    loaded = _open(config, path)
    return loaded if loaded.batchable else _batchable_variant(config, path, loaded)


def _open(config: ExecutorConfig, path: Path) -> Executor:
    options = {"providers": config.providers, "threads": config.threads} if config.name == "onnxruntime" else {}
    return open_executor(config.name, path, **options)


def _batchable_variant(config: ExecutorConfig, path: Path, static: Executor) -> Executor:
    """``path`` rewritten with a symbolic batch dimension, if that runs and agrees with ``static``."""
    if static.name != "onnxruntime" or not all(t.shape and t.shape[0] == 1 for t in (*static.inputs, *static.outputs)):
        return static
    import onnx

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="tandem-hub-") as work:
        dynamic_path = Path(work) / f"{path.stem}.batch.onnx"
        onnx.save(model, str(dynamic_path))
        try:
            dynamic = _open(config, dynamic_path)  # the session holds the model; the file can go
            if _agrees(static, dynamic):
                logger.info("%s: serving with a dynamic batch dimension", path)
                return dynamic
        except ExecutorError as exc:
            logger.info("%s: keeps its fixed batch (%s)", path, exc)
    return static


def _agrees(static: Executor, dynamic: Executor) -> bool:
    rng = np.random.default_rng(0)
    samples = [{t.name: _sample(rng, t.dtype, tuple(d or 1 for d in t.shape)) for t in static.inputs} for _ in range(2)]
    apart = [static.run(sample) for sample in samples]
    together = dynamic.run({name: np.concatenate([s[name] for s in samples]) for name in samples[0]})
    return all(
        together[name].shape[0] == 2
        and all(np.allclose(together[name][i : i + 1], apart[i][name], rtol=1e-4, atol=1e-5) for i in range(2))
        for name in together
    )


def _sample(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.startswith("float"):
        return rng.normal(size=shape).astype(dtype)
    if dtype == "bool":
        return np.ones(shape, bool)
    return np.ones(shape, dtype)  # ids and masks: ones are valid for every embedding and mask
