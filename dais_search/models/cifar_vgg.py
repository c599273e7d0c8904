"""CIFAR VGG with batch norm (Simonyan & Zisserman 2015, as adapted to 32x32 by network slimming).

Conv3x3-BN-ReLU stacks with five 2x2 max-pools, so a 32x32 input reaches the head at 1x1x512;
the head is a single ``Linear(512, num_classes)``, the form used by most CIFAR pruning papers.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CifarVGG", "VGG_CONFIGS", "cifar_vgg"]

VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG-BN for 32x32 inputs.

    Args:
        cfg: output widths of the conv layers in order, ``"M"`` for a 2x2 max-pool.
        num_classes: outputs of the linear head.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(True)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def cifar_vgg(depth: int, num_classes: int = 10) -> CifarVGG:
    """Builds CIFAR VGG-``depth`` with BN (depth in 11, 13, 16, 19)."""
    if depth not in VGG_CONFIGS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
    return CifarVGG(VGG_CONFIGS[depth], num_classes=num_classes)
