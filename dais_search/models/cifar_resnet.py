"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages of widths 16/32/64.

Module names and parameter shapes match akamaster/pytorch_resnet_cifar10, so the checkpoints in
``../shared/pretrained`` load after stripping DataParallel's ``module.`` prefix. Two shortcut
options:

* ``"A"`` (the paper's CIFAR choice, and the shared checkpoints'): parameter-free; where the shape
  changes, subsample by 2 and zero-pad ``planes // 4`` channels on each side.
* ``"B"``: a 1x1 convolution + BN projection where the shape changes, identity elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "BasicBlock", "PadShortcut", "cifar_resnet"]


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` zero-padded by ``pad`` channels per side.

    A module rather than akamaster's ``LambdaLayer`` so that it can be traced, named and
    recognised by the channel-group analysis.
    """

    def __init__(self, stride: int, pad: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif option == "A":
            if planes - in_planes != 2 * (planes // 4):
                raise ValueError(f"option-A shortcut needs planes == 2 * in_planes, got {in_planes} -> {planes}")
            self.shortcut = PadShortcut(stride, planes // 4)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``num_blocks`` BasicBlocks per stage.

    Args:
        num_blocks: blocks in each of the three stages (``n`` for depth ``6n + 2``).
        num_classes: outputs of the linear head.
        option: shortcut option, ``"A"`` (zero-pad) or ``"B"`` (1x1 projection).
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10, option: str = "A") -> None:
        super().__init__()
        if option not in ("A", "B"):
            raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1, option)
        self.layer2 = self._make_layer(32, num_blocks[1], 2, option)
        self.layer3 = self._make_layer(64, num_blocks[2], 2, option)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, option: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10, option: str = "A") -> CifarResNet:
    """Builds the CIFAR ResNet of ``depth = 6n + 2`` layers (8, 20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), num_classes=num_classes, option=option)
