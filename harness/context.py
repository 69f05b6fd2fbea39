"""What each template is handed: every decision about a variant, made in Python on the validated spec.

Templates only lay text out (the torchgen rule). Here we decide the reduced channel count's formula,
which pooling code path a variant takes, its gate and activation, its docstring and its imports,
and hand them over as plain strings, numbers and flags.
"""

from __future__ import annotations

import textwrap
from typing import Any

from . import spec as specs

ACTIVATIONS = {
    "relu": "nn.ReLU(inplace=True)",
    "silu": "nn.SiLU(inplace=True)",
    "gelu": "nn.GELU()",
}
# hard_sigmoid as relu6(s + 3) / 6 (timm's form), not F.hardsigmoid: the latter's backward uses a
# float32 1/6 and is off by ~3e-8 relative in float64, which the reference check catches.
GATES = {"sigmoid": "torch.sigmoid({})", "hard_sigmoid": "(F.relu6({} + 3) / 6)"}
# Max pooling goes through a helper (templates/_blocks.py.j2, _max_pool): amax when no gradient
# flows through x (values only), max(...).values when one does (its backward scatters through the
# saved indices instead of building amax's tie mask). On (32, 256, 28, 28) here: forward 0.7 vs
# 2.8 ms, forward+backward 18.6 vs 5.7 ms. The gradient goes to one index, as max_pool2d's does.
# Mean pooling as sum / count rather than mean(): the same values, and the backward then scales the
# small pooled gradient instead of a full-size expanded one (spatial attention forward+backward on
# (32, 256, 28, 28): 21.8 vs 32.0 ms here).
CHANNEL_POOLS = {
    "avg": {
        1: "x.sum(2, keepdim=True) / x.shape[2]",
        2: "x.sum((2, 3), keepdim=True) / x.shape[2:].numel()",
        3: "x.sum((2, 3, 4), keepdim=True) / x.shape[2:].numel()",
    },
    "max": {
        1: "_max_pool(x, 2)",
        2: "_max_pool(x.flatten(2), 2)[..., None]",
        3: "_max_pool(x.flatten(2), 2)[..., None, None]",
    },
}
SPATIAL_POOLS = {"mean": "x.sum(1, keepdim=True) / self.channels", "max": "_max_pool(x, 1)"}
SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def class_name(name: str) -> str:
    """``se_resnet50`` -> ``SeResnet50``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def docstring(text: str, indent: str) -> str:
    """``text`` as a triple-quoted literal that evaluates to exactly ``text`` (whatever it holds)."""
    out = []
    for ch in text.replace("\\", "\\\\"):
        if ch == "\n" or (ch.isprintable() and ch != "\t"):  # a literal tab would be re-indented
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    body = "".join(out).replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    lines = body.split("\n")
    body = "\n".join([lines[0], *(indent + line if line else "" for line in lines[1:])])
    if len(lines) > 1:
        body += "\n" + indent
    return f'"""{body}"""'


def _paragraphs(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _prose(text: str) -> str:
    """One paragraph of our own prose, wrapped to fit a class docstring (spec text is never wrapped)."""
    return textwrap.fill(text, width=92, break_on_hyphens=False, break_long_words=False)


def _shape(dims: int) -> str:
    return "(B, C, " + ", ".join(SPATIAL_NAMES[dims]) + ")"


def reduced_channels(opts: specs.ChannelOptions) -> tuple[str, str]:
    """The hidden width as exact integer arithmetic on ``channels``, and a comment saying what it is."""
    r, d, low = opts.reduction, opts.divisor, opts.min_channels
    if d is None:
        expr = f"channels // {r}" if r > 1 else "channels"
        return (
            f"max({low}, {expr})" if low > 1 or r > 1 else expr
        ), f"floor(C / {r}), at least {low}"
    low = max(low, d)
    # timm's make_divisible(C / r, d) with round_limit=0: int(C / r + d / 2) // d * d, exactly in integers.
    expr = f"(2 * channels + {r * d}) // {2 * r * d} * {d}"
    return f"max({low}, {expr})", f"C / {r} rounded to the nearest multiple of {d}, at least {low}"


def _channel_title(opts: specs.ChannelOptions) -> str:
    if opts.pooling == ("avg",):
        return "Squeeze-and-excitation channel attention (Hu et al., 2018)"
    if len(opts.pooling) == 1:
        return "Channel attention with global max pooling"
    if opts.pooling_merge == "before_mlp":
        return "Squeeze-and-excitation with max pooling averaged in (timm's add_maxpool)"
    return "CBAM channel attention (Woo et al., 2018)"


def channel_class(
    cls: str, opts: specs.ChannelOptions, dims: int, description: str = ""
) -> dict[str, Any]:
    pools = [CHANNEL_POOLS[p][dims] for p in opts.pooling]
    rd_expr, rd_comment = reduced_channels(opts)
    mlp = (
        f"a 1x1-conv MLP ``fc1`` (C -> C') -> {opts.activation} -> ``fc2`` (C' -> C), "
        f"C' = {rd_comment}"
    )
    if len(pools) == 1:
        path = "single"
        what = f"Pools ``x`` over its spatial dims ({opts.pooling[0]}), runs the pooled vector through {mlp}"
    elif opts.pooling_merge == "before_mlp":
        path = "before_mlp"
        what = f"Pools ``x`` over its spatial dims (avg and max), averages the two vectors, runs that through {mlp}"
    else:
        path = "after_mlp"
        what = (
            f"Pools ``x`` over its spatial dims (avg and max), runs each pooled vector through the same "
            f"{mlp.removeprefix('a ')}, and sums the two outputs into ``s``"
        )
    doc = _paragraphs(
        f"{_channel_title(opts)}.",
        description,
        _prose(f"{what}; returns ``x * {opts.gate}(s)``."),
        "Args:\n    channels: C, the number of input channels.\n"
        "    device, dtype: factory kwargs for every parameter.",
        f"Shape:\n    x: {_shape(dims)}; returns the same shape and dtype.",
    )
    return {
        "cls": cls,
        "doc": docstring(doc, "    "),
        "conv": f"nn.Conv{dims}d",
        "rd_expr": rd_expr,
        "rd_comment": rd_comment,
        "act": ACTIVATIONS[opts.activation],
        "bias": opts.bias,
        "path": path,
        "pools": pools,
        "pool_names": list(opts.pooling),
        "gate": GATES[opts.gate].format("s"),
        "ndim": dims + 2,
        "shape": _shape(dims).replace("C", "{self.channels}"),
    }


def spatial_class(
    cls: str, opts: specs.SpatialOptions, dims: int, description: str = ""
) -> dict[str, Any]:
    k = opts.kernel_size
    doc = _paragraphs(
        "CBAM spatial attention (Woo et al., 2018).",
        description,
        _prose(
            f"Pools ``x`` over its channels ({' and '.join(opts.pooling)}, concatenated in that order), "
            f"runs a {'x'.join([str(k)] * dims)} conv ``conv`` with padding {k // 2} from "
            f"{len(opts.pooling)} channel(s) to 1, and returns ``x * {opts.gate}(s)``."
        ),
        "Args:\n    channels: C, the number of input channels (checked on input).\n"
        "    device, dtype: factory kwargs for every parameter.",
        f"Shape:\n    x: {_shape(dims)}; returns the same shape and dtype.",
    )
    return {
        "cls": cls,
        "doc": docstring(doc, "    "),
        "conv": f"nn.Conv{dims}d",
        "in_channels": len(opts.pooling),
        "kernel_size": k,
        "padding": k // 2,
        "bias": opts.bias,
        "pools": [SPATIAL_POOLS[p] for p in opts.pooling],
        "gate": GATES[opts.gate].format("s"),
        "ndim": dims + 2,
        "shape": _shape(dims).replace("C", "{self.channels}"),
    }


def _uses_functional(*gates: str) -> bool:
    return any(g == "hard_sigmoid" for g in gates)


def _mask_doc(with_padding: bool) -> str:
    text = (
        "Masks: a boolean ``attn_mask`` is True where attention is ALLOWED (the "
        "``F.scaled_dot_product_attention`` convention); a float ``attn_mask`` is added to the "
        "scores."
    )
    if with_padding:
        text += (
            " A boolean ``key_padding_mask`` is True at PADDING positions, which are ignored (the "
            "``nn.MultiheadAttention`` convention); a float one is added to the scores."
        )
    return text + " A query row whose keys are all masked returns zeros, not NaN."


def _scale_text(scale: float | None, what: str) -> str:
    return f"1 / sqrt({what})" if scale is None else repr(scale)


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    """name, kind and description first, the kind's fields after, as a reader expects."""
    head = {k: data[k] for k in ("name", "kind", "description")}
    return {**head, **{k: v for k, v in data.items() if k not in head}}


NORMS = {
    "layernorm": "nn.LayerNorm(self.head_dim, eps=1e-5, **factory)",
    "rmsnorm": "nn.RMSNorm(self.head_dim, eps=1e-6, **factory)",
}


def _causal(spec: Any, *, explicit: bool = False) -> dict[str, Any]:
    """How causality is applied: SDPA's is_causal (top-left, when no mask is built) or a mask."""
    bottom = spec.causal_alignment == "bottom_right"
    return {
        "causal": spec.causal,
        "causal_fast": spec.causal and not bottom and not explicit,
        "causal_diagonal": "lk - lq" if bottom else "",
        "causal_what": (
            "bottom-right aligned: query i sees keys 0 .. i + Lk - Lq"
            if bottom
            else "top-left aligned: query i sees keys 0 .. i"
        ),
    }


def _causal_doc(spec: Any) -> str:
    if not spec.causal:
        return ""
    if spec.causal_alignment == "bottom_right":
        return "Causal, bottom-right aligned: query i attends to keys 0..i + Lk - Lq. "
    return "Causal: query i attends to keys 0..i (top-left aligned). "


def _dropout_doc(spec: Any) -> str:
    return (
        f"Dropout {spec.dropout!r} on the attention weights, in training only."
        if spec.dropout
        else ""
    )


def context(variant: Any, spec_path: str) -> dict[str, Any]:
    """Everything the template of ``variant.spec.kind`` needs, as plain values."""
    spec = variant.spec
    cls = class_name(spec.name)
    base: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "spec_path": spec_path,
        "cls": cls,
        "spec_literal": repr(_ordered(spec.model_dump(mode="json"))),
    }
    description = spec.description
    if spec.kind in ("channel", "spatial"):
        build = channel_class if spec.kind == "channel" else spatial_class
        return {
            **base,
            "block": build(cls, spec, spec.dims, description),
            "functional": _uses_functional(spec.gate),
            "max_pool": "max" in spec.pooling,
        }
    if spec.kind == "cbam":
        channel = channel_class(f"{cls}Channel", spec.channel, spec.dims)
        spatial = spatial_class(f"{cls}Spatial", spec.spatial, spec.dims)
        first, second = (
            ("channel", "spatial") if spec.order == "channel_first" else ("spatial", "channel")
        )
        doc = _paragraphs(
            "CBAM: convolutional block attention module (Woo et al., 2018).",
            description,
            f"Applies ``{first}`` attention, then ``{second}`` attention, in sequence.",
            "Args:\n    channels: C, the number of input channels.\n"
            "    device, dtype: factory kwargs for every parameter.",
            f"Shape:\n    x: {_shape(spec.dims)}; returns the same shape and dtype.",
        )
        return {
            **base,
            "channel": channel,
            "spatial": spatial,
            "first": first,
            "second": second,
            "doc": docstring(doc, "    "),
            "ndim": spec.dims + 2,
            "shape": _shape(spec.dims).replace("C", "{self.channels}"),
            "functional": _uses_functional(spec.channel.gate, spec.spatial.gate),
            "max_pool": "max" in spec.channel.pooling or "max" in spec.spatial.pooling,
        }
    if spec.kind == "sdpa":
        doc = _paragraphs(
            "Scaled dot-product attention: ``softmax(q k^T * scale + mask) v``.",
            description,
            _prose(
                f"Scale: {_scale_text(spec.scale, 'D')}. " + _causal_doc(spec) + _dropout_doc(spec)
            ),
            _prose(_mask_doc(with_padding=False)),
            "Shape:\n    q: (..., Lq, D), k: (..., Lk, D), v: (..., Lk, Dv);\n"
            "    attn_mask: broadcastable to (..., Lq, Lk); returns (..., Lq, Dv).",
        )
        return {
            **base,
            "doc": docstring(doc, "    "),
            "scale": None if spec.scale is None else repr(spec.scale),
            "dropout": repr(spec.dropout) if spec.dropout else None,
            **_causal(spec),
            "functional": True,
        }
    if spec.kind == "mha":
        kv_heads = spec.kv_heads or spec.heads
        extras = []
        if kv_heads != spec.heads:
            extras.append(
                f"Grouped-query attention: {kv_heads} key/value head{'s' if kv_heads > 1 else ''}, "
                f"each shared by {spec.heads // kv_heads} contiguous query heads (SDPA's enable_gqa)."
            )
        if spec.qk_norm != "none":
            extras.append(
                f"Each head's q and k go through ``q_norm`` and ``k_norm`` ({spec.qk_norm})."
            )
        if spec.return_weights != "none":
            shape = (
                "(B, Lq, Lk), averaged over heads"
                if spec.return_weights == "mean"
                else "(B, heads, Lq, Lk)"
            )
            extras.append(f"Returns ``(output, weights)``, the weights {shape}, after dropout.")
        doc = _paragraphs(
            f"Multi-head attention with {spec.heads} head{'s' if spec.heads > 1 else ''}.",
            description,
            _prose(
                "Projects ``query``, ``key`` and ``value`` (input widths may differ: embed_dim, kdim, "
                "vdim) with ``q_proj``, ``k_proj``, ``v_proj``, splits them into heads of "
                f"{'embed_dim // ' + str(spec.heads) if spec.head_dim is None else spec.head_dim} (q, k) and "
                f"{'the q/k head width' if spec.value_head_dim is None else spec.value_head_dim} (v), attends "
                f"per head with scale {_scale_text(spec.scale, 'head_dim')}, merges the heads and projects to "
                "out_dim with ``out_proj``. " + _causal_doc(spec) + _dropout_doc(spec)
            ),
            _prose(" ".join(extras)),
            _prose(_mask_doc(with_padding=True)),
            "Args:\n    embed_dim: width of ``query``.\n    kdim, vdim: widths of ``key`` and "
            "``value`` (default: embed_dim).\n    out_dim: width of the output (default: embed_dim).\n"
            "    device, dtype: factory kwargs for every parameter.",
            "Shape (batch first):\n    query: (B, Lq, embed_dim), key: (B, Lk, kdim), value: (B, Lk, vdim);\n"
            "    key_padding_mask: (B, Lk); attn_mask: (Lq, Lk) or (B or 1, heads or 1, Lq, Lk);\n"
            "    returns (B, Lq, out_dim).",
        )
        return {
            **base,
            "doc": docstring(doc, "    "),
            "heads": spec.heads,
            "kv_heads": kv_heads,
            "head_dim": spec.head_dim,
            "value_head_dim": spec.value_head_dim,
            "qkv_bias": spec.qkv_bias,
            "out_bias": spec.out_bias,
            "norm": NORMS.get(spec.qk_norm),
            "return_weights": None if spec.return_weights == "none" else spec.return_weights,
            "returns": "torch.Tensor"
            if spec.return_weights == "none"
            else "tuple[torch.Tensor, torch.Tensor]",
            "scale": None if spec.scale is None else repr(spec.scale),
            "dropout": repr(spec.dropout) if spec.dropout else None,
            **_causal(spec, explicit=spec.return_weights != "none"),
            "torch_compatible": spec.torch_compatible,
            # F serves the fused path (SDPA) and, on the explicit path, dropout.
            "functional": spec.return_weights == "none" or spec.dropout > 0,
        }
    if spec.kind == "eca":
        adaptive = spec.kernel_size is None
        size = (
            f"the paper's adaptive size, t = int(|(log2(C) + {spec.beta!r}) / {spec.gamma!r}|) made odd"
            if adaptive
            else f"{spec.kernel_size}, whatever C is"
        )
        doc = _paragraphs(
            "ECA: efficient channel attention (Wang et al., 2020).",
            description,
            _prose(
                "Average-pools ``x`` over its spatial dims, runs a 1D conv ``conv`` (no bias) across the "
                f"channel axis of the pooled vector, kernel size {size}, and returns ``x * {spec.gate}(s)``."
            ),
            "Args:\n    channels: C, the number of input channels.\n"
            "    device, dtype: factory kwargs for every parameter.",
            f"Shape:\n    x: {_shape(spec.dims)}; returns the same shape and dtype.",
        )
        return {
            **base,
            "doc": docstring(doc, "    "),
            "adaptive": adaptive,
            "kernel_size": spec.kernel_size,
            "gamma": repr(spec.gamma),
            "beta": repr(spec.beta),
            "pool": CHANNEL_POOLS["avg"][spec.dims],
            "gate": GATES[spec.gate].format("s"),
            "ndim": spec.dims + 2,
            "shape": _shape(spec.dims).replace("C", "{self.channels}"),
            "functional": _uses_functional(spec.gate),
            "max_pool": False,
        }
    raise AssertionError(f"unhandled kind {spec.kind!r}")  # the spec union admits no other
