"""The MiniLM and digits reference models: faithful ONNX exports, real weights, real accuracy.

``exported(name, root)`` exports each model once per test session (MiniLM's
export takes seconds); test_accuracy.py reuses it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tandem.models import digits, minilm
from tandem.models.base import ExportedModel
from tandem.partitioner.errors import ReferenceModelError

_MODELS = {"minilm": minilm, "digits_cnn": digits}


@functools.cache
def exported(name: str, root: Path) -> ExportedModel:
    """Export reference model ``name`` (batch 1) under ``root``, once per session."""
    return _MODELS[name].reference().export(root / name / f"{name}.onnx", 1)


@functools.cache
def minilm_reference_embeddings() -> np.ndarray:
    """sentence-transformers' own embeddings of the packaged sentences, once per session."""
    return minilm.reference_embeddings()


def run_onnx(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """First output of ``path`` for each feed, stacked along the batch axis."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory) -> ExportedModel:
    return exported("minilm", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> ExportedModel:
    return exported("digits_cnn", tmp_path_factory.getbasetemp())


def test_reference_metadata():
    assert minilm.reference().name == "minilm" and minilm.reference().weights == "packaged"
    assert digits.reference().name == "digits_cnn" and digits.reference().weights == "trained"


def test_minilm_onnx_matches_sentence_transformers(minilm_model):
    assert minilm_model.input_names == ("input_ids", "attention_mask")
    assert len(minilm_model.sample_inputs) == len(minilm.SENTENCES)
    ours = run_onnx(minilm_model.path, minilm_model.sample_inputs)
    theirs = minilm_reference_embeddings()
    assert ours.shape == theirs.shape == (len(minilm.SENTENCES), minilm.EMBEDDING_DIM)
    cosine = (ours * theirs).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosine.min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_minilm_samples_are_padded_to_the_fixed_length(minilm_model):
    lengths = [int(sample["attention_mask"].sum()) for sample in minilm_model.sample_inputs]
    assert all(0 < n < minilm.SEQUENCE_LENGTH for n in lengths)
    assert len(set(lengths)) > 3  # different amounts of padding
    graph = onnx.load(str(minilm_model.path)).graph
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [[1, minilm.SEQUENCE_LENGTH], [1, minilm.SEQUENCE_LENGTH]]


def test_minilm_every_attention_layer_reads_the_mask(minilm_model):
    graph = onnx.load(str(minilm_model.path)).graph
    downstream = {"attention_mask"}
    for node in graph.node:  # topological order
        if any(name in downstream for name in node.input):
            downstream.update(node.output)
    producers = {out: node for node in graph.node for out in node.output}
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    assert len(softmaxes) == 6
    for softmax in softmaxes:
        scores = producers[softmax.input[0]]
        assert scores.op_type == "Add"
        assert any(name in downstream for name in scores.input), softmax.name
    pooling_readers = [n for n in graph.node if "attention_mask" in n.input]
    assert len(pooling_readers) >= 2  # the additive mask and the pooling weights


def test_minilm_rejects_a_sentence_over_the_sequence_length():
    long_sentence = " ".join(["word"] * 40)
    expected = r"model 'minilm': sentence 0 has \d+ tokens, over the sequence length 32"
    with pytest.raises(ReferenceModelError, match=expected):
        minilm.tokenize([long_sentence])


def test_digits_split_is_held_out_and_well_formed():
    x_train, y_train = digits.train_set()
    x_test, y_test = digits.test_set()
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert x_test.shape[1:] == (1, 8, 8) and len(x_test) == len(y_test)
    assert len(x_train) + len(x_test) == 1797
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))


def test_digits_cnn_trains_above_95_percent(digits_model):
    module = digits.load_trained(digits_model.path.with_suffix(".pt"))
    x_test, y_test = digits.test_set()
    assert digits.accuracy(module, x_test, y_test) > 0.95


def test_digits_onnx_matches_torch(digits_model):
    import torch

    module = digits.load_trained(digits_model.path.with_suffix(".pt"))
    x_test, _ = digits.test_set()
    feeds = [{"input": x_test[i : i + 1]} for i in range(64)]
    ours = run_onnx(digits_model.path, feeds)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x_test[:64])).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


def test_digits_export_reuses_its_trained_weights(digits_model, tmp_path):
    """The weights beside the target are used as they are: altered ones give the altered model, not a retrained one.

    (Training is seeded and bit-reproducible, so an export that retrained would
    match an unaltered copy too; the altered weights tell the two apart.)
    """
    import torch

    module = digits.load_trained(digits_model.path.with_suffix(".pt"))
    with torch.no_grad():
        last = list(module.parameters())[-1]  # the classifier's bias
        last[3] += 5.0  # now class 3 wins far more often
    target = tmp_path / "again.onnx"
    torch.save(module.state_dict(), target.with_suffix(".pt"))
    again = digits.export(target, 1)
    x_test, _ = digits.test_set()
    feeds = [{"input": x_test[i : i + 1]} for i in range(16)]
    with torch.no_grad():
        expected = [module(torch.from_numpy(feed["input"])).numpy() for feed in feeds]
    reused = run_onnx(again.path, feeds)
    np.testing.assert_allclose(reused, np.concatenate(expected), rtol=1e-4, atol=1e-4)
    assert np.abs(reused - run_onnx(digits_model.path, feeds)).max() > 1.0


def test_digits_corrupt_weights_are_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ReferenceModelError, match=r"model 'digits_cnn': cannot load weights .*bad\.pt"):
        digits.load_trained(bad)
