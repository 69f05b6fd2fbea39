"""Independent references: each block written the plain way, apart from the templates.

They share no code with ``templates/`` and take another route where one exists: the channel MLP as
``F.linear`` on flattened vectors (not 1x1 convs), max pooling through ``torch.max(...).values``,
hard sigmoid as a clamp, attention as an explicit softmax, multi-head attention as a loop over heads.
Parameters are read by their contract names (``fc1.weight``, ``conv.weight``, ``q_proj.weight`` ...),
so a reference also pins the parameter layout users rely on.

Semantics pinned here: bool ``attn_mask`` True = allowed; bool ``key_padding_mask`` True = padding;
float masks are added; a query row with no allowed key gives 0.

Means are ``torch.mean`` (which accumulates half precision in float32), so a reference computed in
float16 is a fair yardstick for the half-precision rule (``attnforge.compare``): it does not overflow
where the mathematics does not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, MutableMapping, Sequence
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import (
    BamSpec,
    BatSpec,
    BottleneckSpec,
    CbamSpec,
    ChannelOptions,
    CoordSpec,
    EcaSpec,
    ElaSpec,
    EseSpec,
    GcSpec,
    GeSpec,
    HaloSpec,
    LambdaSpec,
    MhaSpec,
    NlSpec,
    ScoordSpec,
    SgeSpec,
    SimamSpec,
    SkSpec,
    SpatialOptions,
    SplatSpec,
    StripSpec,
    TripletSpec,
)

Params = Mapping[str, Tensor]
# Parameters and buffers by name. A reference in training mode writes a norm's updated running
# statistics back into it, as the module updates its buffers.
State = MutableMapping[str, Tensor]


def make_divisible(v: float, divisor: int, min_value: int, round_limit: float = 0.0) -> int:
    """timm's make_divisible (timm/layers/helpers.py), restated."""
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


def hidden_width(
    channels: int,
    reduction: int,
    divisor: int | None,
    min_channels: int = 1,
    round_limit: float = 0.0,
) -> int:
    """floor(C / r) (the papers), or timm's make_divisible(C * (1 / r), d) as timm computes it."""
    if divisor is None:
        return max(min_channels, channels // reduction)
    return make_divisible(
        channels * (1 / reduction), divisor, max(min_channels, divisor), round_limit
    )


def reduced_channels(channels: int, opts: ChannelOptions) -> int:
    """The hidden width of a channel MLP."""
    return hidden_width(channels, opts.reduction, opts.divisor, opts.min_channels, opts.round_limit)


def batch_norm(
    x: Tensor, state: State, prefix: str, training: bool, momentum: float = 0.1, eps: float = 1e-5
) -> Tensor:
    """Batch norm over every dim but the channels (dim 1), written out. In training: the batch's
    mean and biased variance, and the running statistics updated in ``state`` (with the unbiased
    variance, as PyTorch does); in eval: the running statistics."""
    dims = [0, *range(2, x.ndim)]
    shape = (1, -1, *[1] * (x.ndim - 2))
    if training:
        mean = x.mean(dims)
        var = ((x - mean.reshape(shape)) ** 2).mean(dims)
        n = x.numel() // x.shape[1]
        for name, batch in (
            (f"{prefix}running_mean", mean),
            (f"{prefix}running_var", var * n / (n - 1)),
        ):
            state[name] = (1 - momentum) * state[name] + momentum * batch.detach().to(
                state[name].dtype
            )
        state[f"{prefix}num_batches_tracked"] = state[f"{prefix}num_batches_tracked"] + 1
    else:
        mean, var = state[f"{prefix}running_mean"], state[f"{prefix}running_var"]
    out = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return out * state[f"{prefix}weight"].reshape(shape) + state[f"{prefix}bias"].reshape(shape)


def _logistic(s: Tensor) -> Tensor:
    """1 / (1 + exp(-s)) as (1 + tanh(s / 2)) / 2: the same function, and neither it nor its
    gradient overflows in float16 (exp(-s) does for s < -11)."""
    return (1 + torch.tanh(s / 2)) / 2


def activation(s: Tensor, name: str) -> Tensor:
    if name == "relu":
        return torch.where(s > 0, s, torch.zeros_like(s))
    if name == "relu6":
        return torch.clamp(s, 0.0, 6.0)
    if name == "hard_swish":
        return s * torch.clamp(s + 3, 0.0, 6.0) / 6
    if name == "silu":
        return s * _logistic(s)
    if name == "gelu":
        return 0.5 * s * (1 + torch.erf(s / math.sqrt(2.0)))
    raise ValueError(f"unknown activation {name!r}")


def gate(s: Tensor, name: str) -> Tensor:
    if name == "sigmoid":
        return _logistic(s)
    if name == "hard_sigmoid":
        return torch.clamp(s / 6 + 0.5, 0.0, 1.0)
    raise ValueError(f"unknown gate {name!r}")


def channel_attention(
    x: Tensor, params: State, opts: ChannelOptions, prefix: str = "", training: bool = False
) -> Tensor:
    """``x * gate(MLP(pool(x)))``, the MLP as two ``F.linear`` on (B, C) vectors (its norm, when
    there is one, between the first and the activation)."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    pooled = {"avg": flat.mean(-1), "max": torch.max(flat, dim=-1).values}
    w1 = params[f"{prefix}fc1.weight"].reshape(-1, c)
    w2 = params[f"{prefix}fc2.weight"].reshape(c, -1)
    b1, b2 = params.get(f"{prefix}fc1.bias"), params.get(f"{prefix}fc2.bias")

    def mlp(v: Tensor) -> Tensor:
        hidden = F.linear(v, w1, b1)
        if opts.norm == "batchnorm":
            hidden = batch_norm(hidden, params, f"{prefix}bn.", training)
        return F.linear(activation(hidden, opts.activation), w2, b2)

    if len(opts.pooling) == 2 and opts.pooling_merge == "before_mlp":
        s = mlp((pooled["avg"] + pooled["max"]) / 2)
    else:
        s = torch.stack([mlp(pooled[p]) for p in opts.pooling]).sum(0)
    return x * gate(s, opts.gate).reshape(b, c, *([1] * (x.ndim - 2)))


def spatial_attention(
    x: Tensor, params: State, opts: SpatialOptions, prefix: str = "", training: bool = False
) -> Tensor:
    """``x * gate(norm(conv(channel poolings)))`` with 'same' padding; the poolings concatenated,
    or averaged into one map."""
    maps = {
        "mean": x.mean(1, keepdim=True),
        "max": torch.max(x, dim=1, keepdim=True).values,
    }
    if opts.pooling_merge == "average" and len(opts.pooling) == 2:
        s = (maps["mean"] + maps["max"]) / 2
    else:
        s = torch.cat([maps[p] for p in opts.pooling], dim=1)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
    name = f"{prefix}conv.conv." if opts.norm == "batchnorm" else f"{prefix}conv."
    s = conv(s, params[f"{name}weight"], params.get(f"{name}bias"), padding=opts.kernel_size // 2)
    if opts.norm == "batchnorm":
        s = batch_norm(s, params, f"{prefix}conv.bn.", training)
    return x * gate(s, opts.gate)


def cbam(x: Tensor, params: State, spec: CbamSpec, training: bool = False) -> Tensor:
    steps = {
        "channel": lambda t: channel_attention(t, params, spec.channel, "channel.", training),
        "spatial": lambda t: spatial_attention(t, params, spec.spatial, "spatial.", training),
    }
    order = ("channel", "spatial") if spec.order == "channel_first" else ("spatial", "channel")
    for step in order:
        x = steps[step](x)
    return x


def eca_kernel_size(channels: int, spec: EcaSpec) -> int:
    """ECA's kernel size: explicit, or the paper's t = int(|(log2 C + b) / gamma|), made odd
    (and at least ``min_kernel_size``)."""
    if spec.kernel_size is not None:
        return spec.kernel_size
    t = int(abs((math.log(channels, 2) + spec.beta) / spec.gamma))
    return max(t if t % 2 else t + 1, spec.min_kernel_size)


def eca_hidden(channels: int, spec: EcaSpec) -> int:
    return hidden_width(channels, spec.reduction, spec.divisor, 1, spec.round_limit)


def _shifted_conv(v: Tensor, w: Tensor, bias: Tensor | None, circular: bool) -> Tensor:
    """A 1-in, 1-out conv across the last dim of (B, N) as a sum of shifted copies (no conv op)."""
    half = w.numel() // 2
    n = v.shape[-1]
    if circular:
        index = torch.arange(-half, n + half, device=v.device) % n
        padded = v[:, index]
    else:
        padded = F.pad(v, (half, half))
    out = torch.stack([w[j] * padded[:, j : j + n] for j in range(w.numel())]).sum(0)
    return out if bias is None else out + bias


def eca(x: Tensor, params: Params, spec: EcaSpec) -> Tensor:
    """``x * gate(conv1d across channels of the avg-pooled vector)``, every conv written out: the
    k-wide one as a sum of shifts (circular padding by index arithmetic), the mlp's 1x1 as an outer
    product."""
    b, c = x.shape[:2]
    pooled = x.reshape(b, c, -1).mean(-1)
    circular = spec.padding == "circular"
    if spec.mlp:
        w1, b1 = params["conv.weight"].reshape(-1), params["conv.bias"]
        hidden = activation(
            pooled[:, None, :] * w1[None, :, None] + b1[None, :, None], spec.activation
        )
        w2 = params["conv2.weight"]  # (1, rd, k)
        s = (
            sum(
                (
                    _shifted_conv(hidden[:, i], w2[0, i], None, circular)
                    for i in range(hidden.shape[1])
                ),
                torch.zeros_like(pooled),
            )
            + params["conv2.bias"]
        )
    else:
        s = _shifted_conv(
            pooled, params["conv.weight"].reshape(-1), params.get("conv.bias"), circular
        )
    return x * gate(s, spec.gate).reshape(b, c, *([1] * (x.ndim - 2)))


def ese(x: Tensor, params: Params, spec: EseSpec) -> Tensor:
    """``x * gate(W pool(x) + b)``, the 1x1 conv as ``F.linear`` on (B, C) vectors."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    pooled = flat.mean(-1)
    if len(spec.pooling) == 2:
        pooled = (pooled + torch.max(flat, dim=-1).values) / 2
    elif spec.pooling == ("max",):
        pooled = torch.max(flat, dim=-1).values
    s = F.linear(pooled, params["fc.weight"].reshape(c, c), params.get("fc.bias"))
    return x * gate(s, spec.gate).reshape(b, c, *([1] * (x.ndim - 2)))


def _windows(n: int, extent: int) -> Tensor:
    """(out, n): True where input position i lies in output o's window, |i - o * e| <= e - 1 (a
    (2e - 1)-wide window with stride e and e - 1 positions of padding on each side)."""
    out = (n - 1) // extent + 1
    o = torch.arange(out)[:, None] * extent
    return (torch.arange(n)[None, :] - o).abs() <= extent - 1


def ge_window_pool(x: Tensor, extent: int, how: str) -> Tensor:
    """GE's parameter-free gather over each position's neighbourhood, one spatial dim at a time
    (the window is a box, so its mean and max separate): the mean as a matrix of 1 / count
    weights per dim (positions outside the map are not counted), the max over the 2e - 1 strided
    slices of the map padded with -inf (one slice per offset into the window)."""
    for dim in range(2, x.ndim):
        n = x.shape[dim]
        t = x.movedim(dim, -1)
        if how == "avg":
            inside = _windows(n, extent).to(x.device)
            t = t @ (inside.to(x.dtype) / inside.sum(1, keepdim=True)).T
        else:
            out = (n - 1) // extent + 1
            padded = F.pad(t, (extent - 1, extent - 1), value=float("-inf"))
            offsets = [
                padded[..., k : k + extent * (out - 1) + 1 : extent] for k in range(2 * extent - 1)
            ]
            t = torch.stack(offsets).amax(0)
        x = t.movedim(-1, dim)
    return x


def nearest_resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the spatial dims: output i takes input floor(i * n_in / n_out)."""
    for dim, n in zip(range(2, x.ndim), size, strict=True):
        index = torch.arange(n, device=x.device) * x.shape[dim] // n
        x = x.index_select(dim, index)
    return x


def depthwise_conv(x: Tensor, w: Tensor, stride: int, padding: Sequence[int]) -> Tensor:
    """A depthwise conv (one k-sized kernel per channel, no bias) as a sum over the kernel's
    offsets of strided slices of the zero-padded input (no conv op)."""
    c, kernel = x.shape[1], w.shape[2:]
    padded = F.pad(x, [p for pad in reversed(padding) for p in (pad, pad)])
    out = [(n - k) // stride + 1 for n, k in zip(padded.shape[2:], kernel, strict=True)]
    total = torch.zeros((*x.shape[:2], *out), dtype=x.dtype, device=x.device)
    taps = w[:, 0].movedim(0, -1)  # (*kernel, C)
    for offset in itertools.product(*(range(k) for k in kernel)):
        steps: tuple[EllipsisType | slice, ...] = (
            ...,
            *(slice(o, o + stride * (m - 1) + 1, stride) for o, m in zip(offset, out, strict=True)),
        )
        tap = taps[offset]  # (C,): each channel's weight at this offset
        total = total + padded[steps] * tap.reshape(1, c, *[1] * len(out))
    return total


def gather_excite(x: Tensor, params: State, spec: GeSpec, training: bool = False) -> Tensor:
    """Gather-excite from the paper: gather (GE-theta-minus: a mean, or max, over each position's
    (2e - 1)-wide neighbourhood with stride e, or over the whole map; GE-theta: depthwise convs,
    with batch norm and the activation), excite (the MLP as ``F.linear`` on each gathered
    position's C-vector), nearest-neighbour resize to the input's size, ``x * gate``."""
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    if spec.extra_params:
        g = x
        if spec.extent == 0:
            assert spec.feat_size is not None
            layers = [(1, [(k - 1) // 2 for k in spec.feat_size])]
        else:
            layers = [(2, [1] * spec.dims)] * (spec.extent.bit_length() - 1)
        for i, (stride, padding) in enumerate(layers, 1):
            if i > 1:
                g = activation(g, spec.activation)
            g = depthwise_conv(g, params[f"gather.conv{i}.weight"], stride, padding)
            if spec.norm == "batchnorm":
                g = batch_norm(g, params, f"gather.norm{i}.", training)
    elif spec.extent == 0:
        flat = x.reshape(b, c, -1)
        pooled = {"avg": flat.mean(-1), "max": torch.max(flat, dim=-1).values}
        g = torch.stack([pooled[p] for p in spec.pooling]).mean(0)
        g = g.reshape(b, c, *[1] * spec.dims)
    else:
        g = torch.stack([ge_window_pool(x, spec.extent, p) for p in spec.pooling]).mean(0)
    if spec.mlp:
        rows = g.movedim(1, -1)  # (B, ..., C): each gathered position's vector
        hidden = F.linear(rows, params["mlp.fc1.weight"].flatten(1), params["mlp.fc1.bias"])
        rows = F.linear(
            activation(hidden, spec.activation),
            params["mlp.fc2.weight"].flatten(1),
            params["mlp.fc2.bias"],
        )
        g = rows.movedim(-1, 1)
    return x * gate(nearest_resize(g, spatial), spec.gate)


def _layer_norm(t: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Layer norm over the last dim, written out: (t - mean) / sqrt(biased variance + eps)."""
    centred = t - t.sum(-1, keepdim=True) / t.shape[-1]
    var = (centred * centred).sum(-1, keepdim=True) / t.shape[-1]
    return centred / torch.sqrt(var + eps) * weight + bias


def global_context(x: Tensor, params: Params, spec: GcSpec) -> Tensor:
    """The GC block from the paper: context modelling (softmax(W_k x_j) over positions j as an
    explicit exp / sum, the weighted sum by einsum; or the mean), each transform as ``F.linear``
    on (B, C) vectors with its layer norm written out, fusion by ``x * gate(.)`` and/or ``x + .``."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)  # (B, C, N)
    if spec.context == "attention":
        logits = torch.einsum("c,bcn->bn", params["conv_attn.weight"].reshape(c), flat)
        logits = logits + params["conv_attn.bias"]
        e = torch.exp(logits - torch.max(logits, dim=-1, keepdim=True).values)
        context = torch.einsum("bcn,bn->bc", flat, e / e.sum(-1, keepdim=True))
    else:
        context = flat.mean(-1)

    def transform(prefix: str) -> Tensor:
        hidden = F.linear(
            context, params[f"{prefix}fc1.weight"].flatten(1), params[f"{prefix}fc1.bias"]
        )
        hidden = _layer_norm(
            hidden, params[f"{prefix}norm.weight"], params[f"{prefix}norm.bias"], 1e-6
        )
        out = F.linear(
            activation(hidden, spec.activation),
            params[f"{prefix}fc2.weight"].flatten(1),
            params[f"{prefix}fc2.bias"],
        )
        return out.reshape(b, c, *[1] * (x.ndim - 2))

    out = x
    if spec.fuse_scale:
        out = out * gate(transform("mlp_scale."), spec.gate)
    if spec.fuse_add:
        out = out + transform("mlp_add.")
    return out


def simam(x: Tensor, spec: SimamSpec) -> Tensor:
    """SimAM from the paper's minimal energy, e* = 4 (s^2 + lambda) / ((t - mu)^2 + 2 s^2 + 2 lambda)
    per neuron t, then ``x * sigmoid(1 / e*)``; mu and s^2 the channel's mean and variance over its
    M positions, the variance by ``torch.var`` with M - 1 as the paper's code divides."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    mu = flat.mean(-1, keepdim=True)
    var = torch.var(flat, dim=-1, correction=1, keepdim=True)
    lam = spec.e_lambda
    energy = 4 * (var + lam) / ((flat - mu) ** 2 + 2 * var + 2 * lam)
    return x * gate(1 / energy, "sigmoid").reshape(x.shape)


def sge(x: Tensor, params: Params, spec: SgeSpec) -> Tensor:
    """SGE as the paper writes it, per group of C / G channels and its m positions x_i: the mean
    vector g = (1 / m) sum_i x_i, similarities c_i = g . x_i (an einsum), normalised as
    (c_i - mean) / (std + 1e-5) with the std by the unbiased sum of squares (the paper's code:
    torch.std), a_i = weight * that + bias, and ``x_i * sigmoid(a_i)``."""
    b, c = x.shape[:2]
    groups = spec.groups
    flat = x.reshape(b, groups, c // groups, -1)  # (B, G, C / G, m)
    m = flat.shape[-1]
    mean_vector = flat.sum(-1) / m
    sim = torch.einsum("bgkm,bgk->bgm", flat, mean_vector)
    centred = sim - sim.sum(-1, keepdim=True) / m
    std = torch.sqrt((centred * centred).sum(-1, keepdim=True) / (m - 1))
    weight = params["weight"].reshape(1, groups, 1)
    bias = params["bias"].reshape(1, groups, 1)
    a = centred / (std + 1e-5) * weight + bias
    return (flat * gate(a, "sigmoid")[:, :, None, :]).reshape(x.shape)


def depthwise_strip_conv(z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A depthwise conv along the last dim of a (B, C, L) strip with zero padding k // 2 on each
    side: sliding windows (``unfold``) contracted with each channel's kernel (``einsum``), no conv
    op. ``weight`` is the conv's (C, 1, k, 1) or (C, 1, 1, k): one k-long kernel per channel."""
    kernels = weight.reshape(weight.shape[0], -1)
    k = kernels.shape[-1]
    windows = F.pad(z, (k // 2, k // 2)).unfold(-1, k, 1)  # (B, C, L, k)
    out = torch.einsum("bclk,ck->bcl", windows, kernels)
    return out if bias is None else out + bias[:, None]


def group_norm(z: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float = 1e-5) -> Tensor:
    """Group norm of a (B, C, ...) tensor, written out: each sample's channels split into
    ``groups`` contiguous groups, each normalised by its own mean and biased variance over its
    channels and positions, then a per-channel affine."""
    grouped = z.reshape(z.shape[0], groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
    out = ((grouped - mean) / torch.sqrt(var + eps)).reshape(z.shape)
    shape = (1, -1, *[1] * (z.ndim - 2))
    return out * weight.reshape(shape) + bias.reshape(shape)


def ela(x: Tensor, params: State, spec: ElaSpec, training: bool = False) -> Tensor:
    """The paper's ELA (Xu and Wan, 2024): z_h = x averaged along W, a (B, C, H)
    strip, and z_w = x averaged along H, (B, C, W); y = gate(act(norm(F(z)))) for each, F a
    depthwise 1D conv; the output x[b, c, h, w] * y_h[b, c, h] * y_w[b, c, w]. Per axis its own
    conv and norm, as timm has them (conv_h, norm_h, conv_w, norm_w)."""
    strips = {"h": x.mean(3), "w": x.mean(2)}
    gates = {}
    for axis, z in strips.items():
        s = depthwise_strip_conv(z, params[f"conv_{axis}.weight"], params.get(f"conv_{axis}.bias"))
        if spec.norm == "groupnorm":
            s = group_norm(
                s, params[f"norm_{axis}.weight"], params[f"norm_{axis}.bias"], spec.norm_groups
            )
        elif spec.norm == "batchnorm":
            s = batch_norm(s, params, f"norm_{axis}.", training)
        if spec.activation != "none":
            s = activation(s, spec.activation)
        gates[axis] = gate(s, spec.gate)
    out = torch.einsum("bchw,bch,bcw->bchw", x, gates["h"], gates["w"])
    return out + x if spec.skip else out


def strip(x: Tensor, params: Params, spec: StripSpec) -> Tensor:
    """Strip attention: the (B, C, H) strip of x averaged along W and the (B, C, W) strip averaged
    along H, each through its depthwise 1D conv (when there are convs), combined as an outer sum
    into a (B, C, H, W) map s[b, c, h, w] = s_h[b, c, h] + s_w[b, c, w]; x * gate(s)."""
    s_h, s_w = x.mean(3), x.mean(2)
    if spec.conv:
        s_h = depthwise_strip_conv(s_h, params["conv_h.weight"], params.get("conv_h.bias"))
        s_w = depthwise_strip_conv(s_w, params["conv_w.weight"], params.get("conv_w.bias"))
    s = s_h[:, :, :, None].expand(x.shape) + s_w[:, :, None, :].expand(x.shape)
    out = x * gate(s, spec.gate)
    return out + x if spec.skip else out


def coord_width(
    channels: int, reduction: int, divisor: int | None, min_channels: int, se_factor: float
) -> int:
    """The bottleneck width of coordinate attention: timm's make_divisible(C * (1 / r) * se_factor,
    d) with round_limit 0, in timm's float arithmetic; without a divisor, the paper's code's
    max(min_channels, C // r)."""
    if divisor is None:
        return max(min_channels, channels // reduction)
    v = channels * (1 / reduction) * se_factor
    return make_divisible(v, divisor, max(min_channels, divisor))


def coord_hidden(channels: int, spec: CoordSpec | ScoordSpec) -> int:
    return coord_width(channels, spec.reduction, spec.divisor, spec.min_channels, spec.se_factor)


def _strip_map(f: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 conv or linear layer (weight (out, in, ...)) at every position of (B, in, L) strips,
    as an einsum -> (B, out, L)."""
    s = torch.einsum("bil,oi->bol", f, weight.reshape(weight.shape[0], -1))
    return s if bias is None else s + bias[:, None]


def coordinate_attention(
    x: Tensor, params: State, spec: CoordSpec, training: bool = False
) -> Tensor:
    """Coordinate attention as the paper writes it (Hou et al., 2021, eqs. 4-9, Fig. 3(c)):

    z^h_c(h) = 1/W sum_i x_c(h, i) and z^w_c(w) = 1/H sum_j x_c(j, w)     (4), (5)
    f = act(BN(F1([z^h, z^w])))      F1 shared by both strips, BN over both at once     (6)
    g^h = gate(F_h(f^h)), g^w = gate(F_w(f^w))     f split back into its H and W parts     (7), (8)
    y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j)     (9); with ``skip``, y + x

    F1 is applied to each strip separately as an einsum (the template concatenates first, then
    convolves); the strips are joined only for the batch norm, whose statistics cover B x (H + W)
    positions; the output is one three-operand einsum.
    """
    h = x.shape[2]
    w1, b1 = params["conv1.weight"], params.get("conv1.bias")
    rows, columns = _strip_map(x.mean(3), w1, b1), _strip_map(x.mean(2), w1, b1)
    f = torch.cat([rows, columns], dim=2)  # (B, C', H + W)
    if spec.norm == "batchnorm":
        f = batch_norm(f, params, "bn1.", training)
    f = activation(f, spec.activation)
    s_h = _strip_map(f[..., :h], params["conv_h.weight"], params.get("conv_h.bias"))
    s_w = _strip_map(f[..., h:], params["conv_w.weight"], params.get("conv_w.bias"))
    g_h, g_w = gate(s_h, spec.gate), gate(s_w, spec.gate)
    y = torch.einsum("bcij,bci,bcj->bcij", x, g_h, g_w)
    return y + x if spec.skip else y


def simple_coordinate_attention(x: Tensor, params: Params, spec: ScoordSpec) -> Tensor:
    """timm's SimpleCoordAttn (no paper; from its docstring: linear layers, no norm, additive
    recombination before the gate):

    z^h_c(i) = 1/W sum_j x_c(i, j), z^w_c(j) = 1/H sum_i x_c(i, j)
    s^h = W_h act(W_1 z^h + b_1) + b_h, s^w = W_w act(W_1 z^w + b_1) + b_w   (W_1 shared)
    y_c(i, j) = x_c(i, j) * gate(s^h_c(i) + s^w_c(j)); with ``skip``, y + x

    The linear layers as einsums over (B, C, L) strips; the sum as an outer broadcast.
    """
    w1, b1 = params["fc1.weight"], params.get("fc1.bias")

    def scores(z: Tensor, head: str) -> Tensor:
        hidden = activation(_strip_map(z, w1, b1), spec.activation)
        return _strip_map(hidden, params[f"{head}.weight"], params.get(f"{head}.bias"))

    s = scores(x.mean(3), "fc_h")[:, :, :, None] + scores(x.mean(2), "fc_w")[:, :, None, :]
    y = x * gate(s, spec.gate)
    return y + x if spec.skip else y


def _conv_taps(x: Tensor, w: Tensor, bias: Tensor | None, dilation: int = 1) -> Tensor:
    """A 'same' 2D convolution (odd square kernel, stride 1) as a sum over the kernel's taps: each
    tap mixes the channels of the zero-padded input, shifted by the tap's offset, with an einsum."""
    k = w.shape[-1]
    pad = dilation * (k // 2)
    h, wd = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    taps = [
        torch.einsum(
            "bchw,oc->bohw",
            padded[:, :, i * dilation : i * dilation + h, j * dilation : j * dilation + wd],
            w[:, :, i, j],
        )
        for i in range(k)
        for j in range(k)
    ]
    out = torch.stack(taps).sum(0)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


# Triplet attention's branches (Misra et al., 2021, Fig. 2 and Sec. 3.2): each pools x over one of
# C, H, W and attends over the plane of the other two, in the orientation of the paper's rotations
# (rows, columns as einsum letters): cw rotates H out, (C, W); hc rotates W out, (H, C); hw is
# plain spatial attention, (H, W).
TRIPLET_PLANES = {"cw": ("h", "cw"), "hc": ("w", "hc"), "hw": ("c", "hw")}
TRIPLET_MOMENTUM = 0.01  # the official code's BatchNorm2d(momentum=0.01); the paper does not say


def triplet_branches(spec: TripletSpec) -> tuple[str, ...]:
    return ("cw", "hc") if spec.no_spatial else ("cw", "hc", "hw")


def triplet(x: Tensor, params: State, spec: TripletSpec, training: bool = False) -> Tensor:
    """The average over the branches of ``x * sigmoid(BN(conv(Z-pool(x))))``: Z-pool over the
    branch's dim (max, then mean), the plane put in the paper's orientation by an einsum, the conv
    as a sum of taps, the gate applied to ``x`` by an einsum. BN with running statistics (momentum
    0.01, as the official code)."""
    gated = []
    for name in triplet_branches(spec):
        pooled_dim, plane = TRIPLET_PLANES[name]
        dim = "bchw".index(pooled_dim)
        rest = "bchw".replace(pooled_dim, "")[1:]  # the two dims left, in x's order
        zpool = torch.stack([torch.max(x, dim=dim).values, x.mean(dim)], dim=1)
        maps = torch.einsum(f"bz{rest}->bz{plane}", zpool)
        s = _conv_taps(maps, params[f"{name}.conv.conv.weight"], None)
        s = batch_norm(s, params, f"{name}.conv.bn.", training, momentum=TRIPLET_MOMENTUM)
        gated.append(torch.einsum(f"bchw,b{plane}->bchw", x, _logistic(s[:, 0])))
    return torch.stack(gated).mean(0)


def bam(x: Tensor, params: State, spec: BamSpec, training: bool = False) -> Tensor:
    """The paper's ``F' = F + F * sigmoid(M_c(F) + M_s(F))`` (``M_c * M_s`` with merge product),
    written out: M_c from the average-pooled vector through two einsum layers with a batchnorm and
    a ReLU between; M_s through 1x1 convs as einsums and the dilated 3x3 convs as sums of taps, each
    but the last conv followed by a batchnorm and a ReLU. The batchnorms sit where the authors' code
    puts them (the paper's equations put one at the end of each branch)."""
    gc, gs = "channel_att.gate_c.", "spatial_att.gate_s."
    b, ch = x.shape[:2]
    pooled = x.reshape(b, ch, -1).mean(-1)
    hidden = torch.einsum("bc,rc->br", pooled, params[f"{gc}gate_c_fc_0.weight"])
    hidden = hidden + params[f"{gc}gate_c_fc_0.bias"]
    hidden = activation(batch_norm(hidden, params, f"{gc}gate_c_bn_1.", training), "relu")
    m_c = torch.einsum("br,cr->bc", hidden, params[f"{gc}gate_c_fc_final.weight"])
    m_c = m_c + params[f"{gc}gate_c_fc_final.bias"]

    def norm_relu(t: Tensor, bn: str) -> Tensor:
        return activation(batch_norm(t, params, f"{gs}{bn}.", training), "relu")

    w = params[f"{gs}gate_s_conv_reduce0.weight"][:, :, 0, 0]
    t = torch.einsum("bchw,rc->brhw", x, w) + params[f"{gs}gate_s_conv_reduce0.bias"][:, None, None]
    t = norm_relu(t, "gate_s_bn_reduce0")
    for i in range(spec.dilated_convs):
        conv = f"{gs}gate_s_conv_di_{i}."
        t = _conv_taps(t, params[f"{conv}weight"], params[f"{conv}bias"], spec.dilation)
        t = norm_relu(t, f"gate_s_bn_di_{i}")
    w_final = params[f"{gs}gate_s_conv_final.weight"][0, :, 0, 0]
    m_s = torch.einsum("brhw,r->bhw", t, w_final) + params[f"{gs}gate_s_conv_final.bias"]
    if spec.merge == "sum":
        logits = m_c[:, :, None, None] + m_s[:, None]
    else:
        logits = m_c[:, :, None, None] * m_s[:, None]
    return x + x * gate(logits, "sigmoid")


def _softmax(s: Tensor, dim: int) -> Tensor:
    """exp(s - max) / sum, written out."""
    e = torch.exp(s - torch.max(s, dim=dim, keepdim=True).values)
    return e / e.sum(dim, keepdim=True)


def non_local(x: Tensor, params: State, spec: NlSpec, training: bool = False) -> Tensor:
    """The paper's embedded non-local block (Wang et al., 2018, eqs. 1-3 and 6), as timm scales it:
    with the positions flattened to N, theta = t(x), phi = p(x), g = g(x) (1x1 convs as einsums,
    (B, C', N)), f = softmax_j(theta_i . phi_j * s) written out (s = C ** -0.5 with use_scale, C the
    input channels), y_i = sum_j f_ij g_j, and z = BN(W_z y) + x (timm's zero-initialised BN)."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)

    def embed(name: str) -> Tensor:
        w = params[f"{name}.weight"].reshape(-1, c)
        return torch.einsum("bcn,rc->brn", flat, w) + params[f"{name}.bias"][:, None]

    theta, phi, g = embed("t"), embed("p"), embed("g")
    scores = torch.einsum("bri,brj->bij", theta, phi) * (c**-0.5 if spec.use_scale else 1.0)
    y = torch.einsum("bij,brj->bri", _softmax(scores, -1), g)
    w_z = params["z.weight"].reshape(c, -1)
    z = torch.einsum("brn,cr->bcn", y, w_z) + params["z.bias"][:, None]
    return x + batch_norm(z.reshape(x.shape), params, "norm.", training)


def _conv_norm_act(x: Tensor, params: State, prefix: str, spec: BatSpec, training: bool) -> Tensor:
    """timm's ConvNormAct with a 1x1 conv: an einsum without bias, the norm (batch norm, one-group
    group norm, or a layer norm over the channels at each position), the activation."""
    w = params[f"{prefix}conv.weight"][:, :, 0, 0]
    out = torch.einsum("bchw,oc->bohw", x, w)
    bn = f"{prefix}bn."
    if spec.norm == "batchnorm":
        out = batch_norm(out, params, bn, training)
    elif spec.norm == "groupnorm1":
        out = group_norm(out, params[f"{bn}weight"], params[f"{bn}bias"], 1)
    else:
        out = torch.einsum(
            "bhwc->bchw",
            _layer_norm(
                torch.einsum("bchw->bhwc", out), params[f"{bn}weight"], params[f"{bn}bias"], 1e-5
            ),
        )
    return out if spec.activation == "none" else activation(out, spec.activation)


def _sigmoid_shares(s: Tensor, dim: int) -> Tensor:
    """sigmoid(s) / sigmoid(s).sum(dim), in log space: log sigmoid(s) = min(s, 0) -
    log1p(exp(-|s|)), then exp(l - max l) / sum (finite where every sigmoid underflows)."""
    log_sigmoid = torch.clamp(s, max=0.0) - torch.log1p(torch.exp(-torch.abs(s)))
    return _softmax(log_sigmoid, dim)


def bat(x: Tensor, params: State, spec: BatSpec, training: bool = False) -> Tensor:
    """BAT (Chi et al., 2020, eqs. 2-5) as timm builds it, dropout aside: x + conv2(T(conv1(x))),
    with T(z) = conv2'(P_g z Q_g) per channel of group g. P_g and Q_g are n x n, from the maxima of
    conv1'(z) (G maps) over n bands of rows / columns, each through a full linear map (conv_p,
    conv_q as einsums) to n * n logits per group, sigmoid, rows of P (columns of Q) normalised to
    sum to one, and applied as the explicit Kronecker products kron(P, I) (H x H) and kron(Q, I)
    (W x W)."""
    n, g = spec.block_size, spec.groups
    z = _conv_norm_act(x, params, "conv1.", spec, training)
    b, c, h, w = z.shape
    out = _conv_norm_act(z, params, "ba.conv1.", spec, training)  # (B, G, H, W)
    rows = torch.max(out.reshape(b, g, n, -1), dim=-1).values  # n bands of H rows
    cols = torch.max(
        out.reshape(b, g, h, n, w // n).transpose(2, 3).reshape(b, g, n, -1), dim=-1
    ).values  # n bands of W columns
    logits = {}
    for name, pooled, taps in (
        ("p", rows, (slice(None), slice(None), slice(None), 0)),
        ("q", cols, (slice(None), slice(None), 0, slice(None))),
    ):
        weight = params[f"ba.conv_{name}.weight"][taps]  # (n * n * G, G, n)
        logits[name] = torch.einsum("bgj,ogj->bo", pooled, weight) + params[f"ba.conv_{name}.bias"]
    p = _sigmoid_shares(logits["p"].reshape(b, g, n, n), -1)
    q = _sigmoid_shares(logits["q"].reshape(b, g, n, n), -2)
    big_p = torch.kron(p, torch.eye(h // n, dtype=p.dtype, device=p.device))  # (B, G, H, H)
    big_q = torch.kron(q, torch.eye(w // n, dtype=q.dtype, device=q.device))  # (B, G, W, W)
    grouped = z.reshape(b, g, c // g, h, w)
    y = (big_p[:, :, None] @ grouped @ big_q[:, :, None]).reshape(b, c, h, w)
    y = _conv_norm_act(y, params, "ba.conv2.", spec, training)
    return x + _conv_norm_act(y, params, "conv2.", spec, training)


def conv2d_taps(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """A 2D convolution written out (no conv op): the zero-padded input split into its channel
    groups; for each tap (i, j) of the kernel, the input's strided slice at that tap's dilated
    offset, mixed across each group's channels by an einsum; summed over the taps."""
    o, per_group, kh, kw = w.shape
    padded = F.pad(x, (padding,) * 4)
    size = [
        (n - dilation * (k - 1) - 1) // stride + 1
        for n, k in zip(padded.shape[2:], (kh, kw), strict=True)
    ]
    grouped = padded.reshape(
        x.shape[0], groups, per_group, *padded.shape[2:]
    )  # (B, G, C/G, H', W')
    kernels = w.reshape(groups, o // groups, *w.shape[1:])  # (G, O/G, C/G, kh, kw)
    total = torch.zeros((x.shape[0], groups, o // groups, *size), dtype=x.dtype, device=x.device)
    for i, j in itertools.product(range(kh), range(kw)):
        rows = slice(i * dilation, i * dilation + stride * (size[0] - 1) + 1, stride)
        cols = slice(j * dilation, j * dilation + stride * (size[1] - 1) + 1, stride)
        total = total + torch.einsum(
            "bgchw,goc->bgohw", grouped[:, :, :, rows, cols], kernels[..., i, j]
        )
    out = total.flatten(1, 2)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def selective_kernel(
    x: Tensor, params: State, spec: SkSpec, training: bool = False, stride: int = 1
) -> Tensor:
    """Selective kernel convolution (Li et al., 2019) as timm builds it: path i convolves its slice
    of the channels (all of them without split_input) with a k x k kernel (3 x 3 at dilation
    (k - 1) // 2 with keep_3x3, times the module's dilation), padded ((stride - 1) + d (k - 1)) // 2,
    then a batchnorm and the activation; U = the paths' sum, s = U averaged over space, z =
    ReLU(BN(W_reduce s)), one logit per path and channel W_select z, softmax over the paths; the
    output sum_i a_i * path_i. Convs as sums of taps, the 1x1 layers as einsums."""
    p = len(spec.kernel_size)
    c = x.shape[1]
    out = params["attn.fc_select.weight"].shape[0] // p
    per_path = c // p if spec.split_input else c
    groups = min(out, spec.groups)
    feats = []
    for i, k in enumerate(spec.kernel_size):
        kernel, dilation = (
            (3, spec.dilation * (k - 1) // 2) if spec.keep_3x3 else (k, spec.dilation)
        )
        part = x[:, i * per_path : (i + 1) * per_path] if spec.split_input else x
        pad = ((stride - 1) + dilation * (kernel - 1)) // 2
        y = conv2d_taps(part, params[f"paths.{i}.conv.weight"], None, stride, pad, dilation, groups)
        y = batch_norm(y, params, f"paths.{i}.bn.", training)
        feats.append(activation(y, spec.activation))
    stacked = torch.stack(feats, 1)  # (B, P, C_out, H', W')
    pooled = stacked.sum(1).mean((2, 3))  # (B, C_out)
    z = torch.einsum("bc,rc->br", pooled, params["attn.fc_reduce.weight"][:, :, 0, 0])
    z = activation(batch_norm(z, params, "attn.bn.", training), "relu")
    logits = torch.einsum("br,qr->bq", z, params["attn.fc_select.weight"][:, :, 0, 0])
    weights = _softmax(logits.reshape(-1, p, out), 1)
    return torch.einsum("bpchw,bpc->bchw", stacked, weights)


def _grouped_fc(v: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """A grouped 1x1 conv on pooled vectors (B, C_in) -> (B, C_out), as an einsum per group."""
    w = weight[:, :, 0, 0]
    out = torch.einsum(
        "bgi,goi->bgo",
        v.reshape(v.shape[0], groups, -1),
        w.reshape(groups, -1, w.shape[1]),
    )
    return out.reshape(v.shape[0], -1) + bias


def split_attention(
    x: Tensor, params: State, spec: SplatSpec, training: bool = False, stride: int = 1
) -> Tensor:
    """Split attention (Zhang et al., 2020, ResNeSt) as timm's SplitAttn: one conv (groups *
    radix groups) to radix splits U_1 .. U_R of out_channels each, a norm and the activation;
    s = (sum_r U_r) averaged over space; z = act(norm(fc1 s)), logits fc2 z, laid out per group
    as (radix, out_channels / groups); a_r = softmax over the radix within each group (sigmoid
    with radix 1); the output sum_r a_r * U_r. The conv as a sum of taps, fc1 and fc2 as einsums
    per group, the splits as a Python list."""
    r, g = spec.radix, spec.groups
    weight = params["conv.weight"]
    out = weight.shape[0] // r
    pad = spec.kernel_size // 2 if spec.padding is None else spec.padding
    y = conv2d_taps(x, weight, params.get("conv.bias"), stride, pad, spec.dilation, g * r)
    if spec.norm == "batchnorm":
        y = batch_norm(y, params, "bn0.", training)
    y = activation(y, spec.activation)
    splits = [y[:, i * out : (i + 1) * out] for i in range(r)]
    pooled = torch.stack(splits).sum(0).mean((2, 3))
    z = _grouped_fc(pooled, params["fc1.weight"], params["fc1.bias"], g)
    if spec.norm == "batchnorm":
        z = batch_norm(z, params, "bn1.", training)
    logits = _grouped_fc(
        activation(z, spec.activation), params["fc2.weight"], params["fc2.bias"], g
    )
    b = x.shape[0]
    if r == 1:
        weights = [gate(logits, "sigmoid")]
    else:
        per_group = _softmax(logits.reshape(b, g, r, out // g), 2)
        weights = [per_group[:, :, i].reshape(b, out) for i in range(r)]
    return sum(
        (u * a[:, :, None, None] for u, a in zip(splits, weights, strict=True)),
        torch.zeros_like(splits[0]),
    )


def causal_allowed(
    lq: int, lk: int, alignment: str, device: torch.device | str | None = None
) -> Tensor:
    """(Lq, Lk), True where query i may see key j: j <= i (top_left) or j <= i + Lk - Lq (bottom_right)."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq if alignment == "bottom_right" else 0)


def window_allowed(
    lq: int,
    lk: int,
    window: int,
    causal: bool,
    alignment: str = "top_left",
    device: torch.device | str | None = None,
) -> Tensor:
    """(Lq, Lk), True where key j lies in query i's sliding window, decided pair by pair: causal,
    the ``window`` keys up to and including the query's own (i aligned as ``causal_allowed``);
    otherwise the keys less than ``window`` away on either side."""
    shift = lk - lq if causal and alignment == "bottom_right" else 0
    rows = []
    for i in range(lq):
        me = i + shift
        if causal:
            rows.append([me - window < j <= me for j in range(lk)])
        else:
            rows.append([abs(me - j) < window for j in range(lk)])
    return torch.tensor(rows, dtype=torch.bool, device=device).reshape(lq, lk)


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's slopes in closed form: n = 2^floor(log2 heads) slopes 2^(-8 k / n), k = 1..n, then
    the odd-numbered slopes of 2n heads, 2^(-4 (2k - 1) / n), for the heads past n (the paper's
    recursive get_slopes, unrolled)."""
    n = 2 ** math.floor(math.log2(heads))
    first = [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    extra = [2.0 ** (-4.0 * (2 * k - 1) / n) for k in range(1, heads - n + 1)]
    return first + extra


def rotary(x: Tensor, positions: Tensor, layout: str, base: float, fraction: float) -> Tensor:
    """RoPE as a rotation matrix per position: ``x`` (B, L, D) times a (B or 1, L, D, D) matrix
    that turns each feature pair (m, m + R/2) (half) or (2m, 2m + 1) (interleaved) of the first
    R = round(D * fraction) features by position * base^(-2m / R), leaving the rest alone."""
    d = x.shape[-1]
    r = round(d * fraction)
    pairs = [(m, m + r // 2) if layout == "half" else (2 * m, 2 * m + 1) for m in range(r // 2)]
    angles = positions.to(torch.float64)[..., None] * torch.tensor(
        [base ** (-2.0 * m / r) for m in range(r // 2)], dtype=torch.float64, device=x.device
    )  # (B or 1, L, R/2)
    cos, sin = angles.cos(), angles.sin()
    turn = (
        torch.eye(d, dtype=torch.float64, device=x.device).expand(*angles.shape[:2], d, d).clone()
    )
    for m, (a, b) in enumerate(pairs):
        turn[..., a, a], turn[..., a, b] = cos[..., m], -sin[..., m]
        turn[..., b, a], turn[..., b, b] = sin[..., m], cos[..., m]
    return (turn.to(x.dtype) @ x[..., None])[..., 0]


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    masks: Sequence[Tensor] = (),
    *,
    scale: float | None = None,
    causal: bool = False,
    alignment: str = "top_left",
    return_weights: bool = False,
    window: int | None = None,
    softcap: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``softmax(q k^T * scale + masks) v``; bool masks: True = allowed; rows with no allowed key: 0.

    ``softcap``: scores -> softcap * tanh(scores / softcap) before the masks are added (Gemma 2).
    ``window``: only the keys in each query's sliding window (``window_allowed``).
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    lq, lk = scores.shape[-2:]
    allowed = torch.ones(scores.shape, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed & causal_allowed(lq, lk, alignment, q.device)
    if window is not None:
        allowed = allowed & window_allowed(lq, lk, window, causal, alignment, q.device)
    for mask in masks:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    live = (scores != float("-inf")).any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~live, 0.0), dim=-1) * live
    out = torch.matmul(weights, v)
    return (out, weights) if return_weights else out


def default_positions(
    spec: MhaSpec,
    lq: int,
    lk: int,
    positions: Tensor | None = None,
    key_positions: Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(B or 1, Lq) and (B or 1, Lk) positions: the given ones, else queries from 0 (Lk - Lq when
    causal and bottom-right aligned) and keys from 0; key_positions default to positions when
    those are given and Lk == Lq (self-attention)."""
    start = lk - lq if spec.causal and spec.causal_alignment == "bottom_right" else 0
    if key_positions is None and positions is not None and lk == lq:
        key_positions = positions
    q_pos = (
        torch.arange(start, start + lq)[None] if positions is None else positions.reshape(-1, lq)
    )
    k_pos = torch.arange(lk)[None] if key_positions is None else key_positions.reshape(-1, lk)
    return q_pos.to(device, torch.int64), k_pos.to(device, torch.int64)


def _norm(t: Tensor, kind: str, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Layer norm (eps 1e-5) or RMS norm (eps 1e-6) over the last dim, written out."""
    if kind == "layernorm":
        centred = t - t.sum(-1, keepdim=True) / t.shape[-1]
        out = centred / torch.sqrt((centred * centred).sum(-1, keepdim=True) / t.shape[-1] + 1e-5)
    else:
        out = t / torch.sqrt((t * t).sum(-1, keepdim=True) / t.shape[-1] + 1e-6)
    out = out * weight if weight is not None else out
    return out + bias if bias is not None else out


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    params: Params,
    spec: MhaSpec,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    positions: Tensor | None = None,
    key_positions: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Project, attend head by head in a Python loop, concatenate, project out.

    Query head h uses key/value head h // (heads // kv_heads). With ``spec.return_weights`` other
    than none, returns (output, weights) as the modules do. RoPE and ALiBi read ``positions``
    (Lq,) or (B, Lq) and ``key_positions`` (defaults: ``default_positions``).
    """
    heads = spec.heads
    kv_heads = spec.kv_heads or heads
    q = F.linear(query, params["q_proj.weight"], params.get("q_proj.bias"))
    k = F.linear(key, params["k_proj.weight"], params.get("k_proj.bias"))
    v = F.linear(value, params["v_proj.weight"], params.get("v_proj.bias"))
    hd, vd = q.shape[-1] // heads, v.shape[-1] // kv_heads
    q_pos, k_pos = default_positions(
        spec, query.shape[1], key.shape[1], positions, key_positions, query.device
    )
    slopes = alibi_slopes(heads) if spec.alibi else []
    outputs, weights = [], []
    for h in range(heads):
        g = h // (heads // kv_heads)
        qh, kh = q[..., h * hd : (h + 1) * hd], k[..., g * hd : (g + 1) * hd]
        if spec.qk_norm != "none":
            qh = _norm(qh, spec.qk_norm, params.get("q_norm.weight"), params.get("q_norm.bias"))
            kh = _norm(kh, spec.qk_norm, params.get("k_norm.weight"), params.get("k_norm.bias"))
        if spec.rope != "none":
            qh = rotary(qh, q_pos, spec.rope, spec.rope_base, spec.rope_fraction)
            kh = rotary(kh, k_pos, spec.rope, spec.rope_base, spec.rope_fraction)
        masks = []
        if spec.alibi:  # (B or 1, Lq, Lk): -slope * (i - j)
            distance = q_pos[:, :, None] - k_pos[:, None, :]
            masks.append((distance.to(torch.float64) * -slopes[h]).to(q.dtype))
        if key_padding_mask is not None:  # (B, Lk), True = padding -> (B, 1, Lk), True = allowed
            kpm = key_padding_mask[:, None, :]
            masks.append(~kpm if kpm.dtype == torch.bool else kpm)
        if attn_mask is not None:  # (Lq, Lk) or (B or 1, heads or 1, Lq, Lk)
            masks.append(
                attn_mask
                if attn_mask.ndim == 2
                else attn_mask[:, h if attn_mask.shape[1] > 1 else 0]
            )
        out, w = attention(
            qh,
            kh,
            v[..., g * vd : (g + 1) * vd],
            masks,
            scale=spec.scale,
            causal=spec.causal,
            alignment=spec.causal_alignment,
            return_weights=True,
            window=spec.window,
            softcap=spec.softcap,
        )
        outputs.append(out)
        weights.append(w)
    out = F.linear(
        torch.cat(outputs, dim=-1), params["out_proj.weight"], params.get("out_proj.bias")
    )
    if spec.return_weights == "none":
        return out
    stacked = torch.stack(weights, dim=1)  # (B, heads, Lq, Lk)
    return out, (stacked.sum(1) / heads if spec.return_weights == "mean" else stacked)


# --- timm's self-attention layers (lambda, bottleneck, halo) ------------------------------------------


def self_attn_widths(
    spec: LambdaSpec | BottleneckSpec | HaloSpec, channels: int, options: Mapping[str, object]
) -> tuple[int, int, int]:
    """(out_channels, query/key width per head, value width per head) at ``channels`` with the
    constructor ``options``: timm's dim_head or make_divisible(out * qk_ratio, 8) // heads (its
    default round_limit 0.9)."""
    out = options.get("out_channels") or channels
    assert isinstance(out, int)
    qk = spec.dim_head or make_divisible(out * spec.qk_ratio, 8, 8, 0.9) // spec.num_heads
    return out, qk, out // spec.num_heads


def _project(x: Tensor, params: Params, prefix: str) -> Tensor:
    """A 1x1 convolution as an einsum over the channels."""
    out = torch.einsum("bchw,oc->bohw", x, params[f"{prefix}weight"].flatten(1))
    bias = params.get(f"{prefix}bias")
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _offsets(n: int, keys: int | None = None) -> Tensor:
    """(n, keys): key j's offset from query i, shifted to index a table of 2 * keys - 1
    embeddings (keys: n by default)."""
    keys = n if keys is None else keys
    return torch.arange(keys)[None, :] - torch.arange(n)[:, None] + keys - 1


def _pool2(out: Tensor, stride: object) -> Tensor:
    """Stride 2: the mean of each 2 x 2 window (a last odd row or column dropped)."""
    if stride != 2:
        return out
    b, c = out.shape[:2]
    h, w = out.shape[-2] // 2, out.shape[-1] // 2
    return out[..., : 2 * h, : 2 * w].reshape(b, c, h, 2, w, 2).mean((3, 5))


def lambda_layer(
    x: Tensor,
    params: State,
    spec: LambdaSpec,
    options: Mapping[str, object],
    training: bool = False,
) -> Tensor:
    """Bello (2021)'s lambda layer with timm's choices: y_m = q_m (lambda_c + lambda_m), the
    content lambda sum_n softmax_n(k) v_n^T, the position lambda sum_n E(n - m) v_n^T (E a table
    of relative offsets, or the taps of an r x r conv around m, with its bias); batchnormed q, v."""
    b, c, h, w = x.shape
    out_c, dk, _ = self_attn_widths(spec, c, options)
    heads = spec.num_heads
    qkv = _project(x, params, "qkv.")
    q, k, v = qkv[:, : heads * dk], qkv[:, heads * dk : heads * dk + dk], qkv[:, heads * dk + dk :]
    q = batch_norm(q, params, "norm_q.", training).reshape(b, heads, dk, h, w)
    v = batch_norm(v, params, "norm_v.", training)  # b v y x
    e = torch.exp(k - k.amax((2, 3), keepdim=True))
    k = e / e.sum((2, 3), keepdim=True)
    content = torch.einsum("bkyx,bvyx->bkv", k, v)
    if spec.r is None:
        table = params["pos_emb"]
        emb = table[_offsets(h)[:, None, :, None], _offsets(w)[None, :, None, :]]  # y x i j k
        position = torch.einsum("yxijk,bvij->byxkv", emb, v)
    else:
        r, pad = spec.r, spec.r // 2
        kernel = params["conv_lambda.weight"][:, 0, :, :, 0]  # k a c
        padded = F.pad(v, (pad, pad, pad, pad))
        # Tap by tap, patches of the padded values: (B, V, r * r, H, W), then the kernel's taps.
        patches = torch.stack(
            [padded[:, :, i : i + h, j : j + w] for i in range(r) for j in range(r)], dim=2
        )
        position = torch.einsum("kt,bvtyx->byxkv", kernel.flatten(1), patches)
        position = position + params["conv_lambda.bias"].reshape(1, 1, 1, -1, 1)
    out = torch.einsum("bhkyx,bkv->bhvyx", q, content) + torch.einsum(
        "bhkyx,byxkv->bhvyx", q, position
    )
    return _pool2(out.reshape(b, out_c, h, w), options.get("stride", 1))


def _heads(t: Tensor, heads: int) -> Tensor:
    """(B, heads * d, H, W) -> (B, heads, H * W, d)."""
    b, _, h, w = t.shape
    return t.reshape(b, heads, -1, h * w).transpose(-1, -2)


def bottleneck_attn(
    x: Tensor, params: Params, spec: BottleneckSpec, options: Mapping[str, object]
) -> Tensor:
    """BoTNet's attention (Srinivas et al., 2021) with timm's choices: every position attends over
    the map with logits q . k / sqrt(d) + q . (r_h(dy) + r_w(dx)), r_h and r_w an embedding per
    row and column offset of the key from the query (or the whole sum scaled: scale_pos_embed)."""
    b, c, h, w = x.shape
    out_c, dk, _ = self_attn_widths(spec, c, options)
    heads = spec.num_heads
    qkv = _project(x, params, "qkv.")
    q, k, v = (
        _heads(t, heads)
        for t in (
            qkv[:, : heads * dk],
            qkv[:, heads * dk : 2 * heads * dk],
            qkv[:, 2 * heads * dk :],
        )
    )
    rel = _relative_logits(
        q.reshape(b, heads, h, w, dk),
        params["pos_embed.height_rel"],
        params["pos_embed.width_rel"],
        (h, w),
    )
    scale = dk**-0.5
    rel = rel * (scale if spec.scale_pos_embed else 1.0)
    out = attention(q, k, v, [rel], scale=scale)
    assert isinstance(out, Tensor)
    return _pool2(out.transpose(-1, -2).reshape(b, out_c, h, w), options.get("stride", 1))


def _relative_logits(
    q: Tensor, height_rel: Tensor, width_rel: Tensor, keys: tuple[int, int]
) -> Tensor:
    """q (B, heads, Y, X, d), a grid of Y x X queries, against a grid of keys[0] x keys[1] keys:
    q . (height_rel[key row offset] + width_rel[key column offset]), (B, heads, Y * X, keys)."""
    b, n, y, x, _ = q.shape
    eh = height_rel[_offsets(y, keys[0])]  # (query row, key row, d)
    ew = width_rel[_offsets(x, keys[1])]  # (query column, key column, d)
    rel = (
        torch.einsum("bnyxd,yid->bnyxi", q, eh)[..., None]
        + torch.einsum("bnyxd,xjd->bnyxj", q, ew)[..., None, :]
    )
    return rel.reshape(b, n, y * x, keys[0] * keys[1])


def halo_attn(x: Tensor, params: Params, spec: HaloSpec, options: Mapping[str, object]) -> Tensor:
    """HaloNet's blocked local attention (Vaswani et al., 2021) with timm's choices, block by
    block: a block's queries attend over its (block + 2 halo)-wide window of the zero-padded keys
    and values (padding attended, not masked), with relative logits over the window. Stride 2
    takes every other query (blocks of block_size / 2), or average-pools the output (avg_down, or
    an odd block_size). Each head's kv channels are its keys, then its values."""
    b, c, h, w = x.shape
    _, dk, dv = self_attn_widths(spec, c, options)
    heads, bs, halo = spec.num_heads, spec.block_size, spec.halo_size
    win = bs + 2 * halo
    stride = options.get("stride", 1)
    pooled = stride == 2 and (spec.avg_down or bs % 2 == 1)
    qs = 2 if stride == 2 and not pooled else 1
    bq = bs // qs
    q = _project(x[:, :, ::qs, ::qs], params, "q.").reshape(b, heads, dk, h // qs, w // qs)
    kv = F.pad(_project(x, params, "kv."), (halo, halo, halo, halo))
    kv = kv.reshape(b, heads, dk + dv, h + 2 * halo, w + 2 * halo)
    scale = dk**-0.5
    rows = []
    for by in range(h // bs):
        row = []
        for bx in range(w // bs):
            qb = q[:, :, :, by * bq : (by + 1) * bq, bx * bq : (bx + 1) * bq].permute(0, 1, 3, 4, 2)
            window = kv[:, :, :, by * bs : by * bs + win, bx * bs : bx * bs + win].flatten(3)
            kb, vb = window[:, :, :dk].transpose(-1, -2), window[:, :, dk:].transpose(-1, -2)
            rel = _relative_logits(
                qb, params["pos_embed.height_rel"], params["pos_embed.width_rel"], (win, win)
            )
            rel = rel * (scale if spec.scale_pos_embed else 1.0)
            ob = attention(qb.reshape(b, heads, bq * bq, dk), kb, vb, [rel], scale=scale)
            assert isinstance(ob, Tensor)
            row.append(ob.transpose(-1, -2).reshape(b, heads * dv, bq, bq))
        rows.append(torch.cat(row, dim=-1))
    return _pool2(torch.cat(rows, dim=-2), 2 if pooled else 1)
