"""ResNet-18 with torchvision's module names, so that torchvision-trained weights load as they are.

``resnet18(n_classes)`` is torchvision's ``resnet18`` layout (conv1 7x7/2 + max-pool for
ImageNet-sized inputs); ``small_input=True`` is the usual 32-px adaptation of the CIFAR
unlearning papers (SalUn, Boundary Unlearning): conv1 3x3/1 and no max-pool. ``width`` scales
the four stages (64, 128, 256, 512 at width 64, torchvision's); a narrower net keeps the depth
and the layout. The state-dict keys (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.0.downsample.0``, ``fc``) are torchvision's. (torchvision itself is not a dependency: its
CPU build for torch 2.13 is not on the package index this project installs from.)
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks; the head is ``self.fc``."""

    def __init__(self, layers=(2, 2, 2, 2), n_classes: int = 10, width: int = 64, in_channels: int = 3,
                 small_input: bool = True):
        super().__init__()
        self.config = {"layers": list(layers), "n_classes": n_classes, "width": width,
                       "in_channels": in_channels, "small_input": small_input}
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(width * 2, layers[1], 2)
        self.layer3 = self._make_layer(width * 4, layers[2], 2)
        self.layer4 = self._make_layer(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8, n_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        out = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        out += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(n_classes: int = 10, width: int = 64, in_channels: int = 3, small_input: bool = True) -> ResNet:
    return ResNet((2, 2, 2, 2), n_classes, width, in_channels, small_input)
