"""A small CNN trained on scikit-learn's bundled 8x8 digits, with a skip and a branch.

The network (input ``input`` float32 ``[batch, 1, 8, 8]``, output ``logits``
``[batch, 10]``)::

    stem:   conv3x3(1->16) + BN + ReLU                       -> s  [16, 8, 8]
    block:  conv3x3(16->16) + BN + ReLU, conv3x3(16->16) + BN, + s (skip), ReLU  -> r
    branch: conv1x1(16->8) + ReLU on r  and  conv3x3(16->8) + ReLU on r, concat  -> b  [16, 8, 8]
    head:   maxpool 2 -> conv3x3(16->32) + ReLU -> global average pool -> linear(32->10)

so cuts inside the residual block or between the two branches cross several
tensors. Training is minibatch Adam with a one-cycle schedule for a dozen epochs on CPU
with a fixed seed (a few seconds); the held-out quarter of the data set is
:func:`test_set`. Trained weights are kept next to the exported ONNX file
(``<stem>.pt``) and reused by a later export to the same path.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from tandem.models.base import ExportedModel, ReferenceModel, export_onnx
from tandem.partitioner.errors import ReferenceModelError

__all__ = ["accuracy", "export", "load_trained", "reference", "sample_inputs", "test_set", "train", "train_set"]

NAME = "digits_cnn"
OPSET = 17
INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)
SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 12
BATCH_SIZE = 128
LEARNING_RATE = 1e-2
SAMPLE_COUNT = 16


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    # pixel values are 0..16; scale to 0..1
    images = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SEED, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def train_set() -> tuple[np.ndarray, np.ndarray]:
    """Training images (float32 ``[N, 1, 8, 8]`` in 0..1) and labels (int64 ``[N]``)."""
    x_train, y_train, _, _ = _split()
    return x_train, y_train


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """Held-out images (float32 ``[N, 1, 8, 8]`` in 0..1) and labels (int64 ``[N]``), never trained on."""
    _, _, x_test, y_test = _split()
    return x_test, y_test


def _build_module() -> Any:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """Stem, residual block, two-way branch, pooled head."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.block_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.block_b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.branch_1x1 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
            self.branch_3x3 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(
                nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            self.classifier = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            r = torch.relu(self.block_b(self.block_a(s)) + s)
            b = torch.cat([self.branch_1x1(r), self.branch_3x3(r)], dim=1)
            return self.classifier(self.head(b))

    return DigitsCNN()


def train(*, epochs: int = EPOCHS, seed: int = SEED) -> Any:
    """Train the CNN on :func:`train_set` with a fixed seed; return the module in eval mode."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: one thread is as fast and keeps runs reproducible
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        x_train, y_train = train_set()
        x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        module = _build_module()
        optimiser = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
        steps = epochs * -(-len(x) // BATCH_SIZE)
        # decaying to zero makes the last weights a settled model rather than one mid-oscillation
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps)
        loss_fn = torch.nn.CrossEntropyLoss()
        module.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                optimiser.zero_grad()
                loss = loss_fn(module(x[index]), y[index])
                loss.backward()
                optimiser.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return module.eval()


def load_trained(weights: Path) -> Any:
    """Rebuild the CNN from a state dict saved by :func:`export`."""
    import torch

    module = _build_module()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise ReferenceModelError(f"model 'digits_cnn': cannot load weights {weights}: {exc}") from exc
    return module.eval()


def accuracy(module: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of a torch module on ``images``."""
    import torch

    with torch.no_grad():
        predicted = module(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def sample_inputs(batch: int = 1, count: int = SAMPLE_COUNT) -> list[dict[str, np.ndarray]]:
    """``count`` batches of ``batch`` held-out images each."""
    images, _ = test_set()
    return [{"input": images[i * batch : (i + 1) * batch]} for i in range(count)]


def export(path: Path, batch: int = 1) -> ExportedModel:
    """Train (or reuse ``<stem>.pt`` beside ``path``) and write the ONNX graph for a fixed ``batch``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".pt")
    if weights.is_file():
        module = load_trained(weights)
    else:
        module = train()
        torch.save(module.state_dict(), weights)
    export_onnx(module, np.zeros((batch, 1, 8, 8), np.float32), path, INPUT_NAMES, OUTPUT_NAMES, OPSET)
    return ExportedModel(path=path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                         sample_inputs=sample_inputs(batch))  # fmt: skip


def reference() -> ReferenceModel:
    """The digits CNN reference model (trained here, in seconds, on scikit-learn's digits)."""
    return ReferenceModel(
        name=NAME,
        description="small CNN with a residual block and a two-way branch, trained on scikit-learn's 8x8 digits",
        weights="trained",
        export=export,
    )
