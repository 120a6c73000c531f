"""Real activations to measure codecs and links on.

Post-ReLU feature maps of a ResNet-18 (torchvision's definition, seeded random
weights, batch-norm in eval mode) run on a real photo that scikit-learn ships
(``china.jpg``), after layer1, layer2 and layer3: the tensors a split at those
points would put on the wire. Needs the ``partition`` extra (torch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv_activations"]

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def conv_activations() -> dict[str, np.ndarray]:
    """Post-ReLU features of ResNet-18 on a real photo, keyed by layer name."""
    import torch
    import torchvision
    from sklearn.datasets import load_sample_image

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    image = load_sample_image("china.jpg")[:224, 200:424].astype(np.float32) / 255.0
    x = torch.from_numpy(((image - _MEAN) / _STD).transpose(2, 0, 1)[None].copy())
    out = {}
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for name in ("layer1", "layer2", "layer3"):
            h = getattr(net, name)(h)  # every residual block ends in a ReLU
            out[name] = h.numpy().copy()
    return out
