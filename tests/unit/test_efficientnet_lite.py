"""EfficientNet-Lite1: real packaged weights, its preprocessing, the ImageNet class names, and its ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tandem.executors import open_executor
from tandem.models import efficientnet_lite
from tandem.models.registry import get_reference


def test_the_class_names_are_imagenets_thousand_in_logit_order() -> None:
    names = efficientnet_lite.class_names()
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[281], names[285], names[967]) == ("tench", "tabby", "Egyptian cat", "espresso")
    logits = np.zeros((1, 1000), np.float32)
    logits[0, 967] = 5.0
    assert efficientnet_lite.label_of(logits) == "espresso"
    with pytest.raises(ValueError, match=r"expected 1000 ImageNet logits, got an array of shape \(1, 10\)"):
        efficientnet_lite.label_of(np.zeros((1, 10), np.float32))


def test_preprocess_crops_resizes_and_scales_as_the_tflite_models_were_trained() -> None:
    grey = np.full((300, 500), 255, np.uint8)
    x = efficientnet_lite.preprocess(grey)
    assert x.shape == (1, 3, 240, 240) and x.dtype == np.float32
    np.testing.assert_allclose(x, (255 - 127) / 128)
    rgba = np.zeros((100, 80, 4), np.uint8)
    np.testing.assert_allclose(efficientnet_lite.preprocess(rgba), -127 / 128)
    with pytest.raises(ValueError, match=r"expected a uint8 photo \[H, W\] or \[H, W, 3\|4\], got float32 \(8, 8, 3\)"):
        efficientnet_lite.preprocess(np.zeros((8, 8, 3), np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reference = get_reference("efficientnet_lite1")
    assert reference.weights == "packaged"
    return reference.export(tmp_path_factory.mktemp("lite1") / "lite1.onnx", 1).path


def test_the_real_weights_name_the_bundled_photos(exported: Path) -> None:
    """Loaded strictly from the packaged state dict, the ONNX graph sees a cat, an espresso and a palace."""
    model = open_executor("onnxruntime", exported)
    photos = dict(efficientnet_lite.photos())
    labels = {
        name: efficientnet_lite.label_of(model.run({"input": efficientnet_lite.preprocess(photos[name])})["logits"])
        for name in ("chelsea", "coffee", "china")
    }
    assert labels["chelsea"] in ("tabby", "tiger cat", "Egyptian cat"), labels
    assert labels["coffee"] in ("espresso", "cup", "coffee mug"), labels
    assert labels["china"] in ("palace", "monastery", "church", "castle"), labels


def test_the_onnx_export_computes_what_the_torch_module_does(exported: Path) -> None:
    import torch

    x = efficientnet_lite.sample_inputs()[0]["input"]
    with torch.no_grad():
        expected = efficientnet_lite.build()(torch.from_numpy(x)).numpy()
    got = open_executor("onnxruntime", exported).run({"input": x})["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert len(efficientnet_lite.sample_inputs()) == len(efficientnet_lite.PHOTOS)
