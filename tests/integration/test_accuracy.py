"""Accuracy at a split, with real ONNX Runtime sessions and the real wire codecs.

Until the partitioner's own exporter is used here, each split is made with
onnx.utils.extract_model at a node index, with every crossing tensor (skips,
masks, model inputs the tail reads again) as a tail input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import pytest

from tandem.models import digits
from tandem.partitioner.accuracy import accuracy_at_split, accuracy_for_codecs
from tandem.partitioner.errors import AccuracyError
from tandem.transport.codec import CodecSpec
from tests.integration.test_reference_models_b import exported, minilm_reference_embeddings, run_onnx

CODECS = [CodecSpec.parse(text) for text in ("fp16", "int8", "int8@1", "fp16+lz4")]


def split_at(model_path: Path, first_tail_node: str, out_dir: Path) -> tuple[Path, Path, list[str]]:
    """Cut before the node named ``first_tail_node``; return edge and cloud files and the crossing tensors."""
    model = onnx.load(str(model_path))
    nodes = list(model.graph.node)
    cut = next(i for i, node in enumerate(nodes) if node.name == first_tail_node)
    weights = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in weights]
    outputs = [o.name for o in model.graph.output]
    # constants are re-created on the tail side by extract_model; they never cross
    head = [out for node in nodes[:cut] if node.op_type != "Constant" for out in node.output]
    read_by_tail = {name for node in nodes[cut:] for name in node.input} | set(outputs)
    crossing = [name for name in [*inputs, *head] if name in read_by_tail]
    out_dir.mkdir(parents=True, exist_ok=True)
    edge, cloud = out_dir / "edge.onnx", out_dir / "cloud.onnx"
    onnx.utils.extract_model(str(model_path), str(edge), inputs, [name for name in crossing if name in head])
    onnx.utils.extract_model(str(model_path), str(cloud), crossing, outputs)
    return edge, cloud, crossing


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return exported("digits_cnn", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory):
    return exported("minilm", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def digits_test_samples():
    images, labels = digits.test_set()
    return [{"input": images[i : i + 1]} for i in range(len(images))], labels


# Inside the residual block (the skip crosses) and between the two branches (the block output crosses too).
DIGITS_CUTS = {"residual": "/block_b/block_b.0/Conv", "branch": "/branch_3x3/branch_3x3.0/Conv"}


@pytest.mark.parametrize("cut", sorted(DIGITS_CUTS))
def test_digits_accuracy_at_a_middle_cut(cut, digits_model, digits_test_samples, tmp_path):
    samples, labels = digits_test_samples
    edge, cloud, crossing = split_at(digits_model.path, DIGITS_CUTS[cut], tmp_path)
    assert len(crossing) == 2
    full = float((run_onnx(digits_model.path, samples).argmax(axis=1) == labels).mean())
    results = accuracy_for_codecs(edge, cloud, samples, CODECS, "top1", labels=labels)
    for result in results.values():
        assert result.baseline == full  # raw transfer is bit-exact
        assert result.samples == len(samples)
    assert abs(results["fp16"].delta) <= 0.01
    assert abs(results["fp16+lz4"].delta) <= 0.01
    assert abs(results["int8"].delta) <= 0.03
    assert abs(results["int8@1"].delta) <= 0.03


def test_minilm_cosine_at_a_middle_cut(minilm_model, tmp_path):
    edge, cloud, crossing = split_at(minilm_model.path, "/layer.3/attention/self/query/MatMul", tmp_path)
    # hidden states, the additive mask every later attention layer reads, and the mask the pooling reads
    assert "attention_mask" in crossing and len(crossing) == 3
    reference = minilm_reference_embeddings()
    results = accuracy_for_codecs(
        edge, cloud, minilm_model.sample_inputs, CODECS, "cosine", reference_outputs=reference
    )
    raw_mean, raw_worst = results["fp16"].baseline, results["fp16"].baseline_worst
    assert raw_mean > 0.99999 and raw_worst > 0.9999
    assert results["fp16"].worst > 0.9999
    assert results["int8"].worst > 0.998  # measured about 0.9994 per-tensor
    assert results["int8@1"].worst > 0.999  # per-position scales do better
    assert results["int8"].delta < 0  # int8 does lose something: the measurement is not vacuous


def test_accuracy_at_split_is_one_codec_of_accuracy_for_codecs(digits_model, digits_test_samples, tmp_path):
    samples, labels = digits_test_samples
    edge, cloud, _ = split_at(digits_model.path, DIGITS_CUTS["branch"], tmp_path)
    single = accuracy_at_split(edge, cloud, samples[:50], CodecSpec.parse("int8"), "top1", labels=labels[:50])
    both = accuracy_for_codecs(edge, cloud, samples[:50], [CodecSpec.parse("int8")], "top1", labels=labels[:50])
    assert single == both["int8"]
    assert single.metric == "top1" and single.codec == "int8" and single.delta == single.value - single.baseline


def test_accuracy_reports_what_is_missing(digits_model, digits_test_samples, tmp_path):
    samples, labels = digits_test_samples
    edge, cloud, _ = split_at(digits_model.path, DIGITS_CUTS["residual"], tmp_path)
    fp16 = CodecSpec.parse("fp16")
    with pytest.raises(AccuracyError, match="metric 'top1' needs labels"):
        accuracy_at_split(edge, cloud, samples[:2], fp16, "top1")
    with pytest.raises(AccuracyError, match="metric 'cosine' needs reference_outputs"):
        accuracy_at_split(edge, cloud, samples[:2], fp16, "cosine")
    with pytest.raises(AccuracyError, match=r"sample 0 lacks edge input\(s\) \['input'\]"):
        accuracy_at_split(edge, cloud, [{"image": samples[0]["input"]}], fp16, "top1", labels=labels[:1])
    with pytest.raises(AccuracyError, match=r"ONNX Runtime failed to run .*edge\.onnx on sample 0"):
        accuracy_at_split(edge, cloud, [{"input": np.zeros((1, 1, 4, 4), np.float32)}], fp16, "top1", labels=labels[:1])
    with pytest.raises(AccuracyError, match="4 labels for 2 predictions"):
        accuracy_at_split(edge, cloud, samples[:2], fp16, "top1", labels=labels[:4])
    # the edge part of a different cut does not produce what this cloud part needs
    other_edge, _, _ = split_at(digits_model.path, DIGITS_CUTS["branch"], tmp_path / "other")
    with pytest.raises(AccuracyError, match=r"cloud input '/stem/stem\.2/Relu_output_0' of .*cloud\.onnx is"):
        accuracy_at_split(other_edge, cloud, samples[:2], fp16, "top1", labels=labels[:2])
    with pytest.raises(AccuracyError, match=r"edge model .*missing\.onnx not found"):
        accuracy_at_split(tmp_path / "missing.onnx", cloud, samples[:2], fp16, "top1", labels=labels[:2])


def test_cosine_reference_shape_must_match(minilm_model, tmp_path):
    edge, cloud, _ = split_at(minilm_model.path, "/layer.3/attention/self/query/MatMul", tmp_path)
    wrong = np.zeros((3, 384), np.float32)
    expected = r"reference outputs of shape \[3, 384\] do not match the outputs \[2, 384\]"
    with pytest.raises(AccuracyError, match=expected):
        accuracy_at_split(
            edge, cloud, [*minilm_model.sample_inputs[:2]], CodecSpec.parse("fp16"), "cosine", reference_outputs=wrong
        )
