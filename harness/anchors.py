"""Anchors: other people's formulations of the same function, for the ``anchor`` check and the bench.

- PyTorch's own: ``F.scaled_dot_product_attention`` (sdpa) and ``nn.MultiheadAttention`` (mha with a
  same-configuration counterpart; weights copied by the generated ``from_torch``). Our mask
  conventions are translated to theirs here.
- timm's, written out as functions of the module's parameters and buffers: SE, ESE, CBAM, ECA,
  ELA and strip attention after ``timm/layers/squeeze_excite.py`` (SEModule, EffectiveSEModule),
  ``cbam.py`` (ChannelAttn, SpatialAttn and the Light ones), ``eca.py`` (EcaModule, CecaModule)
  and ``coord_attn.py`` (CoordAttn, SimpleCoordAttn, EfficientLocalAttn, StripAttn): pooling with
  ``mean``/``amax``, the MLP as 1x1 convs, CBAM's channel MLP called once per pooling; GE and GC
  after ``gather_excite.py`` (GatherExcite) and ``global_context.py`` (GlobalContext). timm is not
  a dependency; ``tests/timm_interop`` compares the generated modules with timm itself.
- The zoo's, for blocks timm does not have: SimAM and SGE after their official code (ZjjConan/SimAM,
  implus/PytorchInsight), which External-Attention-pytorch repeats: flattened views, ``mean`` and
  ``pow(2)``, ``adaptive_avg_pool`` and ``std``, written for any number of spatial dims.
- The zoo's, for blocks timm does not have, after the authors' released code: triplet attention
  (landskape-ai/triplet-attention, ``triplet_attention.py``: permute, ZPool, BasicConv, sigmoid,
  permute back, 1/3 of the sum) and BAM (Jongchan/attention-module, ``MODELS/bam.py``: the gates
  as Sequential chains, ``expand_as``, ``1 + sigmoid``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .references import Params, causal_allowed, window_allowed
from .spec import (
    AttentionOptions,
    BamSpec,
    BatSpec,
    CbamSpec,
    ChannelOptions,
    CoordSpec,
    EcaSpec,
    ElaSpec,
    EseSpec,
    GcSpec,
    GeSpec,
    MhaSpec,
    NlSpec,
    ScoordSpec,
    SdpaSpec,
    SgeSpec,
    SimamSpec,
    SkSpec,
    SpatialOptions,
    SplatSpec,
    StripSpec,
    TripletSpec,
)

if TYPE_CHECKING:
    from .kinds import Case, Inputs


AnchorFn = Callable[[Params, "Inputs"], Tensor]


@dataclass(frozen=True)
class Anchor:
    """A counterpart a kind's variants are compared with (forward and input gradients; parameter
    gradients too where the parameters are the same tensors).

    ``make(module, case, device, gen)`` returns the module to test (the one given, or one carrying the
    anchor's weights) and the anchor as a function of (parameters, inputs); an anchor with
    ``same_parameters`` reads the module's parameters from the mapping it is given, so their
    gradients compare too.
    """

    name: str
    applies: Callable[[Case], bool]
    make: Callable[[nn.Module, Case, str, torch.Generator], tuple[nn.Module, AnchorFn]]
    same_parameters: bool


def _with_causal(
    spec: AttentionOptions, mask: Tensor | None, lq: int, lk: int, device: torch.device
) -> Tensor | None:
    """``mask`` (True = allowed, or additive) combined with the spec's causality and sliding
    window, as one mask."""
    if not spec.causal and spec.window is None:
        return mask
    causal = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if spec.causal:
        causal = causal_allowed(lq, lk, spec.causal_alignment, device)
    if spec.window is not None:
        causal = causal & window_allowed(
            lq, lk, spec.window, spec.causal, spec.causal_alignment, device
        )
    if mask is None:
        return causal
    return mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))


def sdpa_anchor(spec: SdpaSpec) -> Anchor:
    def make(
        module: nn.Module, case: Case, device: str, gen: torch.Generator
    ) -> tuple[nn.Module, AnchorFn]:
        def anchor(params: Params, inputs: Inputs) -> Tensor:
            q, k, v = inputs.args
            mask = inputs.kwargs.get("attn_mask")
            if (
                spec.causal
                and mask is None
                and spec.causal_alignment == "top_left"
                and spec.window is None
            ):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=spec.scale)
            mask = _with_causal(spec, mask, q.shape[-2], k.shape[-2], q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=spec.scale)

        return module, anchor

    return Anchor("F.scaled_dot_product_attention", lambda case: True, make, same_parameters=True)


def mha_anchor(spec: MhaSpec) -> Anchor:
    """``nn.MultiheadAttention`` with random weights, loaded into the variant by ``from_torch``."""

    def make(
        module: nn.Module, case: Case, device: str, gen: torch.Generator
    ) -> tuple[nn.Module, AnchorFn]:
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

        def anchor(params: Params, inputs: Inputs) -> Tensor:
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
    return Anchor(
        "nn.MultiheadAttention", lambda case: len(case.ctor) < 4, make, same_parameters=False
    )


# --- timm's formulations, functional (the low-precision yardstick and an anchor) ---------------------


def _timm_gate(s: Tensor, name: str) -> Tensor:
    # timm's sigmoid and hard_sigmoid (relu6(x + 3) / 6, in timm/layers/activations.py)
    return s.sigmoid() if name == "sigmoid" else F.relu6(s + 3.0) / 6.0


_ACT: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "hard_swish": F.hardswish,
}


def _bn(x: Tensor, params: Params, prefix: str) -> Tensor:
    """An eval-mode BatchNorm with the module's running statistics (F.batch_norm)."""
    return F.batch_norm(
        x,
        params[f"{prefix}running_mean"],
        params[f"{prefix}running_var"],
        params[f"{prefix}weight"],
        params[f"{prefix}bias"],
        training=False,
    )


_CONV: dict[int, Callable[..., Tensor]] = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def timm_channel(x: Tensor, params: Params, opts: ChannelOptions, prefix: str = "") -> Tensor:
    """SEModule / CBAM ChannelAttn: mean / amax over space, the MLP as 1x1 convs (once per pooling,
    summed; or on the averaged poolings for SE's add_maxpool), the gate, ``x * gate``."""
    dims = tuple(range(2, x.ndim))
    conv = _CONV[x.ndim]
    w1, b1 = params[f"{prefix}fc1.weight"], params.get(f"{prefix}fc1.bias")
    w2, b2 = params[f"{prefix}fc2.weight"], params.get(f"{prefix}fc2.bias")

    def mlp(v: Tensor) -> Tensor:
        hidden = conv(v, w1, b1)
        if opts.norm == "batchnorm":
            hidden = _bn(hidden, params, f"{prefix}bn.")
        return conv(_ACT[opts.activation](hidden), w2, b2)

    pooled = {"avg": x.mean(dims, keepdim=True), "max": x.amax(dims, keepdim=True)}
    if len(opts.pooling) == 2 and opts.pooling_merge == "before_mlp":
        s = mlp(0.5 * (pooled["avg"] + pooled["max"]))
    else:
        s = mlp(pooled[opts.pooling[0]])
        for p in opts.pooling[1:]:
            s = s + mlp(pooled[p])
    return x * _timm_gate(s, opts.gate)


def timm_spatial(x: Tensor, params: Params, opts: SpatialOptions, prefix: str = "") -> Tensor:
    """CBAM SpatialAttn: mean / amax over channels, concatenated (LightSpatialAttn: averaged),
    a k x k conv (ConvNormAct: conv.conv, conv.bn), the gate."""
    maps = {"mean": x.mean(dim=1, keepdim=True), "max": x.amax(dim=1, keepdim=True)}
    if opts.pooling_merge == "average" and len(opts.pooling) == 2:
        pooled = 0.5 * maps["mean"] + 0.5 * maps["max"]
    else:
        pooled = torch.cat([maps[p] for p in opts.pooling], dim=1)
    name = f"{prefix}conv.conv." if opts.norm == "batchnorm" else f"{prefix}conv."
    s = _CONV[x.ndim](
        pooled, params[f"{name}weight"], params.get(f"{name}bias"), padding=opts.kernel_size // 2
    )
    if opts.norm == "batchnorm":
        s = _bn(s, params, f"{prefix}conv.bn.")
    return x * _timm_gate(s, opts.gate)


def timm_cbam(x: Tensor, params: Params, spec: CbamSpec) -> Tensor:
    if spec.order == "channel_first":
        x = timm_channel(x, params, spec.channel, "channel.")
        return timm_spatial(x, params, spec.spatial, "spatial.")
    x = timm_spatial(x, params, spec.spatial, "spatial.")
    return timm_channel(x, params, spec.channel, "channel.")


def timm_eca(x: Tensor, params: Params, spec: EcaSpec) -> Tensor:
    """EcaModule (CecaModule: circular F.pad first): mean over space, a 1D conv across channels
    (ecam: conv, act, conv2), the gate, ``x * gate``."""
    last = "conv2" if spec.mlp else "conv"
    w = params[f"{last}.weight"]
    y = x.mean(tuple(range(2, x.ndim))).view(x.shape[0], 1, -1)
    if spec.mlp:
        y = _ACT[spec.activation](F.conv1d(y, params["conv.weight"], params["conv.bias"]))
    pad = w.shape[-1] // 2
    if spec.padding == "circular":
        y = F.conv1d(F.pad(y, (pad, pad), mode="circular"), w, params.get(f"{last}.bias"))
    else:
        y = F.conv1d(y, w, params.get(f"{last}.bias"), padding=pad)
    return x * _timm_gate(y.view(*x.shape[:2], *[1] * (x.ndim - 2)), spec.gate)


def timm_ese(x: Tensor, params: Params, spec: EseSpec) -> Tensor:
    """EffectiveSEModule: mean (and, with add_maxpool, amax) over space, one 1x1 conv, the gate."""
    dims = tuple(range(2, x.ndim))
    x_se = x.mean(dims, keepdim=True) if "avg" in spec.pooling else x.amax(dims, keepdim=True)
    if len(spec.pooling) == 2:
        x_se = 0.5 * x_se + 0.5 * x.amax(dims, keepdim=True)
    s = _CONV[x.ndim](x_se, params["fc.weight"], params.get("fc.bias"))
    return x * _timm_gate(s, spec.gate)


_AVG_POOL: dict[int, Callable[..., Tensor]] = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}
_MAX_POOL: dict[int, Callable[..., Tensor]] = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}


def timm_ge(x: Tensor, params: Params, spec: GeSpec) -> Tensor:
    """GatherExcite: mean (and amax) over space at extent 0; F.avg_pool (count_include_pad=False)
    and F.max_pool over (2e - 1)-wide windows with stride e; or the gather Sequential (depthwise
    convs, eval-mode batch norms, the activation between them); ConvMlp as 1x1 convs;
    F.interpolate back to the input's size where the map is not 1x1; the gate, ``x * gate``."""
    conv, c = _CONV[x.ndim], x.shape[1]
    if spec.extra_params:
        if spec.extent == 0:
            assert spec.feat_size is not None
            layers = [(1, [(k - 1) // 2 for k in spec.feat_size])]
        else:
            layers = [(2, [1] * spec.dims)] * (spec.extent.bit_length() - 1)
        x_ge = x
        for i, (stride, padding) in enumerate(layers, 1):
            if i > 1:
                x_ge = _ACT[spec.activation](x_ge)
            w = params[f"gather.conv{i}.weight"]
            x_ge = conv(x_ge, w, None, stride=stride, padding=padding, groups=c)
            if spec.norm == "batchnorm":
                x_ge = _bn(x_ge, params, f"gather.norm{i}.")
    elif spec.extent == 0:
        dims = tuple(range(2, x.ndim))
        x_ge = x.mean(dims, keepdim=True) if "avg" in spec.pooling else x.amax(dims, keepdim=True)
        if len(spec.pooling) == 2:
            x_ge = 0.5 * x_ge + 0.5 * x.amax(dims, keepdim=True)
    else:
        k, e = 2 * spec.extent - 1, spec.extent
        avg = _AVG_POOL[x.ndim](x, k, stride=e, padding=k // 2, count_include_pad=False)
        mx = _MAX_POOL[x.ndim](x, k, stride=e, padding=k // 2)
        if spec.pooling == ("avg",):
            x_ge = avg
        elif spec.pooling == ("max",):
            x_ge = mx
        else:
            x_ge = 0.5 * avg + 0.5 * mx
    if spec.mlp:
        hidden = conv(x_ge, params["mlp.fc1.weight"], params["mlp.fc1.bias"])
        x_ge = conv(_ACT[spec.activation](hidden), params["mlp.fc2.weight"], params["mlp.fc2.bias"])
    if any(n != 1 for n in x_ge.shape[2:]):
        x_ge = F.interpolate(x_ge, size=x.shape[2:])
    return x * _timm_gate(x_ge, spec.gate)


def timm_gc(x: Tensor, params: Params, spec: GcSpec) -> Tensor:
    """GlobalContext: softmax of conv_attn's logits over the positions and a batched matmul with
    ``x`` (or the mean); each ConvMlp as 1x1 convs with LayerNorm2d (F.layer_norm on channels
    last, eps 1e-6) between fc1 and the activation; ``x * gate(mlp_scale)``, then ``+ mlp_add``."""
    b, c = x.shape[:2]
    conv = _CONV[x.ndim]
    ones = [1] * (x.ndim - 2)
    if spec.context == "attention":
        attn = conv(x, params["conv_attn.weight"], params["conv_attn.bias"]).reshape(b, 1, -1)
        attn = F.softmax(attn, dim=-1).unsqueeze(3)
        context = (x.reshape(b, c, -1).unsqueeze(1) @ attn).view(b, c, *ones)
    else:
        context = x.mean(tuple(range(2, x.ndim)), keepdim=True)

    def mlp(prefix: str) -> Tensor:
        h = conv(context, params[f"{prefix}fc1.weight"], params[f"{prefix}fc1.bias"])
        h = F.layer_norm(
            h.movedim(1, -1),
            h.shape[1:2],
            params[f"{prefix}norm.weight"],
            params[f"{prefix}norm.bias"],
            1e-6,
        ).movedim(-1, 1)
        return conv(
            _ACT[spec.activation](h), params[f"{prefix}fc2.weight"], params[f"{prefix}fc2.bias"]
        )

    if spec.fuse_scale:
        x = x * _timm_gate(mlp("mlp_scale."), spec.gate)
    if spec.fuse_add:
        x = x + mlp("mlp_add.")
    return x


def timm_coord(x: Tensor, params: Params, spec: CoordSpec) -> Tensor:
    """CoordAttn: means along W and along H, the W strip transposed and concatenated under the H
    strip, conv1 -> bn1 (eval) -> act, split, conv_h and conv_w, ``x * a_w * a_h`` (+ x)."""
    h, w = x.shape[2], x.shape[3]
    x_h = x.mean(3, keepdim=True)
    x_w = x.mean(2, keepdim=True).transpose(-1, -2)
    y = F.conv2d(torch.cat([x_h, x_w], dim=2), params["conv1.weight"], params.get("conv1.bias"))
    if spec.norm == "batchnorm":
        y = _bn(y, params, "bn1.")
    y_h, y_w = torch.split(_ACT[spec.activation](y), [h, w], dim=2)
    a_h = _timm_gate(F.conv2d(y_h, params["conv_h.weight"], params.get("conv_h.bias")), spec.gate)
    a_w = _timm_gate(
        F.conv2d(y_w.transpose(-1, -2), params["conv_w.weight"], params.get("conv_w.bias")),
        spec.gate,
    )
    out = x * a_w * a_h
    return out + x if spec.skip else out


def timm_scoord(x: Tensor, params: Params, spec: ScoordSpec) -> Tensor:
    """SimpleCoordAttn: means along W and along H, each strip (transposed to (B, L, C)) through the
    shared fc1 and act, fc_h and fc_w, ``x * gate(a_h + a_w)`` (+ x)."""
    act = _ACT[spec.activation]
    w1, b1 = params["fc1.weight"], params.get("fc1.bias")
    x_h = act(F.linear(x.mean(dim=3).transpose(1, 2), w1, b1))
    x_w = act(F.linear(x.mean(dim=2).transpose(1, 2), w1, b1))
    a_h = F.linear(x_h, params["fc_h.weight"], params.get("fc_h.bias")).transpose(1, 2)
    a_w = F.linear(x_w, params["fc_w.weight"], params.get("fc_w.bias")).transpose(1, 2)
    out = x * _timm_gate(a_h.unsqueeze(-1) + a_w.unsqueeze(-2), spec.gate)
    return out + x if spec.skip else out


# --- the zoo's formulations (blocks timm does not have) ------------------------------------------------


def zoo_simam(x: Tensor, params: Params, spec: SimamSpec) -> Tensor:
    """simam_module.forward (ZjjConan/SimAM; External-Attention-pytorch's SimAM): n = h * w - 1,
    the squared deviations from the spatial mean, ``y = d / (4 * (d.sum / n + e_lambda)) + 0.5``,
    ``x * sigmoid(y)``."""
    dims = tuple(range(2, x.ndim))  # the code's [2, 3], for any number of spatial dims
    n = math.prod(x.shape[2:]) - 1
    x_minus_mu_square = (x - x.mean(dim=dims, keepdim=True)).pow(2)
    y = (
        x_minus_mu_square
        / (4 * (x_minus_mu_square.sum(dim=dims, keepdim=True) / n + spec.e_lambda))
        + 0.5
    )
    return x * torch.sigmoid(y)


_ADAPTIVE_AVG_POOL: dict[int, Callable[..., Tensor]] = {
    3: F.adaptive_avg_pool1d,
    4: F.adaptive_avg_pool2d,
    5: F.adaptive_avg_pool3d,
}


def zoo_sge(x: Tensor, params: Params, spec: SgeSpec) -> Tensor:
    """SpatialGroupEnhance.forward (implus/PytorchInsight; External-Attention-pytorch's SGE): the
    groups folded into the batch, ``x * avg_pool(x)`` summed over the group's channels, centred and
    divided by ``t.std(dim=1) + 1e-5`` (unbiased), ``t * weight + bias``, ``x * sigmoid(t)``. The
    code's ``view`` calls are ``reshape`` here, so non-contiguous inputs work too."""
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    g = spec.groups
    x = x.reshape(b * g, -1, *spatial)
    xn = x * _ADAPTIVE_AVG_POOL[x.ndim](x, 1)
    xn = xn.sum(dim=1, keepdim=True)
    t = xn.reshape(b * g, -1)
    t = t - t.mean(dim=1, keepdim=True)
    std = t.std(dim=1, keepdim=True) + 1e-5
    t = t / std
    t = t.reshape(b, g, *spatial)
    t = t * params["weight"] + params["bias"]
    t = t.reshape(b * g, 1, *spatial)
    x = x * torch.sigmoid(t)
    return x.reshape(b, c, *spatial)


def zoo_triplet(x: Tensor, params: Params, spec: TripletSpec) -> Tensor:
    """TripletAttention as the official code computes it: each branch permutes x (contiguous),
    ZPool (cat of max and mean over dim 1), BasicConv (conv, eval-mode BN), ``x * sigmoid``, and
    permutes back; the output is 1/3 of the three branches' sum (1/2 of two with no_spatial)."""
    k = spec.kernel_size

    def attention_gate(t: Tensor, name: str) -> Tensor:
        compressed = torch.cat(
            (torch.max(t, 1)[0].unsqueeze(1), torch.mean(t, 1).unsqueeze(1)), dim=1
        )
        s = F.conv2d(compressed, params[f"{name}.conv.conv.weight"], padding=(k - 1) // 2)
        return t * torch.sigmoid(_bn(s, params, f"{name}.conv.bn."))

    x_perm1 = x.permute(0, 2, 1, 3).contiguous()
    x_out11 = attention_gate(x_perm1, "cw").permute(0, 2, 1, 3).contiguous()
    x_perm2 = x.permute(0, 3, 2, 1).contiguous()
    x_out21 = attention_gate(x_perm2, "hc").permute(0, 3, 2, 1).contiguous()
    if spec.no_spatial:
        return 1 / 2 * (x_out11 + x_out21)
    return 1 / 3 * (attention_gate(x, "hw") + x_out11 + x_out21)


def zoo_bam(x: Tensor, params: Params, spec: BamSpec) -> Tensor:
    """BAM as the authors' code computes it: ChannelGate (pool, Linear, BatchNorm1d, ReLU, Linear,
    expand_as) and SpatialGate (1x1 conv, then each dilated conv, with BatchNorm2d and ReLU after
    each, a final 1x1 conv, expand_as), ``att = 1 + sigmoid(...)``, ``att * x``. Norms in eval
    mode. The branches multiplied as the code does (merge product) or summed as the paper does;
    the pooling global (the code's ``avg_pool2d`` with an H-wide kernel is global for square
    maps only)."""
    gc, gs = "channel_att.gate_c.", "spatial_att.gate_s."

    def linear(t: Tensor, name: str) -> Tensor:
        return F.linear(t, params[f"{name}.weight"], params[f"{name}.bias"])

    def conv(t: Tensor, name: str, dilation: int = 1) -> Tensor:
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        return F.conv2d(t, w, b, padding=dilation * (w.shape[-1] // 2), dilation=dilation)

    y = F.adaptive_avg_pool2d(x, 1).flatten(1)
    y = F.relu(_bn(linear(y, f"{gc}gate_c_fc_0"), params, f"{gc}gate_c_bn_1."))
    channel_att = linear(y, f"{gc}gate_c_fc_final").unsqueeze(2).unsqueeze(3).expand_as(x)
    s = F.relu(_bn(conv(x, f"{gs}gate_s_conv_reduce0"), params, f"{gs}gate_s_bn_reduce0."))
    for i in range(spec.dilated_convs):
        s = conv(s, f"{gs}gate_s_conv_di_{i}", spec.dilation)
        s = F.relu(_bn(s, params, f"{gs}gate_s_bn_di_{i}."))
    spatial_att = conv(s, f"{gs}gate_s_conv_final").expand_as(x)
    if spec.merge == "product":
        att = 1 + torch.sigmoid(channel_att * spatial_att)
    else:
        att = 1 + torch.sigmoid(channel_att + spatial_att)
    return att * x


def _timm_strip_convs(x: Tensor, params: Params, kernel_size: int) -> tuple[Tensor, Tensor]:
    """The strips x.mean(3) and x.mean(2), kept, through conv_h (k x 1) and conv_w (1 x k), both
    depthwise with timm's padding k // 2."""
    pad, c = kernel_size // 2, x.shape[1]
    x_h = F.conv2d(
        x.mean(dim=3, keepdim=True),
        params["conv_h.weight"],
        params.get("conv_h.bias"),
        padding=(pad, 0),
        groups=c,
    )
    x_w = F.conv2d(
        x.mean(dim=2, keepdim=True),
        params["conv_w.weight"],
        params.get("conv_w.bias"),
        padding=(0, pad),
        groups=c,
    )
    return x_h, x_w


def timm_ela(x: Tensor, params: Params, spec: ElaSpec) -> Tensor:
    """EfficientLocalAttn: strip pooling, conv_h / conv_w, norm_h / norm_w (GroupNorm1 or
    F.group_norm with its groups; an eval-mode BatchNorm), act, gate; identity * a_h * a_w, plus
    identity with has_skip."""

    def norm(t: Tensor, axis: str) -> Tensor:
        if spec.norm == "groupnorm":
            w, b = params[f"norm_{axis}.weight"], params[f"norm_{axis}.bias"]
            return F.group_norm(t, spec.norm_groups, w, b, 1e-5)
        if spec.norm == "batchnorm":
            return _bn(t, params, f"norm_{axis}.")
        return t

    def act(t: Tensor) -> Tensor:
        return t if spec.activation == "none" else _ACT[spec.activation](t)

    x_h, x_w = _timm_strip_convs(x, params, spec.kernel_size)
    a_h = _timm_gate(act(norm(x_h, "h")), spec.gate)
    a_w = _timm_gate(act(norm(x_w, "w")), spec.gate)
    out = x * a_h * a_w
    return out + x if spec.skip else out


def timm_strip(x: Tensor, params: Params, spec: StripSpec) -> Tensor:
    """StripAttn: strip pooling, conv_h / conv_w with use_conv (identities without), the gate of
    their broadcast sum; identity * a_hw, plus identity with has_skip."""
    if spec.conv:
        x_h, x_w = _timm_strip_convs(x, params, spec.kernel_size)
    else:
        x_h, x_w = x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True)
    out = x * _timm_gate(x_h + x_w, spec.gate)
    return out + x if spec.skip else out


def timm_nl(
    x: Tensor, params: Params, spec: NlSpec, scores_dtype: torch.dtype | None = None
) -> Tensor:
    """NonLocalAttn: the t, p, g convs, ``bmm(t, p) * scale``, ``F.softmax``, ``bmm`` with g, the z
    conv, an eval-mode BatchNorm, plus the shortcut (timm's 2D view/permute, over any dims).
    ``scores_dtype``: the two bmm and the softmax in that dtype (the embeddings widened to it, the
    result rounded back), as attention kernels accumulate half-precision scores."""
    conv = _CONV[x.ndim]

    def embed(name: str) -> Tensor:
        out = conv(x, params[f"{name}.weight"], params[f"{name}.bias"])
        return out if scores_dtype is None else out.to(scores_dtype)

    t, p, g = embed("t"), embed("p"), embed("g")
    b, c = t.shape[:2]
    t = t.reshape(b, c, -1).permute(0, 2, 1)
    p = p.reshape(b, c, -1)
    g = g.reshape(b, c, -1).permute(0, 2, 1)
    att = torch.bmm(t, p) * (x.shape[1] ** -0.5 if spec.use_scale else 1.0)
    y = torch.bmm(F.softmax(att, dim=2), g).to(x.dtype)
    y = y.permute(0, 2, 1).reshape(b, c, *x.shape[2:])
    y = conv(y, params["z.weight"], params["z.bias"])
    return _bn(y, params, "norm.") + x


def timm_bat(x: Tensor, params: Params, spec: BatSpec, *, stable: bool = False) -> Tensor:
    """BatNonLocalAttn dropout aside (eval): ConvNormAct as F.conv2d, an eval-mode BatchNorm and
    the activation; BilinearAttnTransform as timm computes it: ``adaptive_max_pool2d``, conv_p /
    conv_q, sigmoid, normalised, expanded to every channel, ``resize_mat`` (each entry times an
    identity, rearranged by split and cat into the H x H and W x W matrices), two matmuls.
    ``stable``: the normalised sigmoids as softmax(logsigmoid), the generated module's one change
    (timm's sigmoid / sum is 0 / 0 where a row's sigmoids all underflow)."""
    n, g = spec.block_size, spec.groups

    def cna(t: Tensor, prefix: str) -> Tensor:
        t, bn = F.conv2d(t, params[f"{prefix}conv.weight"]), f"{prefix}bn."
        if spec.norm == "batchnorm":
            t = _bn(t, params, bn)
        elif spec.norm == "groupnorm1":  # GroupNorm1Act
            t = F.group_norm(t, 1, params[f"{bn}weight"], params[f"{bn}bias"], 1e-5)
        else:  # LayerNormAct2d
            t = F.layer_norm(
                t.permute(0, 2, 3, 1), t.shape[1:2], params[f"{bn}weight"], params[f"{bn}bias"]
            ).permute(0, 3, 1, 2)
        return t if spec.activation == "none" else _ACT[spec.activation](t)

    def resize_mat(m: Tensor, t: int) -> Tensor:
        b, c, size, _ = m.shape
        if t <= 1:
            return m
        m = m.view(b * c, -1, 1, 1) * torch.eye(t, t, dtype=m.dtype, device=m.device)
        m = m.view(b * c, size, size, t, t)
        m = torch.cat(torch.split(m, 1, dim=1), dim=3)
        m = torch.cat(torch.split(m, 1, dim=2), dim=4)
        return m.view(b, c, size * t, size * t)

    xl = cna(x, "conv1.")
    b, c, h, w = xl.shape
    out = cna(xl, "ba.conv1.")
    rp = F.adaptive_max_pool2d(out, (n, 1))
    cp = F.adaptive_max_pool2d(out, (1, n))
    p = F.conv2d(rp, params["ba.conv_p.weight"], params["ba.conv_p.bias"]).view(b, g, n, n)
    q = F.conv2d(cp, params["ba.conv_q.weight"], params["ba.conv_q.bias"]).view(b, g, n, n)
    if stable:
        p, q = F.logsigmoid(p).softmax(3), F.logsigmoid(q).softmax(2)
    else:
        p, q = p.sigmoid(), q.sigmoid()
        p = p / p.sum(dim=3, keepdim=True)
        q = q / q.sum(dim=2, keepdim=True)
    p = p.view(b, g, 1, n, n).expand(b, g, c // g, n, n).contiguous().view(b, c, n, n)
    q = q.view(b, g, 1, n, n).expand(b, g, c // g, n, n).contiguous().view(b, c, n, n)
    y = resize_mat(p, h // n).matmul(xl).matmul(resize_mat(q, w // n))
    return cna(cna(y, "ba.conv2."), "conv2.") + x


def timm_sk(x: Tensor, params: Params, spec: SkSpec, stride: int = 1) -> Tensor:
    """SelectiveKernel (``selective_kernel.py``): torch.split across the paths, each path's
    ConvNormAct (F.conv2d with timm's get_padding, an eval-mode BatchNorm, the activation),
    torch.stack; SelectiveKernelAttn on the stack (sum over paths, mean over space, fc_reduce, bn,
    ReLU, fc_select, view, softmax over the paths); x * x_attn summed over the paths."""
    p = len(spec.kernel_size)
    c = x.shape[1]
    out = params["attn.fc_select.weight"].shape[0] // p
    if spec.keep_3x3:
        kernels = [3] * p
        dilations = [spec.dilation * (k - 1) // 2 for k in spec.kernel_size]
    else:
        kernels, dilations = list(spec.kernel_size), [spec.dilation] * p
    parts = torch.split(x, c // p, 1) if spec.split_input else [x] * p
    paths = []
    for i, (part, k, d) in enumerate(zip(parts, kernels, dilations, strict=True)):
        y = F.conv2d(
            part,
            params[f"paths.{i}.conv.weight"],
            stride=stride,
            padding=((stride - 1) + d * (k - 1)) // 2,
            dilation=d,
            groups=min(out, spec.groups),
        )
        paths.append(_ACT[spec.activation](_bn(y, params, f"paths.{i}.bn.")))
    stacked = torch.stack(paths, dim=1)
    a = stacked.sum(1).mean((2, 3), keepdim=True)
    a = F.relu(_bn(F.conv2d(a, params["attn.fc_reduce.weight"]), params, "attn.bn."))
    a = F.conv2d(a, params["attn.fc_select.weight"])
    b, cc, h, w = a.shape
    a = torch.softmax(a.view(b, p, cc // p, h, w), dim=1)
    return torch.sum(stacked * a, dim=1)


def timm_splat(x: Tensor, params: Params, spec: SplatSpec, stride: int = 1) -> Tensor:
    """SplitAttn (``split_attn.py``): conv, bn0, act0; reshape to (B, radix, C, H, W), the sum
    over the radix, mean over space, fc1, bn1, act1, fc2; RadixSoftmax (view (B, groups, radix,
    -1), transpose, softmax over the radix, reshape; sigmoid with radix 1); the weighted sum."""
    r = spec.radix
    act = _ACT[spec.activation]
    pad = spec.kernel_size // 2 if spec.padding is None else spec.padding
    x = F.conv2d(
        x,
        params["conv.weight"],
        params.get("conv.bias"),
        stride,
        pad,
        spec.dilation,
        spec.groups * r,
    )
    if spec.norm == "batchnorm":
        x = _bn(x, params, "bn0.")
    x = act(x)
    b, rc, h, w = x.shape
    if r > 1:
        x = x.reshape((b, r, rc // r, h, w))
        x_gap = x.sum(dim=1)
    else:
        x_gap = x
    x_gap = x_gap.mean((2, 3), keepdim=True)
    x_gap = F.conv2d(x_gap, params["fc1.weight"], params["fc1.bias"], groups=spec.groups)
    if spec.norm == "batchnorm":
        x_gap = _bn(x_gap, params, "bn1.")
    x_attn = F.conv2d(act(x_gap), params["fc2.weight"], params["fc2.bias"], groups=spec.groups)
    if r > 1:
        x_attn = x_attn.view(b, spec.groups, r, -1).transpose(1, 2)
        x_attn = F.softmax(x_attn, dim=1).reshape(b, -1)
    else:
        x_attn = torch.sigmoid(x_attn)
    x_attn = x_attn.view(b, -1, 1, 1)
    if r > 1:
        return (x * x_attn.reshape((b, r, rc // r, 1, 1))).sum(dim=1)
    return x * x_attn


def formulation_anchor(name: str, fn: AnchorFn) -> Anchor:
    """An anchor that is another formulation over the module's own parameters."""

    def make(
        module: nn.Module, case: Case, device: str, gen: torch.Generator
    ) -> tuple[nn.Module, AnchorFn]:
        return module, fn

    return Anchor(name, lambda case: True, make, same_parameters=True)
