"""Benchmark anchors: the formulation timm uses for SE and CBAM, written here (timm is not a dependency).

After ``timm/layers/squeeze_excite.py`` (SEModule) and ``timm/layers/cbam.py`` (ChannelAttn,
SpatialAttn): pooling with ``mean``/``amax``, the MLP as 1x1 convs, and CBAM's channel MLP called
once per pooling. The weights are copied from a generated module, so every candidate computes the
same function.
"""

from __future__ import annotations

import torch
from torch import nn


class TimmSE(nn.Module):
    def __init__(self, fc1: nn.Conv2d, fc2: nn.Conv2d):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, nn.ReLU(inplace=True), fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.fc1(x_se)))
        return x * x_se.sigmoid()


class TimmChannelAttn(TimmSE):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * (x_avg + x_max).sigmoid()


class TimmSpatialAttn(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(x_attn).sigmoid()


class TimmCbam(nn.Module):
    def __init__(self, channel: TimmChannelAttn, spatial: TimmSpatialAttn):
        super().__init__()
        self.channel, self.spatial = channel, spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class TimmEca(nn.Module):
    """timm's EcaModule forward: mean over space, a 1D conv across channels, sigmoid, expand_as."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y).view(x.shape[0], -1, 1, 1).sigmoid()
        return x * y.expand_as(x)
