"""Weight compatibility with timm: describe a timm attention module as a spec, and load its weights
into the generated variant that computes the same function.

    import timm.layers, attnforge
    se = timm.layers.create_attn("se", 64)
    attnforge.spec_from_timm(se, "my_se")       # {'name': 'my_se', 'kind': 'channel', ...}
    mine = attnforge.from_timm("se_timm", se)   # a SeTimm(64) holding se's weights

The configuration is read from the module itself (its layers, their widths, its flags), never from
how it was built. Our parameter and buffer names equal timm's, so a timm ``state_dict`` loads with
``strict=True``. timm is not a dependency: this module only reads attributes of what it is given,
except ``timm_create_attn``, which imports timm to build a module (working around a timm bug).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import registry

#: Activation and gate modules by class name (timm's own, torch's, and timm's memory-efficient ones).
_ACTIVATIONS = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "SiLU": "silu",
    "Swish": "silu",
    "SwishMe": "silu",
    "GELU": "gelu",
    "Hardswish": "hard_swish",
    "HardSwish": "hard_swish",
    "HardSwishMe": "hard_swish",
}
_GATES = {
    "Sigmoid": "sigmoid",
    "Hardsigmoid": "hard_sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "HardSigmoidMe": "hard_sigmoid",
}
# Fields that fix a width or a kernel from the channel count: they need not be spelled the same,
# only give the same shapes at the module's width (checked on the state_dict).
WIDTH_FIELDS = frozenset(
    {
        "reduction",
        "divisor",
        "round_limit",
        "min_channels",
        "kernel_size",
        "gamma",
        "beta",
        "min_kernel_size",
        "se_factor",
        "dim_head",
        "qk_ratio",
    }
)


@dataclass(frozen=True)
class Layout:
    """What a timm module is, in our vocabulary: the kind, the spec fields, the channel count."""

    kind: str
    fields: dict[str, Any]
    channels: int
    # Keyword-only constructor options the module was built with (out_channels, stride,
    # feat_size): not spec fields, passed to the variant's constructor by from_timm.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _name(module: nn.Module | None) -> str:
    return type(module).__name__


def _activation(module: nn.Module, where: str) -> str:
    name = _name(module)
    if name == "GELU" and getattr(module, "approximate", "none") != "none":
        raise ValueError(f"{where}: GELU(approximate={module.approximate!r}) is not supported")
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"{where}: activation {name} is not supported (supported: {', '.join(sorted(set(_ACTIVATIONS.values())))})"
        )
    return _ACTIVATIONS[name]


def _gate(module: nn.Module, where: str) -> str:
    if _name(module) not in _GATES:
        raise ValueError(
            f"{where}: gate {_name(module)} is not supported (sigmoid and hard_sigmoid are)"
        )
    return _GATES[_name(module)]


def _norm(module: nn.Module, where: str, *, own_act: bool = False) -> str:
    """ "batchnorm" or "none"; ``own_act``: the caller reads the norm's activation (timm's
    BatchNormAct2d in a ConvNormAct), so it need not be nn.Identity."""
    if isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.BatchNorm2d):
        plain = (
            module.eps == 1e-5
            and module.momentum == 0.1
            and module.affine
            and module.bias is not None  # torch 2.14's BatchNorm2d(bias=False) has none
            and module.track_running_stats
            and (own_act or _name(getattr(module, "act", nn.Identity())) == "Identity")
            and _name(getattr(module, "drop", nn.Identity())) == "Identity"
        )
        if not plain:
            raise ValueError(
                f"{where}: BatchNorm2d(eps={module.eps}, momentum={module.momentum}, affine="
                f"{module.affine}, bias={module.bias is not None}, track_running_stats="
                f"{module.track_running_stats}) is not supported (eps 1e-5, momentum 0.1, affine "
                "with a bias, tracked statistics, no activation are)"
            )
        return "batchnorm"
    raise ValueError(f"{where}: norm {_name(module)} is not supported (BatchNorm2d is)")


def _reduction(
    channels: int, hidden: int, divisor: int | None, round_limit: float, default: int, where: str
) -> dict[str, Any]:
    """A reduction (and divisor) giving ``hidden`` at ``channels`` with timm's rounding. A module
    records neither its ratio nor its divisor, only the width they made: prefer the class's default
    divisor, then the reduction nearest the class's default. A width no reduction reaches with those
    divisors (a fixed rd_channels) is reached with itself as the divisor, make_divisible's floor."""
    from .references import hidden_width

    divisors = [divisor, *(d for d in (1, 2, 4, 8, 16, 32, 64) if d != divisor)]
    if hidden <= 256 and hidden not in divisors:  # the spec's bound on divisor
        divisors.append(hidden)
    reductions = sorted(range(1, 1025), key=lambda r: (abs(r - default), r))
    for d in divisors:
        for r in reductions:
            if hidden_width(channels, r, d, 1, round_limit) == hidden:
                fields: dict[str, Any] = {"reduction": r}
                if d is not None:
                    fields["divisor"] = d
                if round_limit:
                    fields["round_limit"] = round_limit
                return fields
    raise ValueError(
        f"{where}: a hidden width of {hidden} at {channels} channels is not one that make_divisible "
        f"reaches with round_limit {round_limit}"
    )


def _conv_bias(conv: nn.Module) -> bool:
    return getattr(conv, "bias", None) is not None


def _se(m: Any) -> Layout:
    c, rd = m.fc1.in_channels, m.fc1.out_channels
    fields = {
        **_reduction(c, rd, 8, 0.0, 16, "SEModule"),
        "activation": _activation(m.act, "SEModule.act"),
        "norm": _norm(m.bn, "SEModule.bn"),
        "gate": _gate(m.gate, "SEModule.gate"),
        "bias": _conv_bias(m.fc1),
    }
    if m.add_maxpool:
        fields |= {"pooling": ["avg", "max"], "pooling_merge": "before_mlp"}
    return Layout("channel", fields, c)


def _ese(m: Any) -> Layout:
    fields: dict[str, Any] = {
        "gate": _gate(m.gate, "EffectiveSEModule.gate"),
        "bias": _conv_bias(m.fc),
    }
    if m.add_maxpool:
        fields["pooling"] = ["avg", "max"]
    return Layout("ese", fields, m.fc.in_channels)


def _eca(m: Any, circular: bool, channels: int | None) -> Layout:
    where = _name(m)
    last = m.conv2 if getattr(m, "conv2", None) is not None else m.conv
    fields: dict[str, Any] = {
        "kernel_size": last.kernel_size[0],
        "gate": _gate(m.gate, f"{where}.gate"),
    }
    if circular:
        fields["padding"] = "circular"
    if getattr(m, "conv2", None) is not None:
        if channels is None:
            raise ValueError(
                f"{where} with use_mlp does not record its channel count, which sized its hidden "
                "width: give channels=C"
            )
        hidden = _reduction(channels, m.conv.out_channels, 8, 0.9, 8, where)
        fields |= {"mlp": True, "activation": _activation(m.act, f"{where}.act"), **hidden}
        if "divisor" in hidden and hidden["divisor"] != 8:
            fields["divisor"] = hidden["divisor"]
    elif _conv_bias(m.conv):
        fields["bias"] = True
    return Layout("eca", fields, -1)  # ECA's width comes from the input; the caller supplies it


def _channel_half(m: Any, light: bool) -> dict[str, Any]:
    where = _name(m)
    c, rd = m.fc1.in_channels, m.fc1.out_channels
    fields = {
        **_reduction(c, rd, 1, 0.0, 16, where),
        "pooling": ["avg", "max"],
        "activation": _activation(m.act, f"{where}.act"),
        # LightChannelAttn gates with F.sigmoid whatever gate_layer says (timm's own quirk).
        "gate": "sigmoid" if light else _gate(m.gate, f"{where}.gate"),
        "bias": _conv_bias(m.fc1),
    }
    if light:
        fields["pooling_merge"] = "before_mlp"
    return fields


def _spatial_half(m: Any, light: bool) -> dict[str, Any]:
    where = _name(m)
    conv = m.conv.conv
    return {
        "kernel_size": conv.kernel_size[0],
        "pooling": ["mean", "max"],
        "pooling_merge": "average" if light else "concat",
        "norm": _norm(m.conv.bn, f"{where}.conv.bn"),
        "gate": _gate(m.gate, f"{where}.gate"),
        "bias": _conv_bias(conv),
    }


def _cbam(m: Any, light: bool) -> Layout:
    fields = {
        "channel": _channel_half(m.channel, light),
        "spatial": _spatial_half(m.spatial, light),
    }
    return Layout("cbam", fields, m.channel.fc1.in_channels)


def _mlp_width(mlp: Any, where: str) -> tuple[int, int]:
    """A timm ConvMlp's (in, hidden) widths; ValueError unless it is fc1, act, fc2 with biases,
    out = in, and no dropout."""
    fc1, fc2 = mlp.fc1, mlp.fc2
    if fc2.out_channels != fc1.in_channels:
        raise ValueError(
            f"{where}: out_features {fc2.out_channels} != in_features {fc1.in_channels} is not "
            "supported"
        )
    if not (_conv_bias(fc1) and _conv_bias(fc2)):
        raise ValueError(f"{where}: a ConvMlp without biases is not supported")
    if getattr(getattr(mlp, "drop", None), "p", 0.0):
        raise ValueError(f"{where}: dropout {mlp.drop.p} is not supported")
    return fc1.in_channels, fc1.out_channels


def _ge(m: Any, channels: int | None) -> Layout:
    where = "GatherExcite"
    fields: dict[str, Any] = {"gate": _gate(m.gate, f"{where}.gate")}
    acts: list[str] = []
    c = -1  # unknown until a layer records it
    gather = m.gather
    if gather is not None:
        layers = dict(gather.named_children())
        convs = [layer for n, layer in layers.items() if n.startswith("conv")]
        c = convs[0].in_channels
        extent = 0 if m.extent == 0 else 2 ** len(convs)
        for i, conv in enumerate(convs, 1):
            k = tuple(conv.kernel_size)
            stride, padding = (1, 1), tuple((s - 1) // 2 for s in k)
            if extent:
                stride, padding = (2, 2), (1, 1)
            got = (tuple(conv.stride), tuple(conv.padding), conv.groups, _conv_bias(conv))
            if got != (stride, padding, c, False) or (extent and k != (3, 3)):
                raise ValueError(
                    f"{where}.gather.conv{i}: a {k} conv with stride {conv.stride}, padding "
                    f"{conv.padding}, groups {conv.groups} is not the depthwise conv timm builds"
                )
        norms = [n for n in layers if n.startswith("norm")]
        fields |= {
            "extent": extent,
            "extra_params": True,
            "norm": _norm(gather.norm1, f"{where}.gather.norm1") if norms else "none",
        }
        if extent == 0:
            fields["feat_size"] = list(convs[0].kernel_size)
        acts += [
            _activation(a, f"{where}.gather.{n}") for n, a in layers.items() if n.startswith("act")
        ]
    else:
        fields |= {"extent": m.extent, "extra_params": False}
        fields["pooling"] = ["avg", "max"] if m.add_maxpool else ["avg"]
    if isinstance(m.mlp, nn.Identity):
        fields["mlp"] = False
    else:
        c, rd = _mlp_width(m.mlp, f"{where}.mlp")
        if not isinstance(m.mlp.norm, nn.Identity):
            raise ValueError(f"{where}.mlp.norm: {_name(m.mlp.norm)} is not supported (none is)")
        fields |= {"mlp": True, **_reduction(c, rd, 1, 0.0, 16, f"{where}.mlp")}
        acts.append(_activation(m.mlp.act, f"{where}.mlp.act"))
    if len(set(acts)) > 1:
        raise ValueError(f"{where}: different activations {sorted(set(acts))} are not supported")
    if acts:
        fields["activation"] = acts[0]
    return Layout("ge", fields, c)


def _gc(m: Any) -> Layout:
    where = "GlobalContext"
    mlps = {n: mlp for n in ("mlp_add", "mlp_scale") if (mlp := getattr(m, n)) is not None}
    fields: dict[str, Any] = {
        "context": "attention" if m.conv_attn is not None else "avg",
        "fuse_scale": "mlp_scale" in mlps,
        "fuse_add": "mlp_add" in mlps,
    }
    widths, acts = set(), set()
    for n, mlp in mlps.items():
        widths.add(_mlp_width(mlp, f"{where}.{n}"))
        acts.add(_activation(mlp.act, f"{where}.{n}.act"))
        norm = mlp.norm
        if _name(norm) != "LayerNorm2d" or norm.eps != 1e-6 or not norm.elementwise_affine:
            raise ValueError(
                f"{where}.{n}.norm: {_name(norm)} is not supported (LayerNorm2d, eps 1e-6, "
                "affine, is)"
            )
    if len(widths) > 1 or len(acts) > 1:
        raise ValueError(f"{where}: mlp_add and mlp_scale of different widths or activations")
    (c, rd), act = widths.pop(), acts.pop()
    fields |= {**_reduction(c, rd, 1, 0.0, 8, where), "activation": act}
    if fields["fuse_scale"]:
        fields["gate"] = _gate(m.gate, f"{where}.gate")
    return Layout("gc", fields, c)


def _strip_convs(m: Any, where: str, required: bool) -> dict[str, Any]:
    """conv_h and conv_w: depthwise, k x 1 and 1 x k, padded k // 2 (timm builds them so; anything
    else is not a module we generate). Without convs (nn.Identity, StripAttn's use_conv=False):
    no fields, or a ValueError where convs are ``required``."""
    h, w = m.conv_h, m.conv_w
    if isinstance(h, nn.Identity) and isinstance(w, nn.Identity) and not required:
        return {}
    if not (isinstance(h, nn.Conv2d) and isinstance(w, nn.Conv2d)):
        raise ValueError(f"{where}: conv_h {_name(h)} and conv_w {_name(w)} are not two Conv2d")
    k = h.kernel_size[0]
    c = h.in_channels
    expected = ((k, 1), (k // 2, 0), (1, k), (0, k // 2))
    found = (h.kernel_size, h.padding, w.kernel_size, w.padding)
    plain = all(
        conv.in_channels == conv.out_channels == conv.groups == c
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        for conv in (h, w)
    )
    if found != expected or not plain or _conv_bias(h) != _conv_bias(w):
        raise ValueError(
            f"{where}: conv_h / conv_w are not depthwise {k} x 1 and 1 x {k} convs over {c} "
            "channels with padding k // 2, stride 1, one bias setting (the ones timm builds)"
        )
    if k % 2 == 0:
        raise ValueError(
            f"{where}: kernel_size {k} is even: the padded strips come out one longer than x "
            "(timm's forward fails on any input)"
        )
    return {"kernel_size": k, "bias": _conv_bias(h)}


def _strip_norm(norm_h: nn.Module, norm_w: nn.Module, where: str) -> dict[str, Any]:
    kinds = [_name(norm_h), _name(norm_w)]
    if kinds[0] != kinds[1]:
        raise ValueError(f"{where}: norm_h {kinds[0]} and norm_w {kinds[1]} differ")
    if isinstance(norm_h, nn.GroupNorm):
        groups = {norm_h.num_groups, norm_w.num_groups}
        if norm_h.eps != 1e-5 or not norm_h.affine or len(groups) > 1:
            raise ValueError(
                f"{where}: {kinds[0]}(num_groups={norm_h.num_groups}, eps={norm_h.eps}, affine="
                f"{norm_h.affine}) is not supported (eps 1e-5, affine, one group count are)"
            )
        return {"norm": "groupnorm", "norm_groups": norm_h.num_groups}
    if isinstance(norm_h, nn.Identity | nn.BatchNorm2d):
        _norm(norm_w, f"{where}.norm_w")
        return {"norm": _norm(norm_h, f"{where}.norm_h")}
    raise ValueError(
        f"{where}: norm {kinds[0]} is not supported (GroupNorm, GroupNorm1, BatchNorm2d and none are)"
    )


def _ela(m: Any) -> Layout:
    where = "EfficientLocalAttn"
    fields = {
        **_strip_convs(m, where, required=True),
        **_strip_norm(m.norm_h, m.norm_w, where),
        "activation": "none"
        if isinstance(m.act, nn.Identity)
        else _activation(m.act, f"{where}.act"),
        "gate": _gate(m.gate, f"{where}.gate"),
        "skip": bool(m.has_skip),
    }
    return Layout("ela", fields, m.conv_h.in_channels)


def _strip(m: Any) -> Layout:
    where = "StripAttn"
    convs = _strip_convs(m, where, required=False)
    fields = {
        "conv": bool(convs),
        **convs,
        "gate": _gate(m.gate, f"{where}.gate"),
        "skip": bool(m.has_skip),
    }
    # Without convs the module holds no parameter and records no channel count.
    return Layout("strip", fields, m.conv_h.in_channels if convs else -1)


def _coord_width(channels: int, hidden: int, default: int, where: str) -> dict[str, Any]:
    """Fields giving coordinate attention's bottleneck ``hidden`` at ``channels``: a module records
    neither rd_ratio nor se_factor nor rd_divisor, only the width they made. Prefer timm's se_factor
    2/3 and divisor 8, then the reduction nearest the class's default; a width no ratio reaches (an
    rd_channels above C * se_factor) becomes the lower bound, min_channels."""
    from .references import coord_width

    reductions = sorted(range(1, 1025), key=lambda r: (abs(r - default), r))
    for se_factor in (2 / 3, 1.0):
        for d in (8, 1, 2, 4, 16, 32, 64):
            for r in reductions:
                if coord_width(channels, r, d, 1, se_factor) == hidden:
                    fields: dict[str, Any] = {"reduction": r}
                    if d != 8:
                        fields["divisor"] = d
                    if se_factor != 2 / 3:
                        fields["se_factor"] = se_factor
                    return fields
    if hidden <= 4096 and coord_width(channels, 1024, 1, hidden, 2 / 3) == hidden:
        return {"reduction": 1024, "divisor": 1, "min_channels": hidden}
    raise ValueError(
        f"{where}: a bottleneck of {hidden} channels at {channels} channels is not one that "
        "make_divisible reaches"
    )


def _same_bias(where: str, *layers: Any) -> bool:
    biases = {_conv_bias(layer) for layer in layers}
    if len(biases) > 1:
        raise ValueError(f"{where}: biases on some of its layers only are not supported")
    return biases.pop()


def _coord(m: Any) -> Layout:
    c, rd = m.conv1.in_channels, m.conv1.out_channels
    fields = {
        **_coord_width(c, rd, 16, "CoordAttn"),
        "activation": _activation(m.act, "CoordAttn.act"),
        "norm": _norm(m.bn1, "CoordAttn.bn1"),
        "gate": _gate(m.gate, "CoordAttn.gate"),
        "bias": _same_bias("CoordAttn", m.conv1, m.conv_h, m.conv_w),
        "skip": bool(m.has_skip),
    }
    return Layout("coord", fields, c)


def _scoord(m: Any) -> Layout:
    c, rd = m.fc1.in_features, m.fc1.out_features
    fields = {
        **_coord_width(c, rd, 4, "SimpleCoordAttn"),
        "activation": _activation(m.act, "SimpleCoordAttn.act"),
        "gate": _gate(m.gate, "SimpleCoordAttn.gate"),
        "bias": _same_bias("SimpleCoordAttn", m.fc1, m.fc_h, m.fc_w),
        "skip": bool(m.has_skip),
    }
    return Layout("scoord", fields, c)


def _conv1x1(conv: Any, where: str, *, bias: bool = True) -> None:
    """A plain 1x1 Conv2d (stride 1, no padding, groups or dilation), with a bias or without one:
    NonLocalAttn's convs have one, the ConvNormAct convs of BatNonLocalAttn none."""
    plain = (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and _conv_bias(conv) == bias
    )
    if not plain:
        which = "with a bias" if bias else "without bias"
        raise ValueError(f"{where}: {conv} is not the 1x1 conv {which} timm builds")


def _nl(m: Any) -> Layout:
    where = "NonLocalAttn"
    c, rd = m.t.in_channels, m.t.out_channels
    for name in ("t", "p", "g", "z"):
        _conv1x1(getattr(m, name), f"{where}.{name}")
    if _norm(m.norm, f"{where}.norm") != "batchnorm":
        raise ValueError(f"{where}.norm: {_name(m.norm)} is not supported (BatchNorm2d is)")
    if m.scale == c**-0.5:
        use_scale = True
    elif m.scale == 1.0:
        use_scale = False
    else:
        raise ValueError(f"{where}: scale {m.scale!r} is neither C ** -0.5 nor 1.0 (use_scale)")
    fields = {**_reduction(c, rd, 8, 0.9, 8, where), "use_scale": use_scale}
    return Layout("nl", fields, c)


def _conv_norm_act(m: Any, where: str) -> tuple[str, str]:
    """A timm ConvNormAct of a 1x1 conv without bias and a plain BatchNormAct2d, GroupNorm1Act or
    LayerNormAct2d (no dropout, no anti-aliasing): its norm and its activation ("none" for
    nn.Identity)."""
    conv, bn = m.conv, m.bn
    _conv1x1(conv, f"{where}.conv", bias=False)
    if getattr(m, "aa", None) is not None and not isinstance(m.aa, nn.Identity):
        raise ValueError(f"{where}.aa: anti-aliasing {_name(m.aa)} is not supported")
    if isinstance(bn, nn.BatchNorm2d):
        norm = _norm(bn, f"{where}.bn", own_act=True)
    elif _name(bn) in ("GroupNorm1Act", "LayerNormAct2d"):
        plain = bn.eps == 1e-5 and (
            bn.affine if isinstance(bn, nn.GroupNorm) else bn.elementwise_affine
        )
        if not plain or not isinstance(getattr(bn, "drop", nn.Identity()), nn.Identity):
            raise ValueError(
                f"{where}.bn: {_name(bn)} with eps {bn.eps}, without affine or with dropout is "
                "not supported (eps 1e-5, affine, no dropout are)"
            )
        norm = "groupnorm1" if isinstance(bn, nn.GroupNorm) else "layernorm2d"
    else:
        raise ValueError(
            f"{where}.bn: norm {_name(bn)} is not supported (BatchNorm2d, GroupNorm1 and "
            "LayerNorm2d are)"
        )
    act = getattr(bn, "act", nn.Identity())
    return norm, "none" if isinstance(act, nn.Identity) else _activation(act, f"{where}.bn.act")


def _bat(m: Any) -> Layout:
    where = "BatNonLocalAttn"
    c, rd = m.conv1.conv.in_channels, m.conv1.conv.out_channels
    ba = m.ba
    found = {
        _conv_norm_act(block, f"{where}.{name}")
        for name, block in (
            ("conv1", m.conv1),
            ("ba.conv1", ba.conv1),
            ("ba.conv2", ba.conv2),
            ("conv2", m.conv2),
        )
    }
    if len(found) > 1:
        raise ValueError(
            f"{where}: different norms or activations {sorted(found)} are not supported"
        )
    norm, act = found.pop()
    n, g = ba.block_size, ba.groups
    for name, kernel in (("conv_p", (n, 1)), ("conv_q", (1, n))):
        conv = getattr(ba, name)
        if conv.kernel_size != kernel or conv.groups != 1 or not _conv_bias(conv):
            raise ValueError(f"{where}.ba.{name}: {conv} is not the {kernel} conv timm builds")
    fields = {
        **_reduction(c, rd, 8, 0.9, 4, where),
        "block_size": n,
        "groups": g,
        "drop_rate": float(m.dropout.p),
        "activation": act,
        "norm": norm,
    }
    return Layout("bat", fields, c)


def _sk(m: Any) -> Layout:
    where = "SelectiveKernel"
    paths = list(m.paths)
    convs = [path.conv for path in paths]
    first = convs[0]
    out, stride, groups = first.out_channels, first.stride[0], first.groups
    for i, path in enumerate(paths):
        conv = path.conv
        if getattr(path, "aa", None) is not None:
            raise ValueError(f"{where}.paths.{i}: aa_layer {_name(path.aa)} is not supported")
        plain = (
            type(conv) is nn.Conv2d
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.dilation[0] == conv.dilation[1]
            and conv.stride == (stride, stride)
            and conv.padding
            == ((stride - 1 + conv.dilation[0] * (conv.kernel_size[0] - 1)) // 2,) * 2
            and conv.padding_mode == "zeros"
            and (conv.out_channels, conv.groups) == (out, groups)
            and not _conv_bias(conv)
        )
        if not plain:
            raise ValueError(
                f"{where}.paths.{i}.conv: a {tuple(conv.kernel_size)} conv with stride "
                f"{conv.stride}, padding {conv.padding}, dilation {conv.dilation} is not the conv "
                "timm's ConvNormAct builds"
            )
        _norm(path.bn, f"{where}.paths.{i}.bn", own_act=True)
    acts = {_activation(path.bn.act, f"{where}.paths.{i}.bn.act") for i, path in enumerate(paths)}
    if len(acts) > 1:
        raise ValueError(f"{where}: paths with different activations {sorted(acts)}")
    kernels = [c.kernel_size[0] for c in convs]
    dilations = [c.dilation[0] for c in convs]
    fields: dict[str, Any]
    if all(k == 3 for k in kernels):  # keep_3x3: path i's kernel k became dilation (k - 1) // 2
        d = math.gcd(*dilations)
        fields = {"kernel_size": [2 * di // d + 1 for di in dilations], "dilation": d}
    elif len(set(dilations)) == 1:
        fields = {"kernel_size": kernels, "dilation": dilations[0], "keep_3x3": False}
    else:
        raise ValueError(f"{where}: paths of kernels {kernels} at dilations {dilations}")
    attn = m.attn
    if _name(attn.act) != "ReLU" or _conv_bias(attn.fc_reduce) or _conv_bias(attn.fc_select):
        raise ValueError(f"{where}.attn: not the SelectiveKernelAttn timm builds")
    _norm(attn.bn, f"{where}.attn.bn")
    width = _reduction(out, attn.fc_reduce.out_channels, 8, 0.9, 16, f"{where}.attn")
    width.pop("round_limit")  # timm's SelectiveKernel always rounds with 0.9
    fields |= {
        "split_input": bool(m.split_input) or len(paths) == 1,
        "groups": groups,
        **width,
        "activation": acts.pop(),
    }
    return Layout("sk", fields, m.in_channels, {"out_channels": out, "stride": stride})


def _splat_width(channels: int, radix: int, hidden: int, where: str) -> dict[str, Any]:
    """Fields giving SplitAttn's hidden width ``hidden``: make_divisible(C * radix / reduction,
    divisor, min_channels) with round_limit 0.9. Prefer timm's divisor 8 and floor 32, then the
    reduction nearest timm's 4; a width no ratio reaches (rd_channels * radix below the floor)
    becomes the floor itself."""
    from .references import hidden_width

    reductions = sorted(range(1, 1025), key=lambda r: (abs(r - 4), r))
    for low in (32, 1):
        for d in (8, 1, 2, 4, 16, 32, 64):
            for r in reductions:
                if hidden_width(channels * radix, r, d, low, 0.9) == hidden:
                    fields: dict[str, Any] = {"reduction": r}
                    if d != 8:
                        fields["divisor"] = d
                    if low != 32:
                        fields["min_channels"] = low
                    return fields
    if hidden <= 4096 and hidden_width(channels * radix, 1024, 1, hidden, 0.9) == hidden:
        return {"reduction": 1024, "divisor": 1, "min_channels": hidden}
    raise ValueError(
        f"{where}: a hidden width of {hidden} at {channels} channels and radix {radix} is not one "
        "that make_divisible reaches"
    )


def _splat(m: Any) -> Layout:
    where = "SplitAttn"
    conv, radix = m.conv, m.radix
    k, stride, pad, dil = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    square = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (k, k)
        and conv.stride == (stride, stride)
        and conv.padding == (pad, pad)
        and conv.dilation == (dil, dil)
        and conv.padding_mode == "zeros"
        and conv.groups % radix == 0
    )
    if not square:
        raise ValueError(
            f"{where}.conv: a {tuple(conv.kernel_size)} conv with stride {conv.stride}, padding "
            f"{conv.padding}, dilation {conv.dilation} is not the square conv timm builds"
        )
    if not isinstance(m.drop, nn.Identity):
        raise ValueError(f"{where}.drop: drop_layer {_name(m.drop)} is not supported")
    norms = {_norm(m.bn0, f"{where}.bn0"), _norm(m.bn1, f"{where}.bn1")}
    acts = {_activation(m.act0, f"{where}.act0"), _activation(m.act1, f"{where}.act1")}
    if len(norms) > 1 or len(acts) > 1:
        raise ValueError(f"{where}: bn0 / bn1 or act0 / act1 of different kinds")
    groups = conv.groups // radix
    c, out = conv.in_channels, conv.out_channels // radix
    fields: dict[str, Any] = {"kernel_size": k}
    if pad != k // 2:
        fields["padding"] = pad
    fields |= {
        "dilation": dil,
        "groups": groups,
        "radix": radix,
        "bias": _conv_bias(conv),
        **_splat_width(c, radix, m.fc1.out_channels, f"{where}.fc1"),
        "activation": acts.pop(),
        "norm": norms.pop(),
    }
    return Layout("splat", fields, c, {"out_channels": out, "stride": stride})


def _self_attn_options(channels: int, out: int, stride: int) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if out != channels:
        options["out_channels"] = out
    if stride != 1:
        options["stride"] = stride
    return options


def _lambda(m: Any) -> Layout:
    where = "LambdaLayer"
    c = m.qkv.in_channels
    _norm(m.norm_q, f"{where}.norm_q")
    _norm(m.norm_v, f"{where}.norm_v")
    fields: dict[str, Any] = {
        "num_heads": m.num_heads,
        "dim_head": m.dim_qk,
        "qkv_bias": _conv_bias(m.qkv),
        "r": None if m.conv_lambda is None else m.conv_lambda.kernel_size[0],
    }
    stride = 2 if isinstance(m.pool, nn.AvgPool2d) else 1
    options = _self_attn_options(c, m.num_heads * m.dim_v, stride)
    if m.conv_lambda is None:
        options["feat_size"] = tuple(m.feat_size)
    return Layout("lambda", fields, c, options)


def _bottleneck(m: Any) -> Layout:
    c = m.qkv.in_channels
    fields: dict[str, Any] = {
        "num_heads": m.num_heads,
        "dim_head": m.dim_head_qk,
        "qkv_bias": _conv_bias(m.qkv),
        "scale_pos_embed": bool(m.scale_pos_embed),
    }
    stride = 2 if isinstance(m.pool, nn.AvgPool2d) else 1
    options = _self_attn_options(c, m.dim_out_v, stride)
    options["feat_size"] = (m.pos_embed.height, m.pos_embed.width)
    return Layout("bottleneck", fields, c, options)


def _halo(m: Any) -> Layout:
    c = m.q.in_channels
    pooled = isinstance(m.pool, nn.AvgPool2d)
    stride = 2 if pooled or m.block_stride == 2 else 1
    fields: dict[str, Any] = {
        "num_heads": m.num_heads,
        "dim_head": m.dim_head_qk,
        "qkv_bias": _conv_bias(m.q),
        "block_size": m.block_size,
        "halo_size": m.halo_size,
        # avg_down shows only where it changed something: stride 2 with an even block size.
        "avg_down": pooled and m.block_size % 2 == 0,
        "scale_pos_embed": bool(m.scale_pos_embed),
    }
    return Layout("halo", fields, c, _self_attn_options(c, m.dim_out_v, stride))


#: timm class name -> how to read it. Checked against the class's module: timm's own classes only.
CONVERTERS: dict[str, Callable[[Any, int | None], Layout]] = {
    "SEModule": lambda m, c: _se(m),
    "EffectiveSEModule": lambda m, c: _ese(m),
    "EcaModule": lambda m, c: _eca(m, False, c),
    "CecaModule": lambda m, c: _eca(m, True, c),
    "CbamModule": lambda m, c: _cbam(m, light=False),
    "LightCbamModule": lambda m, c: _cbam(m, light=True),
    "GatherExcite": _ge,
    "GlobalContext": lambda m, c: _gc(m),
    "CoordAttn": lambda m, c: _coord(m),
    "SimpleCoordAttn": lambda m, c: _scoord(m),
    "EfficientLocalAttn": lambda m, c: _ela(m),
    "StripAttn": lambda m, c: _strip(m),
    "NonLocalAttn": lambda m, c: _nl(m),
    "BatNonLocalAttn": lambda m, c: _bat(m),
    "SelectiveKernel": lambda m, c: _sk(m),
    "SplitAttn": lambda m, c: _splat(m),
    "LambdaLayer": lambda m, c: _lambda(m),
    "BottleneckAttn": lambda m, c: _bottleneck(m),
    "HaloAttn": lambda m, c: _halo(m),
}


def layout(module: nn.Module, channels: int | None = None) -> Layout:
    """``module`` in our vocabulary; ``ValueError`` naming what is not supported."""
    cls = type(module)
    if not cls.__module__.startswith("timm.") or cls.__name__ not in CONVERTERS:
        supported = ", ".join(sorted(CONVERTERS))
        raise ValueError(
            f"{cls.__module__}.{cls.__name__} is not a timm attention module attnforge reads "
            f"(supported: {supported})"
        )
    return CONVERTERS[cls.__name__](module, channels)


def spec_from_timm(module: nn.Module, name: str, *, channels: int | None = None) -> dict[str, Any]:
    """The spec (a plain, YAML-serialisable mapping that validates) describing ``module``.

    Generating it gives a variant that ``from_timm(name, module)`` loads the module's weights into.
    ECA modules with an MLP do not record the channel count that sized it: give ``channels``.
    (StripAttn without convs records none either; its spec does not depend on it.)
    """
    found = layout(module, channels)
    spec = {"name": name, "kind": found.kind, **found.fields}
    try:
        from .spec import validate
    except ImportError:  # pydantic absent: the mapping is still right, just not checked here
        return spec
    validate(spec)
    return spec


def _differences(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for field, value in theirs.items():
        if field in WIDTH_FIELDS:
            continue
        mine = ours.get(field)
        if isinstance(value, dict) and isinstance(mine, dict):
            out += _differences(mine, value, f"{prefix}{field}.")
        elif mine != value and not (isinstance(mine, list | tuple) and list(mine) == value):
            out.append(f"{prefix}{field}: {mine!r} here, {value!r} in the module")
    return out


def from_timm(
    name: str,
    module: nn.Module,
    catalogue: registry.Catalogue | None = None,
    *,
    channels: int | None = None,
) -> nn.Module:
    """An instance of variant ``name`` holding ``module``'s parameters and buffers, in its mode.

    ``ValueError`` names every option where the variant's spec and the module differ, or the first
    parameter whose shape differs (a width or a kernel size that the spec computes otherwise at
    this channel count). ECA modules do not record their channel count (their kernel was sized
    from it), nor does StripAttn without convs: give it as ``channels``.
    """
    catalogue = catalogue or registry.default
    found = layout(module, channels)
    ours = catalogue.spec_dict(name)
    if ours["kind"] != found.kind:
        raise ValueError(f"{name} is a {ours['kind']} variant; the module is {found.kind}")
    differ = _differences(ours, found.fields)
    if ours.get("dims", 2) != 2:
        differ.append(f"dims: {ours['dims']} here, 2 in the module")
    if differ:
        raise ValueError(f"{name} does not match {_name(module)}: " + "; ".join(differ))
    state = module.state_dict()
    if found.channels > 0:
        channels = found.channels
    elif channels is None:
        raise ValueError(
            f"{_name(module)} does not record its channel count: from_timm({name!r}, module, "
            "channels=C)"
        )
    # A module without parameters or buffers (StripAttn without convs) has no device or dtype.
    weight = next((t for t in state.values() if t.is_floating_point()), None)
    block = catalogue.build(
        name,
        channels,
        **found.options,
        device=None if weight is None else weight.device,
        dtype=None if weight is None else weight.dtype,
    )
    _same_convs(name, block, module)
    mine = block.state_dict()
    for key, tensor in state.items():
        if key not in mine:
            raise ValueError(f"{name} has no {key} (the module's state has it)")
        if mine[key].shape != tensor.shape:
            raise ValueError(
                f"{name} at {channels} channels: {key} is {tuple(mine[key].shape)}, "
                f"{tuple(tensor.shape)} in the module"
            )
    block.load_state_dict(state, strict=True)
    return block.train(module.training)


def _same_convs(name: str, block: nn.Module, module: nn.Module) -> None:
    """Every conv of ``block`` with a counterpart of the same name in ``module`` has its geometry:
    weight shapes alone do not tell a dilated 3x3 from another dilation, nor a stride."""
    theirs = dict(module.named_modules())
    for path, conv in block.named_modules():
        other = theirs.get(path)
        if not (isinstance(conv, nn.Conv2d) and isinstance(other, nn.Conv2d)):
            continue
        # Dilation before padding: a padding follows from the dilation, so that is the cause to name.
        for attr in ("stride", "dilation", "padding", "groups"):
            if getattr(conv, attr) != getattr(other, attr):
                raise ValueError(
                    f"{name}: {path}.{attr} is {getattr(conv, attr)}, {getattr(other, attr)} in "
                    "the module"
                )


def timm_create_attn(attn: str, channels: int, **kwargs: Any) -> nn.Module:
    """timm's ``create_attn(attn, channels, **kwargs)`` (timm must be installed), except that a
    GatherExcite timm cannot build is built as its constructor means to build it.

    timm 1.0.31's GatherExcite passes its factory kwargs as ``*dd`` (the dict's keys, "device" and
    "dtype", as positional arguments): ``ConvMlp(channels, rd, act_layer=..., *dd)`` raises
    ``TypeError: got multiple values for argument 'act_layer'``, so every ``use_mlp=True`` (the
    default) fails, and ``create_conv2d(..., kernel_size=..., *dd)`` raises the same for
    ``kernel_size``, so every ``extra_params=True`` fails (its ``nn.BatchNorm2d(channels, *dd)``
    would make eps "device"). Here those submodules are built with ``**dd`` instead, in the
    constructor's order (gather, mlp, gate), so timm's own forward runs on them.
    """
    from timm.layers import create_attn

    try:
        module: nn.Module = create_attn(attn, channels, **kwargs)
        return module
    except TypeError as exc:
        if attn.lower() != "ge" or "multiple values for argument" not in str(exc):
            raise
    return _timm_gather_excite(channels, **kwargs)


def _timm_gather_excite(
    channels: int,
    feat_size: Any = None,
    extra_params: bool = False,
    extent: int = 0,
    use_mlp: bool = True,
    rd_ratio: float = 1.0 / 16,
    rd_channels: int | None = None,
    rd_divisor: int = 1,
    add_maxpool: bool = False,
    act_layer: Any = nn.ReLU,
    norm_layer: Any = nn.BatchNorm2d,
    gate_layer: Any = "sigmoid",
    device: Any = None,
    dtype: Any = None,
) -> nn.Module:
    """GatherExcite.__init__ of timm 1.0.31 with ``**dd`` where it says ``*dd``."""
    import math

    from timm.layers import ConvMlp, GatherExcite, create_conv2d, get_act_layer, make_divisible

    dd = {"device": device, "dtype": dtype}
    # What timm builds without the bug: gate, extent, add_maxpool (and the pooling sizes).
    module = GatherExcite(
        channels,
        extent=extent,
        use_mlp=False,
        add_maxpool=add_maxpool,
        gate_layer=gate_layer,
        **dd,
    )
    act_layer = get_act_layer(act_layer)
    gate = module.gate
    del module.mlp, module.gate  # re-registered below, after the gather, as timm orders them
    if extra_params:
        gather = nn.Sequential()
        if extent == 0:
            assert feat_size is not None, "feat_size is needed for global extent with params"
            conv = create_conv2d(
                channels, channels, kernel_size=feat_size, stride=1, depthwise=True, **dd
            )
            gather.add_module("conv1", conv)
            if norm_layer:
                gather.add_module("norm1", nn.BatchNorm2d(channels, **dd))
        else:
            assert extent % 2 == 0
            num_conv = int(math.log2(extent))
            for i in range(num_conv):
                conv = create_conv2d(
                    channels, channels, kernel_size=3, stride=2, depthwise=True, **dd
                )
                gather.add_module(f"conv{i + 1}", conv)
                if norm_layer:
                    gather.add_module(f"norm{i + 1}", nn.BatchNorm2d(channels, **dd))
                if i != num_conv - 1:
                    gather.add_module(f"act{i + 1}", act_layer(inplace=True))
        module.gather = gather
    if not rd_channels:
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
    module.mlp = (
        ConvMlp(channels, rd_channels, act_layer=act_layer, **dd) if use_mlp else nn.Identity()
    )
    module.gate = gate
    return module
