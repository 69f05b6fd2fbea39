"""Anchors: other people's formulations of the same function, for the ``anchor`` check and the bench.

- PyTorch's own: ``F.scaled_dot_product_attention`` (sdpa) and ``nn.MultiheadAttention`` (mha with a
  same-configuration counterpart; weights copied by the generated ``from_torch``). Our mask
  conventions are translated to theirs here.
- timm's: SE, CBAM and ECA written after ``timm/layers/squeeze_excite.py`` (SEModule),
  ``cbam.py`` (ChannelAttn, SpatialAttn) and ``eca.py`` (EcaModule): pooling with ``mean``/``amax``,
  the MLP as 1x1 convs, CBAM's channel MLP called once per pooling. timm is not a dependency; the
  weights are copied from a generated module, so every candidate computes the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .references import causal_allowed
from .spec import AttentionOptions, MhaSpec, SdpaSpec

if TYPE_CHECKING:
    from .kinds import Case, Inputs


@dataclass(frozen=True)
class Anchor:
    """A counterpart a kind's variants are compared with (forward and input gradients; parameter
    gradients too where the parameters are the same tensors).

    ``make(module, case, device, gen)`` returns the module to test (the one given, or one carrying the
    anchor's weights) and the anchor as a function of the inputs.
    """

    name: str
    applies: Callable[[Case], bool]
    make: Callable[
        [nn.Module, Case, str, torch.Generator], tuple[nn.Module, Callable[[Inputs], Tensor]]
    ]
    same_parameters: bool


def _with_causal(spec: AttentionOptions, mask: Tensor | None, lq: int, lk: int, device: torch.device) -> Tensor | None:
    """``mask`` (True = allowed, or additive) combined with the spec's causality, as one mask."""
    if not spec.causal:
        return mask
    causal = causal_allowed(lq, lk, spec.causal_alignment, device)
    if mask is None:
        return causal
    return mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))


def sdpa_anchor(spec: SdpaSpec) -> Anchor:
    def make(
        module: nn.Module, case: Case, device: str, gen: torch.Generator
    ) -> tuple[nn.Module, Callable[[Inputs], Tensor]]:
        def anchor(inputs: Inputs) -> Tensor:
            q, k, v = inputs.args
            mask = inputs.kwargs.get("attn_mask")
            if spec.causal and mask is None and spec.causal_alignment == "top_left":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=spec.scale)
            mask = _with_causal(spec, mask, q.shape[-2], k.shape[-2], q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=spec.scale)

        return module, anchor

    return Anchor("F.scaled_dot_product_attention", lambda case: True, make, same_parameters=True)


def mha_anchor(spec: MhaSpec) -> Anchor:
    """``nn.MultiheadAttention`` with random weights, loaded into the variant by ``from_torch``."""

    def make(
        module: nn.Module, case: Case, device: str, gen: torch.Generator
    ) -> tuple[nn.Module, Callable[[Inputs], Tensor]]:
        e = case.ctor[0]
        kdim, vdim = (case.ctor[1], case.ctor[2]) if len(case.ctor) > 2 else (e, e)
        mha = nn.MultiheadAttention(
            e,
            spec.heads,
            dropout=spec.dropout,
            bias=spec.qkv_bias,
            kdim=kdim,
            vdim=vdim,
            batch_first=True,
            device=device,
            dtype=torch.float64,
        )
        with torch.no_grad():
            for p in mha.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        mha.eval()
        ours = type(module).from_torch(mha).eval()  # type: ignore[attr-defined]

        def anchor(inputs: Inputs) -> Tensor:
            q, k, v = inputs.args
            b, lq, lk, h = q.shape[0], q.shape[1], k.shape[1], spec.heads
            mask = _with_causal(spec, inputs.kwargs.get("attn_mask"), lq, lk, q.device)
            padding = inputs.kwargs.get("key_padding_mask")
            if mask is not None:
                if mask.ndim == 4:
                    mask = mask.expand(b, h, lq, lk).reshape(b * h, lq, lk)
                if mask.dtype == torch.bool and padding is not None and padding.is_floating_point():
                    mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                        ~mask, float("-inf")
                    )
                elif mask.dtype == torch.bool:
                    mask = ~mask  # nn.MultiheadAttention: True = NOT allowed
            out, _ = mha(q, k, v, key_padding_mask=padding, attn_mask=mask, need_weights=False)
            return out

        return ours, anchor

    # nn.MultiheadAttention has no out_dim: cases with a fourth constructor argument do not apply.
    return Anchor("nn.MultiheadAttention", lambda case: len(case.ctor) < 4, make, same_parameters=False)


# --- timm's formulations (bench) ------------------------------------------------------------------


class TimmSE(nn.Module):
    def __init__(self, fc1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, nn.ReLU(inplace=True), fc2

    def forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.fc1(x_se)))
        return x * x_se.sigmoid()


class TimmChannelAttn(TimmSE):
    def forward(self, x: Tensor) -> Tensor:
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * (x_avg + x_max).sigmoid()


class TimmSpatialAttn(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(x_attn).sigmoid()


class TimmCbam(nn.Module):
    def __init__(self, channel: TimmChannelAttn, spatial: TimmSpatialAttn):
        super().__init__()
        self.channel, self.spatial = channel, spatial

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class TimmEca(nn.Module):
    """timm's EcaModule forward: mean over space, a 1D conv across channels, sigmoid, expand_as."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y).view(x.shape[0], -1, 1, 1).sigmoid()
        return x * y.expand_as(x)
