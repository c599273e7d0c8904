"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The ImageNet network downsamples 32x; on CIFAR that leaves a 1x1 map after the second stage.
As in the common CIFAR adaptation, the stem and the second stage keep stride 1, so the network
downsamples 8x (32 -> 4) and keeps the ImageNet widths, expansion factors and block counts.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CifarMobileNetV2", "InvertedResidual"]

# (expansion t, output channels c, repeats n, first stride s), ImageNet strides 2 -> 1 for rows 0 and 1.
CIFAR_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), with a residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs.

    Args:
        num_classes: outputs of the linear head.
        width_mult: multiplier on every width (rounded to a multiple of 8, as in the paper).
        dropout: dropout before the head.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()

        def width(c: float) -> int:
            return max(8, int(c * width_mult + 4) // 8 * 8)

        cin = width(32)
        last = width(1280) if width_mult > 1.0 else 1280
        layers: list[nn.Module] = [_conv_bn_relu(3, cin, 3, 1)]
        for t, c, n, s in CIFAR_SETTINGS:
            cout = width(c)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
