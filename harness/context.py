"""What each template is handed: every decision about a variant, made in Python on the validated spec.

Templates only lay text out (the torchgen rule). One builder per kind (``BUILDERS``) turns a spec
into a typed, frozen context: the reduced channel count's formula, which pooling code path a variant
takes, its gate and activation, which helpers and imports it needs, its docstring, and every number
or expression the template prints. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, TypeVar

from . import spec as specs
from .spec import class_name

ACTIVATIONS = {
    "relu": "nn.ReLU(inplace=True)",
    "relu6": "nn.ReLU6(inplace=True)",
    "silu": "nn.SiLU(inplace=True)",
    "gelu": "nn.GELU()",
    "hard_swish": "nn.Hardswish(inplace=True)",
}
# hard_sigmoid as relu6(s + 3) / 6 (timm's form), not F.hardsigmoid: the latter's backward uses a
# float32 1/6 and is off by ~3e-8 relative in float64, which the reference check catches.
GATES = {"sigmoid": "torch.sigmoid({})", "hard_sigmoid": "(F.relu6({} + 3) / 6)"}
# Max pooling goes through a helper (templates/_blocks.py.j2, _max_pool): amax when no gradient
# flows through x (values only), max(...).values when one does (its backward scatters through the
# saved indices instead of building amax's tie mask). On (32, 256, 28, 28) here: forward 0.7 vs
# 2.8 ms, forward+backward 18.6 vs 5.7 ms. The gradient goes to one index, as max_pool2d's does.
# Mean pooling goes through _mean: sum / count rather than mean(), so the backward scales the small
# pooled gradient instead of a full-size expanded one (channel pooling forward+backward on
# (32, 256, 28, 28): 2.4 vs 6.1 ms here); float16/bfloat16 are summed in float32 and divided
# before rounding back, so the pooled value never overflows where the mean does not.
SPATIAL_DIMS = {1: "(2,)", 2: "(2, 3)", 3: "(2, 3, 4)"}
CHANNEL_POOLS = {
    "avg": {d: f"_mean(x, {dims})" for d, dims in SPATIAL_DIMS.items()},
    "max": {
        1: "_max_pool(x, 2)",
        2: "_max_pool(x.flatten(2), 2)[..., None]",
        3: "_max_pool(x.flatten(2), 2)[..., None, None]",
    },
}
SPATIAL_POOLS = {"mean": "_mean(x, (1,))", "max": "_max_pool(x, 1)"}
SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
NORMS = {
    "layernorm": "nn.LayerNorm(self.head_dim, eps=1e-5, **factory)",
    "rmsnorm": "nn.RMSNorm(self.head_dim, eps=1e-6, **factory)",
}


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


def _input_checks(cls: str, dims: int) -> InputChecks:
    return InputChecks(
        cls=cls,
        ndim=dims + 2,
        shape=_shape(dims).replace("C", "{self.channels}"),
        empty_test=" or ".join(f"x.shape[{2 + i}] == 0" for i in range(dims)),
        spatial_names=", ".join(SPATIAL_NAMES[dims]),
    )


LINE_LENGTH = 100  # the generated code's line length (ruff's, with which lint checks it)


def py_str(text: str) -> str:
    """A string literal as the formatter writes it: double quotes unless the text holds more double
    than single quotes; escapes as ``repr`` makes them."""
    literal = repr(text)
    if literal[0] == '"':  # repr went double: the text has single quotes and no double ones
        return literal
    if '"' not in text:
        return '"' + literal[1:-1] + '"'
    if text.count('"') > text.count("'"):
        return literal
    return '"' + literal[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'


def _scalar_literal(value: Any) -> str:
    if isinstance(value, str):
        return py_str(value)
    if isinstance(value, float):
        return repr(value).replace("e+", "e")
    return repr(value)


def width(text: str) -> int:
    """Columns ``text`` takes, as the formatter counts them: East Asian wide characters two,
    combining characters none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def py_literal(value: Any, indent: int = 0, prefix: int = 0, suffix: int = 0) -> str:
    """``value`` (dicts, lists, tuples, scalars) as the formatter lays it out at ``indent``: on one
    line when it fits after ``prefix`` columns and before ``suffix`` ones, else one item a line
    with a trailing comma."""
    if isinstance(value, dict):
        items = [(py_str(k) + ": ", v) for k, v in value.items()]
        opening, closing = "{", "}"
    elif isinstance(value, list):
        items = [("", v) for v in value]
        opening, closing = "[", "]"
    elif isinstance(value, tuple):
        items = [("", v) for v in value]
        opening, closing = "(", ")"
    else:
        return _scalar_literal(value)
    flat = opening + ", ".join(key + py_literal(v) for key, v in items) + closing
    if "\n" not in flat and indent + prefix + width(flat) + suffix <= LINE_LENGTH:
        return flat
    inner = indent + 4
    lines = [" " * inner + key + py_literal(v, inner, width(key), 1) + "," for key, v in items]
    return opening + "\n" + "\n".join(lines) + "\n" + " " * indent + closing


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    """name, kind and description first, the kind's fields after, as a reader expects."""
    head = {k: data[k] for k in ("name", "kind", "description")}
    return {**head, **{k: v for k, v in data.items() if k not in head}}


# --- typed contexts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """What every generated module has: the header, the imports, the SPEC literal, the class name."""

    name: str
    kind: str
    spec_path: str
    cls: str
    spec_literal: str
    functional: bool  # imports torch.nn.functional as F
    helpers: tuple[str, ...]  # module-level helper functions, in order: mean, max_pool, merge_masks
    stdlib_imports: tuple[str, ...]  # "import math" ...
    type_checking: tuple[str, ...]  # imports for annotations only, under ``if TYPE_CHECKING:``

    def fields(self) -> dict[str, Any]:
        """The template's variables (nested contexts stay objects)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class InputChecks:
    """What a gating block's forward checks of ``x`` (the check_input macro)."""

    cls: str
    ndim: int
    shape: str  # the expected shape, "(B, {self.channels}, H, W)"
    empty_test: str  # true when a spatial dim is empty
    spatial_names: str  # the spatial dims' names, "H, W"


@dataclass(frozen=True)
class ChannelBlock:
    cls: str
    doc: str
    conv: str
    rd_expr: str
    rd_comment: str
    act: str
    norm: str | None  # the hidden layer's norm, "nn.BatchNorm2d(self.rd_channels, **factory)"
    hidden: str  # the hidden layer before the activation, "self.bn(self.fc1(pooled))"
    bias: bool
    path: str  # single, before_mlp, after_mlp
    pools: tuple[str, ...]
    pool_names: tuple[str, ...]
    gate: str
    checks: InputChecks


@dataclass(frozen=True)
class SpatialBlock:
    cls: str
    doc: str
    conv: str
    in_channels: int
    kernel_size: int
    padding: int
    bias: bool
    norm: str | None  # "nn.BatchNorm2d": conv becomes a Sequential of conv and bn
    pooled: str  # the conv's input expression
    gate: str
    checks: InputChecks


@dataclass(frozen=True)
class ChannelModule(Module):
    block: ChannelBlock


@dataclass(frozen=True)
class SpatialModule(Module):
    block: SpatialBlock


@dataclass(frozen=True)
class CbamModule(Module):
    doc: str
    channel: ChannelBlock
    spatial: SpatialBlock
    first: str
    second: str
    checks: InputChecks


@dataclass(frozen=True)
class EcaModule(Module):
    doc: str
    adaptive: bool
    kernel_size: int | None
    min_kernel_size: int | None  # the adaptive size's lower bound, when above 1
    gamma: str
    beta: str
    circular: bool
    mlp: bool
    last_conv: str  # the k-wide conv: conv, or conv2 after the mlp's
    rd_expr: str
    rd_comment: str
    act: str
    bias: bool
    pool: str
    gate: str
    checks: InputChecks


@dataclass(frozen=True)
class EseModule(Module):
    doc: str
    conv: str
    bias: bool
    pooled: str
    gate: str
    checks: InputChecks


@dataclass(frozen=True)
class GeModule(Module):
    doc: str
    factory: bool  # the constructor builds layers: a factory dict for them
    gather_comment: tuple[str, ...]  # comment lines
    gather_setup: str  # a line before the gather (the strided convs' shared arguments), or ""
    gather: tuple[str, ...]  # the gather Sequential's entries, laid out: "conv1=nn.Conv2d(...)"
    rd_expr: str  # the MLP's hidden width ("" without an MLP)
    rd_comment: str
    conv: str
    act: str
    size_test: str | None  # true when a dim is too small for an even gather kernel
    size_text: str
    body: tuple[str, ...]  # forward's lines between the input checks and the return
    gate: str
    checks: InputChecks


@dataclass(frozen=True)
class GcModule(Module):
    doc: str
    attention: bool
    conv: str
    norm_cls: str  # the channel layer norm class the module defines
    rd_expr: str
    rd_comment: str
    act: str
    mlps: tuple[str, ...]  # the transforms, in timm's registration order: mlp_add, mlp_scale
    init: tuple[str, ...]  # reset_parameters' lines (none: no method)
    body: tuple[str, ...]  # forward's lines between the input checks and the return
    returns: str
    checks: InputChecks


@dataclass(frozen=True)
class PositionsCheck:
    """A block whose statistics divide by (positions - 1) refuses a single position (the
    check_positions macro)."""

    cls: str
    single_test: str  # true when every spatial dim is 1
    spatial_names: str
    reason: str  # why one position is not enough, for the message


@dataclass(frozen=True)
class SimamModule(Module):
    doc: str
    count: str  # the number of positions, an expression: "x.shape[2] * x.shape[3]"
    dims: str  # the spatial dims, "(2, 3)"
    e_lambda: str
    checks: InputChecks
    positions: PositionsCheck


@dataclass(frozen=True)
class SgeModule(Module):
    doc: str
    groups: int
    param_shape: str  # "1, 64, 1, 1": one scale and one shift per group
    grouped_shape: str  # the grouped view's shape, "(B, 64, C / 64, H, W)"
    group_dims: str  # its spatial dims, "(3, 4)"
    dims: str  # the spatial dims of the (B, G, ...) scores, "(2, 3)"
    checks: InputChecks
    positions: PositionsCheck


@dataclass(frozen=True)
class StripConvs:
    """The depthwise 1D convs over the strips (conv_h, conv_w): kernels and paddings as printed."""

    kernel_h: str  # "(7, 1)"
    padding_h: str  # "(3, 0)"
    kernel_w: str
    padding_w: str
    comment: str


@dataclass(frozen=True)
class ElaModule(Module):
    doc: str
    convs: StripConvs
    bias: bool
    norm: str | None  # the constructor of norm_h and norm_w
    groups: int | None  # the group norm's groups, when more than one (they must divide C)
    act: str | None
    a_h: str  # the H strip's gate, an expression of s_h
    a_w: str
    skip: bool
    checks: InputChecks


@dataclass(frozen=True)
class StripModule(Module):
    doc: str
    conv: bool
    convs: StripConvs
    bias: bool
    strips: str  # the H strip plus the W strip, (B, C, H, 1) + (B, C, 1, W)
    gate: str
    skip: bool
    checks: InputChecks


@dataclass(frozen=True)
class ScoordModule(Module):
    doc: str
    rd_expr: str
    rd_comment: str
    act: str
    bias: bool
    pool_h: str  # x averaged along W, (B, C, H, 1)
    pool_w: str  # x averaged along H, (B, C, 1, W)
    output: str  # the returned expression: x times the gate of s_h + s_w (plus x, with skip)
    checks: InputChecks


@dataclass(frozen=True)
class TripletBranch:
    """One branch of triplet attention: its name, what it pools, and its gate's expression."""

    name: str  # cw, hc, hw (the official code's submodule names)
    gate: str  # the branch's gate, rotated back to x's dims: "self.cw(x.transpose(1, 2))..."
    comment: str  # "pools H: (B, C, 1, W)"


@dataclass(frozen=True)
class TripletModule(Module):
    doc: str
    gate_cls: str
    gate_doc: str
    kernel_size: int
    padding: int
    branches: tuple[TripletBranch, ...]
    mean_gate: str  # "(cw + hc + hw) / 3"
    checks: InputChecks


@dataclass(frozen=True)
class CoordModule(ScoordModule):
    norm: bool  # bn1 after conv1
    hidden: str  # what the activation is applied to, "self.bn1(self.conv1(pooled))"


@dataclass(frozen=True)
class BamModule(Module):
    doc: str
    channel_cls: str
    channel_doc: str
    spatial_cls: str
    spatial_doc: str
    rd_expr: str
    rd_comment: str
    dilation: int
    dilated_convs: tuple[int, ...]  # the indices of the dilated convs: 0, 1, ...
    merge: str  # the operator joining the branches: "+" or "*"
    checks: InputChecks


@dataclass(frozen=True)
class NlModule(Module):
    doc: str
    conv: str  # nn.Conv2d ...
    norm: str  # nn.BatchNorm2d ...
    rd_expr: str
    rd_comment: str
    scale: str  # the scores' multiplier, an expression of channels
    scale_comment: str
    checks: InputChecks


@dataclass(frozen=True)
class SkModule(Module):
    doc: str
    num_paths: int
    split: bool
    per_path: str  # each path's input channels, an expression of channels
    per_path_comment: str
    groups: int  # the spec's groups (the module takes min(out_channels, groups))
    paths: str  # the (kernel, dilation) pairs, "((3, 1), (3, 2))"
    act: str
    rd_expr: str  # the attention's hidden width, an expression of out_channels
    rd_comment: str
    checks: InputChecks


@dataclass(frozen=True)
class BatModule(Module):
    doc: str
    transform_cls: str
    transform_doc: str
    rd_expr: str
    rd_comment: str
    block_size: int
    groups: int
    act: str  # the activation after each norm ("nn.Identity()" for none)
    transform: str  # the transform's construction, laid out: "BatTimmTransform(rd, ...)"
    norm: str  # each norm's constructor, of out_channels
    norm_cls: str | None  # the channel layer norm class the module defines (layernorm2d)
    dropout: str | None  # the Dropout2d probability, when above 0
    checks: InputChecks


@dataclass(frozen=True)
class SplatModule(Module):
    doc: str
    kernel_size: int
    padding: int
    dilation: int
    groups: int
    radix: int
    conv_groups: int  # groups * radix
    bias: bool
    norm: bool
    act: str
    mid: str  # the conv's output channels, "out_channels * 2"
    rd_expr: str  # the attention's hidden width, an expression of channels
    rd_comment: str
    reach: int  # the least H and W giving one output position (1: any)
    conv_out: str  # the conv, its norm and activation applied to x
    attn: str  # the pooled vector through fc1 .. fc2, "{}" for the pooled vector
    checks: InputChecks


@dataclass(frozen=True)
class SelfAttnOptions:
    """What a self-attention layer's constructor and forward check (templates/_self_attn.py.j2)."""

    cls: str
    num_heads: int
    dim_qk_expr: str  # the query/key width per head, an expression of out_channels
    dim_qk_comment: str
    qkv_bias: bool
    feat_size_used: bool  # the constructor requires feat_size and keeps it as self.feat_size
    feat_size_why: str
    size_checks: tuple[tuple[str, str], ...]  # (test on x, what was expected) in forward


@dataclass(frozen=True)
class LambdaModule(Module):
    doc: str
    a: SelfAttnOptions
    r: int | None


@dataclass(frozen=True)
class BottleneckModule(Module):
    doc: str
    a: SelfAttnOptions
    pos_cls: str
    pos_doc: str
    scale_pos_embed: bool


@dataclass(frozen=True)
class HaloModule(Module):
    doc: str
    a: SelfAttnOptions
    pos_cls: str
    pos_doc: str
    scale_pos_embed: bool
    block_size: int
    halo_size: int
    win_size: int
    pool_on_stride: bool  # stride 2 average-pools the output (else it strides the queries)
    stride_comment: str


@dataclass(frozen=True)
class Causality:
    """How causality is applied: SDPA's is_causal (top-left, when no mask is built) or a mask."""

    causal: bool
    fast: bool  # SDPA's is_causal when no other mask is given
    diagonal: str  # tril's diagonal argument ("" for the main diagonal)
    what: str


@dataclass(frozen=True)
class Window:
    """A sliding window's mask: which (query, key) index offsets are allowed."""

    what: str  # the comment: "Sliding window of 4 keys, causal: ..."
    shift: str  # added to the query index to align it with the keys: "", " + lk - lq"
    test: str  # the allowed offsets (query index - key index): "(offset >= 0) & (offset < 4)"


@dataclass(frozen=True)
class Explicit:
    """The explicit softmax path (rather than SDPA), and what it adds."""

    why: str  # the comment saying why the path is explicit
    scale: str  # the scale expression
    softcap: str | None  # the softcap literal


@dataclass(frozen=True)
class SdpaModule(Module):
    doc: str
    scale: str | None
    dropout: str | None
    causality: Causality
    window: Window | None
    explicit: Explicit | None


@dataclass(frozen=True)
class MhaModule(Module):
    doc: str
    heads: int
    kv_heads: int
    group: int  # query heads per key/value head
    head_dim: int | None
    value_head_dim: str  # an expression: self.head_dim, or a constant
    qkv_bias: bool
    out_bias: bool
    bias_absent_test: str  # "None" / "not None": what from_torch expects of in_proj_bias
    norm: str | None
    return_weights: str | None
    weights_reduction: str  # ".mean(1)" or ""
    returns: str
    scale: str  # an expression
    sdpa_scale: str | None  # SDPA's scale argument, when not its default
    dropout: str | None
    dropout_value: str  # the dropout probability, 0.0 included (from_torch compares it)
    causality: Causality
    torch_compatible: bool
    bias_text: str  # "biases" / "no biases", for from_torch's docstring
    window: Window | None
    explicit: Explicit | None  # the explicit softmax path (returned weights, softcap)
    rope: Rope | None
    alibi_slopes: str | None  # a tuple literal, one slope per head
    positions: bool  # forward takes positions= and key_positions= (RoPE, ALiBi)
    query_start: str  # the first default query position: "0", "lk - lq", "past"
    key_start: str  # the first default key position: "0", "past"
    cache: bool  # forward takes cache= (causal variants: incremental decoding)
    shift: str | None  # keys before the first query's own, the causal mask's diagonal


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding: the layout's lines and the rotary width."""

    doc: str  # the _rotate docstring
    base: str  # theta, a float literal
    width: str | None  # R as a constant; None: computed at construction (head_dim from embed_dim)
    width_expr: str  # R at construction: "round(self.head_dim * 0.5)", "self.head_dim"
    interleaved: bool
    partial: bool  # R < head_dim: the rest of each head passes through


Ctx = TypeVar("Ctx", bound=Module)
S = TypeVar("S", bound=specs.AnySpec)

#: kind -> its builder: (validated spec, the fields every module shares) -> the template's context.
BUILDERS: dict[str, Callable[[Any, dict[str, Any]], Module]] = {}


def builder(
    kind: str,
) -> Callable[[Callable[[S, dict[str, Any]], Ctx]], Callable[[S, dict[str, Any]], Ctx]]:
    def register(fn: Callable[[S, dict[str, Any]], Ctx]) -> Callable[[S, dict[str, Any]], Ctx]:
        BUILDERS[kind] = fn
        return fn

    return register


def context(spec: specs.AnySpec, spec_path: str) -> Module:
    """Everything the template of ``spec.kind`` needs, as typed plain values."""
    base = {
        "name": spec.name,
        "kind": spec.kind,
        "spec_path": spec_path,
        "cls": class_name(spec.name),
        "spec_literal": py_literal(_ordered(spec.model_dump(mode="json")), prefix=len("SPEC = ")),
        "stdlib_imports": (),
        "type_checking": (),
    }
    return BUILDERS[spec.kind](spec, base)


# --- channel, spatial, cbam, eca -----------------------------------------------------------------------


def hidden_width(
    reduction: int, divisor: int | None, min_channels: int = 1, round_limit: float = 0.0
) -> tuple[str, str]:
    """The hidden width as an expression of ``channels``, and a comment saying what it is.

    Without a divisor, floor(C / r) in integers (the SE and CBAM papers). With one, timm's
    make_divisible computed as timm computes it, in floats from C * (1 / r), so a variant that mirrors
    a timm module has its widths at every C, rounding boundaries included.
    """
    r, d, low = reduction, divisor, min_channels
    if d is None:
        expr = f"channels // {r}" if r > 1 else "channels"
        return (
            f"max({low}, {expr})" if low > 1 or r > 1 else expr
        ), f"floor(C / {r}), at least {low}"
    low = max(low, d)
    limit = (
        f", one {d} more if that loses over {1 - round_limit:g} of C / {r}" if round_limit else ""
    )
    return (
        f"_make_divisible(channels * {_scalar_literal(1 / r)}, {d}, {low}, {_scalar_literal(round_limit)})",
        f"C / {r} rounded to the nearest multiple of {d}, at least {low}{limit} (timm's make_divisible)",
    )


def reduced_channels(opts: specs.ChannelOptions) -> tuple[str, str]:
    return hidden_width(opts.reduction, opts.divisor, opts.min_channels, opts.round_limit)


def _channel_title(opts: specs.ChannelOptions) -> str:
    if opts.pooling == ("avg",):
        return "Squeeze-and-excitation channel attention (Hu et al., 2018)"
    if len(opts.pooling) == 1:
        return "Channel attention with global max pooling"
    if opts.pooling_merge == "before_mlp":
        return "Squeeze-and-excitation with max pooling averaged in (timm's add_maxpool)"
    return "CBAM channel attention (Woo et al., 2018)"


def _image_doc(dims: int) -> tuple[str, str]:
    return (
        "Args:\n    channels: C, the number of input channels.\n"
        "    device, dtype: factory kwargs for every parameter.",
        f"Shape:\n    x: {_shape(dims)}; returns the same shape and dtype.",
    )


def channel_block(
    cls: str, opts: specs.ChannelOptions, dims: int, description: str = ""
) -> ChannelBlock:
    pools = tuple(CHANNEL_POOLS[p][dims] for p in opts.pooling)
    rd_expr, rd_comment = reduced_channels(opts)
    norm = " -> batchnorm ``bn``" if opts.norm == "batchnorm" else ""
    mlp = (
        f"a 1x1-conv MLP ``fc1`` (C -> C'){norm} -> {opts.activation} -> ``fc2`` (C' -> C), "
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
        *_image_doc(dims),
    )
    return ChannelBlock(
        cls=cls,
        doc=docstring(doc, "    "),
        conv=f"nn.Conv{dims}d",
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        act=ACTIVATIONS[opts.activation],
        norm=f"nn.BatchNorm{dims}d(self.rd_channels, **factory)"
        if opts.norm == "batchnorm"
        else None,
        hidden="self.bn(self.fc1(pooled))" if opts.norm == "batchnorm" else "self.fc1(pooled)",
        bias=opts.bias,
        path=path,
        pools=pools,
        pool_names=opts.pooling,
        gate=GATES[opts.gate].format("s"),
        checks=_input_checks(cls, dims),
    )


def spatial_block(
    cls: str, opts: specs.SpatialOptions, dims: int, description: str = ""
) -> SpatialBlock:
    k = opts.kernel_size
    pools = [SPATIAL_POOLS[p] for p in opts.pooling]
    if len(pools) == 1:
        pooled, in_channels, how = pools[0], 1, f"({opts.pooling[0]})"
    elif opts.pooling_merge == "average":
        pooled, in_channels, how = (
            f"0.5 * ({pools[0]} + {pools[1]})",
            1,
            "(the average of mean and max)",
        )
    else:
        pooled = f"torch.cat([{', '.join(pools)}], dim=1)"
        in_channels, how = 2, f"({' and '.join(opts.pooling)}, concatenated in that order)"
    norm = opts.norm == "batchnorm"
    conv_name = "``conv.conv`` and a batchnorm ``conv.bn``" if norm else "``conv``"
    doc = _paragraphs(
        "CBAM spatial attention (Woo et al., 2018).",
        description,
        _prose(
            f"Pools ``x`` over its channels {how}, runs a {'x'.join([str(k)] * dims)} conv "
            f"{conv_name} with padding {k // 2} from {in_channels} channel(s) to 1, and returns "
            f"``x * {opts.gate}(s)``."
        ),
        "Args:\n    channels: C, the number of input channels (checked on input).\n"
        "    device, dtype: factory kwargs for every parameter.",
        f"Shape:\n    x: {_shape(dims)}; returns the same shape and dtype.",
    )
    return SpatialBlock(
        cls=cls,
        doc=docstring(doc, "    "),
        conv=f"nn.Conv{dims}d",
        in_channels=in_channels,
        kernel_size=k,
        padding=k // 2,
        bias=opts.bias,
        norm=f"nn.BatchNorm{dims}d" if norm else None,
        pooled=pooled,
        gate=GATES[opts.gate].format("s"),
        checks=_input_checks(cls, dims),
    )


def _helpers(*code: str, masks: bool = False) -> tuple[str, ...]:
    """The module-level helpers the generated expressions (and masks) call, in a fixed order."""
    text = " ".join(code)
    wanted = {
        "mean": "_mean(" in text,
        "max_pool": "_max_pool(" in text,
        "make_divisible": "_make_divisible(" in text,
        "rel_logits": "_rel_logits_1d(" in text,
        "merge_masks": masks,
    }
    return tuple(name for name, used in wanted.items() if used)


def _stdlib(*blocks: SpatialBlock) -> tuple[str, ...]:
    return ("from collections import OrderedDict",) if any(b.norm for b in blocks) else ()


def _functional(*gates: str) -> bool:
    return any(g == "hard_sigmoid" for g in gates)


@builder("channel")
def _channel(spec: specs.ChannelSpec, base: dict[str, Any]) -> ChannelModule:
    block = channel_block(base["cls"], spec, spec.dims, spec.description)
    return ChannelModule(
        **base,
        functional=_functional(spec.gate),
        helpers=_helpers(*block.pools, block.rd_expr),
        block=block,
    )


@builder("spatial")
def _spatial(spec: specs.SpatialSpec, base: dict[str, Any]) -> SpatialModule:
    block = spatial_block(base["cls"], spec, spec.dims, spec.description)
    return SpatialModule(
        **{**base, "stdlib_imports": _stdlib(block)},
        functional=_functional(spec.gate),
        helpers=_helpers(block.pooled),
        block=block,
    )


@builder("cbam")
def _cbam(spec: specs.CbamSpec, base: dict[str, Any]) -> CbamModule:
    cls = base["cls"]
    channel = channel_block(f"{cls}Channel", spec.channel, spec.dims)
    spatial = spatial_block(f"{cls}Spatial", spec.spatial, spec.dims)
    first, second = (
        ("channel", "spatial") if spec.order == "channel_first" else ("spatial", "channel")
    )
    doc = _paragraphs(
        "CBAM: convolutional block attention module (Woo et al., 2018).",
        spec.description,
        f"Applies ``{first}`` attention, then ``{second}`` attention, in sequence.",
        *_image_doc(spec.dims),
    )
    return CbamModule(
        **{**base, "stdlib_imports": _stdlib(spatial)},
        functional=_functional(spec.channel.gate, spec.spatial.gate),
        helpers=_helpers(*channel.pools, channel.rd_expr, spatial.pooled),
        doc=docstring(doc, "    "),
        channel=channel,
        spatial=spatial,
        first=first,
        second=second,
        checks=_input_checks(base["cls"], spec.dims),
    )


@builder("eca")
def _eca(spec: specs.EcaSpec, base: dict[str, Any]) -> EcaModule:
    adaptive = spec.kernel_size is None
    at_least = f", at least {spec.min_kernel_size}" if spec.min_kernel_size > 1 else ""
    size = (
        f"the paper's adaptive size, t = int(|(log2(C) + {spec.beta!r}) / {spec.gamma!r}|) made odd{at_least}"
        if adaptive
        else f"{spec.kernel_size}, whatever C is"
    )
    circular = spec.padding == "circular"
    padding = (
        " with circular padding (the last channels wrap around to the first)" if circular else ""
    )
    if spec.mlp:
        rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, spec.round_limit)
        what = (
            f"runs a 1x1 conv ``conv`` from it to C' channels (C' = {rd_comment}), "
            f"{spec.activation}, then a conv ``conv2`` back to one channel across the channel axis"
        )
    else:
        rd_expr = rd_comment = ""
        what = f"runs a 1D conv ``conv`` ({'with' if spec.bias else 'no'} bias) across its channel axis"
    doc = _paragraphs(
        "ECA: efficient channel attention (Wang et al., 2020).",
        spec.description,
        _prose(
            f"Average-pools ``x`` over its spatial dims, {what}, kernel size {size}{padding}, and "
            f"returns ``x * {spec.gate}(s)``."
        ),
        *_image_doc(spec.dims),
    )
    pool = CHANNEL_POOLS["avg"][spec.dims]
    base = {**base, "stdlib_imports": ("import math",) if adaptive else ()}
    return EcaModule(
        **base,
        functional=_functional(spec.gate) or circular,
        helpers=_helpers(pool, rd_expr),
        doc=docstring(doc, "    "),
        adaptive=adaptive,
        kernel_size=spec.kernel_size,
        min_kernel_size=spec.min_kernel_size if spec.min_kernel_size > 1 else None,
        gamma=repr(spec.gamma),
        beta=repr(spec.beta),
        circular=circular,
        mlp=spec.mlp,
        last_conv="conv2" if spec.mlp else "conv",
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        act=ACTIVATIONS[spec.activation],
        bias=spec.bias,
        pool=pool,
        gate=GATES[spec.gate].format("s"),
        checks=_input_checks(base["cls"], spec.dims),
    )


@builder("ese")
def _ese(spec: specs.EseSpec, base: dict[str, Any]) -> EseModule:
    pools = [CHANNEL_POOLS[p][spec.dims] for p in spec.pooling]
    pooled = pools[0] if len(pools) == 1 else f"0.5 * ({pools[0]} + {pools[1]})"
    how = spec.pooling[0] if len(pools) == 1 else "the average of avg and max"
    doc = _paragraphs(
        "Effective squeeze-excitation (Lee and Park, 2020, CenterMask).",
        spec.description,
        _prose(
            f"Pools ``x`` over its spatial dims ({how}), runs the pooled vector through one 1x1 "
            f"conv ``fc`` (C -> C, {'with' if spec.bias else 'no'} bias: no reduction, so no "
            f"information lost to a bottleneck), and returns ``x * {spec.gate}(s)``."
        ),
        *_image_doc(spec.dims),
    )
    return EseModule(
        **base,
        functional=_functional(spec.gate),
        helpers=_helpers(pooled),
        doc=docstring(doc, "    "),
        conv=f"nn.Conv{spec.dims}d",
        bias=spec.bias,
        pooled=pooled,
        gate=GATES[spec.gate].format("s"),
        checks=_input_checks(base["cls"], spec.dims),
    )


# --- ge, gc --------------------------------------------------------------------------------------------


def py_call(func: str, args: list[str], indent: int, prefix: int = 0, suffix: int = 0) -> str:
    """``func(args)`` as the formatter lays it out at ``indent``, after ``prefix`` columns and before
    ``suffix`` ones: on one line when it fits, else the arguments on one line of their own, else one
    argument a line with a trailing comma."""
    joined = ", ".join(args)
    flat = f"{func}({joined})"
    if indent + prefix + width(flat) + suffix <= LINE_LENGTH:
        return flat
    inner = " " * (indent + 4)
    if indent + 4 + width(joined) <= LINE_LENGTH:
        return f"{func}(\n{inner}{joined}\n{' ' * indent})"
    return f"{func}(\n" + "".join(f"{inner}{a},\n" for a in args) + " " * indent + ")"


def _sizes(sizes: tuple[int, ...]) -> str:
    """A kernel size or padding as a conv takes it: an int when every dim agrees, else a tuple."""
    return str(sizes[0]) if len(set(sizes)) == 1 else repr(tuple(sizes))


def _cross(sizes: tuple[int, ...]) -> str:
    return "x".join(map(str, sizes))


def _gather_layers(spec: specs.GeSpec) -> tuple[list[str], str, str]:
    """The gather Sequential's entries, laid out at the template's indent, a line of shared
    arguments before it (or ""), and what the gather does."""
    dims, conv = spec.dims, f"nn.Conv{spec.dims}d"
    norm = f"nn.BatchNorm{dims}d(channels, **factory)" if spec.norm == "batchnorm" else None
    entries: list[str] = []
    if spec.extent == 0:
        assert spec.feat_size is not None  # the spec's rule
        k = spec.feat_size
        pad = tuple((s - 1) // 2 for s in k)
        args = ["channels", "channels", _sizes(k), f"padding={_sizes(pad)}"]
        args += ["groups=channels", "bias=False", "**factory"]
        entries.append("conv1=" + py_call(conv, args, 16, len("conv1="), 1))
        if norm:
            entries.append(f"norm1={norm}")
        what = (
            f"one depthwise {_cross(k)} conv ``gather.conv1``"
            f"{' and a batchnorm ``gather.norm1``' if norm else ''}, padded {_sizes(pad)} on each "
            f"side as timm pads it, so each position gathers the {_cross(k)} window around itself "
            "(the paper's global GE-theta is unpadded: one value per channel)"
        )
        return entries, "", what
    n = spec.extent.bit_length() - 1
    for i in range(1, n + 1):
        entries.append(f"conv{i}={conv}(channels, channels, **depthwise, **factory)")
        if norm:
            entries.append(f"norm{i}={norm}")
        if i < n:
            entries.append(f"act{i}={ACTIVATIONS[spec.activation]}")
    setup = (
        'depthwise = {"kernel_size": 3, "stride": 2, "padding": 1, "groups": channels, '
        '"bias": False}'
    )
    kernel = _cross((3,) * dims)
    convs = "``gather.conv1``" + (f" .. ``gather.conv{n}``" if n > 1 else "")
    what = (
        f"{n} depthwise {kernel} conv{'s' if n > 1 else ''} with stride 2 and padding 1 {convs}"
        f"{', each followed by a batchnorm' if norm else ''}"
        f"{f', {spec.activation} between them' if n > 1 else ''}"
    )
    return entries, setup, what


def _pool_window(spec: specs.GeSpec) -> tuple[str, str]:
    """The gather's pooling over each position's neighbourhood (extent > 0, no parameters)."""
    k, e, d = 2 * spec.extent - 1, spec.extent, spec.dims
    avg = f"F.avg_pool{d}d(x, {k}, stride={e}, padding={e - 1}, count_include_pad=False)"
    mx = f"F.max_pool{d}d(x, {k}, stride={e}, padding={e - 1})"
    if d == 1:  # see _MAX_POOL1D_NOTE
        mx = f"F.max_pool1d(x, {k}, stride={e}, padding={e - 1}, return_indices=True)[0]"
    return avg, mx


# F.max_pool1d without indices makes torch.export specialise the length (2.13); with them it
# stays dynamic, and the values are the same.
_MAX_POOL1D_NOTE = "# With indices: plain max_pool1d makes torch.export specialise the length."


@builder("ge")
def _ge(spec: specs.GeSpec, base: dict[str, Any]) -> GeModule:
    cls, dims = base["cls"], spec.dims
    gather: tuple[str, ...] = ()
    gather_comment: tuple[str, ...] = ()
    gather_setup = ""
    body: list[str] = []
    resize = spec.extent > 0
    size_test, size_text = None, ""
    if spec.extra_params:
        entries, gather_setup, gather_what = _gather_layers(spec)
        gather = tuple(entries)
        gather_comment = tuple(
            textwrap.wrap(f"Gather: {gather_what}.", width=LINE_LENGTH - 10, break_on_hyphens=False)
        )
        pooled = "self.gather(x)"
        if spec.extent == 0:
            assert spec.feat_size is not None
            even = [i for i, s in enumerate(spec.feat_size) if s % 2 == 0]
            resize = bool(even)  # an even kernel loses one position per dim
            if even:
                size_test = " or ".join(f"x.shape[{2 + i}] < 2" for i in even)
                size_text = (
                    f"at least 2 positions in {', '.join(SPATIAL_NAMES[dims][i] for i in even)} "
                    f"(the {_cross(spec.feat_size)} gather kernel is even there)"
                )
        how = f"through {gather_what}"
    elif spec.extent == 0:
        pools = [CHANNEL_POOLS[p][dims] for p in spec.pooling]
        pooled = pools[0] if len(pools) == 1 else f"0.5 * ({pools[0]} + {pools[1]})"
        merged = spec.pooling[0] if len(pools) == 1 else "the average of avg and max"
        how = f"over its whole spatial extent ({merged}, as SE)"
    else:
        avg, mx = _pool_window(spec)
        k, e = 2 * spec.extent - 1, spec.extent
        window = "x".join([str(k)] * dims)
        if len(spec.pooling) == 2:
            body += [
                f"# Gather: each position's {window} neighbourhood, stride {e}: the average (padding",
                "# not counted) and the maximum, averaged.",
                f"avg = {avg}",
            ]
            if dims == 1:
                body.append(_MAX_POOL1D_NOTE)
            pooled = f"0.5 * (avg + {mx})"
            what = "mean and max averaged, padding not counted in the mean"
        else:
            body.append(
                f"# Gather: each position's {window} neighbourhood, stride {e}"
                + (" (padding not counted)." if spec.pooling == ("avg",) else ".")
            )
            if dims == 1 and spec.pooling == ("max",):
                body.append(_MAX_POOL1D_NOTE)
            pooled = avg if spec.pooling == ("avg",) else mx
            what = "average, padding not counted" if spec.pooling == ("avg",) else "maximum"
        how = f"over each position's {window} neighbourhood with stride {e} ({what})"
    if spec.mlp:
        rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, spec.round_limit)
        mlp_what = (
            f", runs that through a 1x1-conv MLP ``mlp.fc1`` (C -> C') -> {spec.activation} -> "
            f"``mlp.fc2`` (C' -> C), C' = {rd_comment}"
        )
        excite = f"self.mlp({'pooled' if body else pooled})"
    else:
        rd_expr = rd_comment = ""
        mlp_what = ""
        excite = "pooled" if body else pooled
    if body:
        body.append(f"pooled = {pooled}")
    if resize:
        body += [
            "# Excite: the gate map back to the input's size (nearest neighbour).",
            f's = F.interpolate({excite}, size=x.shape[2:], mode="nearest")',
        ]
    else:
        body.append(f"s = {excite}")
    resized = ", resizes the map to the input's size (nearest neighbour)" if resize else ""
    doc = _paragraphs(
        "Gather-excite (Hu et al., 2018).",
        spec.description,
        _prose(f"Gathers ``x`` {how}{mlp_what}{resized}, and returns ``x * {spec.gate}(s)``."),
        *_image_doc(dims),
    )
    code = [*body, rd_expr]
    return GeModule(
        **{
            **base,
            "stdlib_imports": ("from collections import OrderedDict",)
            if gather or spec.mlp
            else (),
        },
        functional=_functional(spec.gate) or any("F." in line for line in body),
        helpers=_helpers(*code),
        doc=docstring(doc, "    "),
        factory=bool(gather) or spec.mlp,
        gather_comment=gather_comment,
        gather_setup=gather_setup,
        gather=gather,
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        conv=f"nn.Conv{dims}d",
        act=ACTIVATIONS[spec.activation],
        size_test=size_test,
        size_text=size_text,
        body=tuple(body),
        gate=GATES[spec.gate].format("s"),
        checks=_input_checks(cls, dims),
    )


@builder("gc")
def _gc(spec: specs.GcSpec, base: dict[str, Any]) -> GcModule:
    cls, dims = base["cls"], spec.dims
    rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, spec.round_limit)
    attention = spec.context == "attention"
    positions = "*".join(SPATIAL_NAMES[dims])
    if attention:
        flat = "x" if dims == 1 else "x.flatten(2)"
        tail = {1: "", 2: "[..., None]", 3: "[..., None, None]"}[dims]
        logits = "self.conv_attn(x)" if dims == 1 else "self.conv_attn(x).flatten(2)"
        body: tuple[str, ...] = (
            f"# Context: softmax over the {positions} positions of conv_attn's logits, then the",
            "# weighted sum of x (one C-vector per sample).",
            f"weights = torch.softmax({logits}, dim=-1)",
            f"context = ({flat} @ weights.mT){tail}" if tail else "context = x @ weights.mT",
        )
        context_what = (
            f"a 1x1 conv ``conv_attn`` gives one logit per position, softmax over the {positions} "
            "positions, and the context is the weighted sum of ``x``"
        )
    else:
        body = (f"context = {CHANNEL_POOLS['avg'][dims]}",)
        context_what = "the context is the spatial mean of ``x``"
    mlps = tuple(
        name for name, on in (("mlp_add", spec.fuse_add), ("mlp_scale", spec.fuse_scale)) if on
    )
    gate = GATES[spec.gate].format("self.mlp_scale(context)")
    if spec.fuse_scale and spec.fuse_add:
        body += (f"out = x * {gate}",)
        returns = "out + self.mlp_add(context)"
        fusion = (
            f"``x * {spec.gate}(mlp_scale(context)) + mlp_add(context)`` (both fusions, scale "
            "first, as timm applies them)"
        )
    elif spec.fuse_scale:
        returns = f"x * {gate}"
        fusion = f"``x * {spec.gate}(mlp_scale(context))`` (fusion by scaling, timm's gc)"
    else:
        returns = "x + self.mlp_add(context)"
        fusion = "``x + mlp_add(context)`` (fusion by addition, the paper's and timm's gca)"
    init = []
    if attention:
        init.append(
            'nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")'
        )
    if spec.fuse_add:
        init.append("nn.init.zeros_(self.mlp_add.fc2.weight)")
    names = " and ".join(f"``{m}``" for m in mlps)
    init_doc = ""
    if init:
        parts = []
        if attention:
            parts.append("``conv_attn.weight`` Kaiming-normal (fan_in, relu)")
        if spec.fuse_add:
            parts.append(
                "``mlp_add.fc2.weight`` zeros, so a fresh block adds only fc2's bias (timm does "
                "this whatever its init_last_zero says, a flag it stores and never reads)"
            )
        init_doc = _prose(
            "Initialised as timm initialises GlobalContext: " + "; ".join(parts) + "."
        )
    doc = _paragraphs(
        "Global context block (Cao et al., 2019, GCNet).",
        spec.description,
        _prose(
            f"Context modelling: {context_what}. Transform{'s' if len(mlps) > 1 else ''} {names}: "
            f"a 1x1 conv ``fc1`` (C -> C', C' = {rd_comment}), a layer norm ``norm`` over C' "
            f"(eps 1e-6), {spec.activation}, a 1x1 conv ``fc2`` (C' -> C). Returns {fusion}."
        ),
        init_doc,
        *_image_doc(dims),
    )
    return GcModule(
        **{**base, "stdlib_imports": ("from collections import OrderedDict",)},
        functional=True,  # the channel layer norm is F.layer_norm
        helpers=_helpers(*body, rd_expr),
        doc=docstring(doc, "    "),
        attention=attention,
        conv=f"nn.Conv{dims}d",
        norm_cls="ChannelLayerNorm",
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        act=ACTIVATIONS[spec.activation],
        mlps=mlps,
        init=tuple(init),
        body=body,
        returns=returns,
        checks=_input_checks(cls, dims),
    )


# --- simam, sge: statistics over the positions ---------------------------------------------------------


def _positions_check(cls: str, dims: int, reason: str) -> PositionsCheck:
    return PositionsCheck(
        cls=cls,
        single_test=" and ".join(f"x.shape[{2 + i}] == 1" for i in range(dims)),
        spatial_names=", ".join(SPATIAL_NAMES[dims]),
        reason=reason,
    )


def _positions(dims: int) -> str:
    """The number of positions as the formulas print it: H * W."""
    return " * ".join(SPATIAL_NAMES[dims])


def _shifted_dims(dims: int, by: int) -> str:
    return "(" + ", ".join(str(by + i) for i in range(dims)) + ("," if dims == 1 else "") + ")"


_HALF_STATISTICS = (
    "Statistics are computed in float32 for float16 and bfloat16 inputs (the gate is rounded "
    "back to the input's dtype): {what} overflow float16 at the magnitudes of real activations."
)


@builder("simam")
def _simam(spec: specs.SimamSpec, base: dict[str, Any]) -> SimamModule:
    dims = spec.dims
    m = _positions(dims)
    e_lambda = _scalar_literal(spec.e_lambda)
    doc = _paragraphs(
        "SimAM: a simple, parameter-free attention module (Yang et al., ICML 2021).",
        spec.description,
        "Gates every neuron by how much it stands out of its channel; no parameters. Per "
        f"channel,\nover its {m} positions:\n\n"
        f"    n = {m} - 1\n"
        "    d = (x - mean(x))^2\n"
        "    v = sum(d) / n\n"
        f"    1 / e* = d / (4 (v + lambda)) + 1/2,  lambda = {e_lambda}\n\n"
        "and returns ``x * sigmoid(1 / e*)``, e* being the neuron's minimal energy.",
        _prose(
            f"v divides by n = {m} - 1, as the paper's PyTorch-style code and the official code "
            f"do (the text of its closed form averages over all {m} positions). One position "
            f"leaves v undefined (n = 0), so an input with {m} = 1 raises ValueError rather "
            "than returning NaN. " + _HALF_STATISTICS.format(what="squared deviations above 256")
        ),
        "Args:\n    channels: C, the number of input channels (checked on input).\n"
        "    device, dtype: accepted for the common constructor; SimAM has no parameters or\n"
        "        buffers.",
        f"Shape:\n    x: {_shape(dims)}, {m} >= 2; returns the same shape and dtype.",
    )
    return SimamModule(
        **base,
        functional=False,
        helpers=_helpers("_mean("),
        doc=docstring(doc, "    "),
        count=" * ".join(f"x.shape[{2 + i}]" for i in range(dims)),
        dims=SPATIAL_DIMS[dims],
        e_lambda=e_lambda,
        checks=_input_checks(base["cls"], dims),
        positions=_positions_check(base["cls"], dims, f"SimAM's variance divides by {m} - 1"),
    )


@builder("sge")
def _sge(spec: specs.SgeSpec, base: dict[str, Any]) -> SgeModule:
    dims, g = spec.dims, spec.groups
    m = _positions(dims)
    groups = "one group of C channels" if g == 1 else f"{g} groups of C / {g} channels"
    doc = _paragraphs(
        "Spatial group-wise enhance (Li, Hu and Yang, 2019).",
        spec.description,
        f"Splits the C channels into {groups}. Per group, over its\n{m} positions i "
        "with feature vectors x_i:\n\n"
        "    g = mean_i(x_i)                          the group's mean vector (average pooling)\n"
        "    c_i = g . x_i                            each position's similarity with it\n"
        "    n_i = (c_i - mean(c)) / (std(c) + 1e-5)  normalised over the positions\n"
        "    a_i = weight * n_i + bias                one weight and one bias per group\n\n"
        "and returns ``x_i * sigmoid(a_i)``: one spatial gate shared by the group's channels.",
        _prose(
            "As in the official code (PytorchInsight): std is the unbiased standard deviation, "
            f"dividing by {m} - 1 (torch.std; the paper's text divides by {m}), eps is added to "
            "it, not under the square root, and ``weight`` starts at 0 and ``bias`` at 1, so "
            "every gate starts at sigmoid(1) (External-Attention-pytorch starts ``bias`` at 0). "
            f"One position leaves std undefined (it divides by zero), so an input with {m} = 1 "
            "raises ValueError rather than returning NaN. "
            + _HALF_STATISTICS.format(what="the products of x with its mean and their sums")
        ),
        f"Args:\n    channels: C, divisible by {g}.\n"
        "    device, dtype: factory kwargs for every parameter.",
        f"Shape:\n    x: {_shape(dims)}, {m} >= 2; returns the same shape and dtype.",
    )
    return SgeModule(
        **base,
        functional=False,
        helpers=_helpers("_mean("),
        doc=docstring(doc, "    "),
        groups=g,
        param_shape=", ".join(["1", str(g), *["1"] * dims]),
        grouped_shape=_shape(dims).replace("C", f"{g}, C / {g}"),
        group_dims=_shifted_dims(dims, 3),
        dims=SPATIAL_DIMS[dims],
        checks=_input_checks(base["cls"], dims),
        positions=_positions_check(
            base["cls"], dims, f"the standard deviation over positions divides by {m} - 1"
        ),
    )


# --- ela, strip ------------------------------------------------------------------------------------

# Each strip is x averaged along the other axis, kept: along W (dim 3) for H, along H (dim 2) for W.
STRIP_POOLS = {"h": "_mean(x, (3,))", "w": "_mean(x, (2,))"}
STRIP_NORMS = {
    "batchnorm": "nn.BatchNorm2d(channels, **factory)",
    "groupnorm": "nn.GroupNorm({}, channels, eps=1e-5, **factory)",
}


def _strip_convs(k: int) -> StripConvs:
    p = k // 2
    return StripConvs(
        kernel_h=f"({k}, 1)",
        padding_h=f"({p}, 0)",
        kernel_w=f"(1, {k})",
        padding_w=f"(0, {p})",
        comment=(
            f"Depthwise 1D convs: {k} x 1 along H, 1 x {k} along W; padding {p} keeps each strip's length."
        ),
    )


def _skip_doc(skip: bool) -> str:
    return " plus ``x`` (a residual: the output is no longer a gated ``x``)" if skip else ""


@builder("ela")
def _ela(spec: specs.ElaSpec, base: dict[str, Any]) -> ElaModule:
    k = spec.kernel_size
    groups = spec.norm_groups
    norm = STRIP_NORMS[spec.norm].format(groups) if spec.norm != "none" else None
    act = ACTIVATIONS[spec.activation] if spec.activation != "none" else None

    def strip(axis: str) -> str:
        s = f"s_{axis}"
        if norm:
            s = f"self.norm_{axis}({s})"
        if act:
            s = f"self.act({s})"
        gated = GATES[spec.gate].format(s)
        # Assigned, not multiplied: hard sigmoid's outer parentheses would be redundant.
        return gated[1:-1] if gated.startswith("(") else gated

    norm_text = {
        "groupnorm": (
            "a group norm (``norm_h``, ``norm_w``; "
            f"{'one group over the whole strip' if groups == 1 else f'{groups} groups of channels'}, "
            "statistics of each sample, so training and eval agree)"
        ),
        "batchnorm": "a batchnorm (``norm_h``, ``norm_w``; running statistics in eval)",
        "none": "",
    }[spec.norm]
    steps = [
        f"a depthwise 1D conv of length {k} (``conv_h``: {k} x 1, ``conv_w``: 1 x {k}, "
        f"{'with' if spec.bias else 'no'} bias)",
        *([norm_text] if norm_text else []),
        *([spec.activation] if act else []),
        spec.gate,
    ]
    doc = _paragraphs(
        "ELA: efficient local attention (Xu and Wan, 2024).",
        spec.description,
        _prose(
            "Averages ``x`` along W and along H into two strips, (B, C, H, 1) and (B, C, 1, W), "
            f"and runs each through {', '.join(steps[:-1])}, then {steps[-1]}: a gate along H "
            f"and a gate along W. Returns ``x * a_h * a_w``{_skip_doc(spec.skip)}. No channel "
            "reduction, unlike coordinate attention."
        ),
        *_image_doc(spec.dims),
    )
    return ElaModule(
        **base,
        functional=_functional(spec.gate),
        helpers=_helpers(*STRIP_POOLS.values()),
        doc=docstring(doc, "    "),
        convs=_strip_convs(k),
        bias=spec.bias,
        norm=norm,
        groups=groups if spec.norm == "groupnorm" and groups > 1 else None,
        act=act,
        a_h=strip("h"),
        a_w=strip("w"),
        skip=spec.skip,
        checks=_input_checks(base["cls"], spec.dims),
    )


@builder("strip")
def _strip(spec: specs.StripSpec, base: dict[str, Any]) -> StripModule:
    k = spec.kernel_size
    pool_h, pool_w = STRIP_POOLS["h"], STRIP_POOLS["w"]
    if spec.conv:
        strips = f"self.conv_h({pool_h}) + self.conv_w({pool_w})"
        refine = (
            f", refines each by a depthwise 1D conv of length {k} (``conv_h``: {k} x 1, "
            f"``conv_w``: 1 x {k}, {'with' if spec.bias else 'no'} bias)"
        )
    else:
        strips = f"{pool_h} + {pool_w}"
        refine = " (no parameters: the strips are used as pooled)"
    doc = _paragraphs(
        "Strip attention (timm's StripAttn), after strip pooling (Hou et al., 2020).",
        spec.description,
        _prose(
            "Averages ``x`` along W and along H into two strips, (B, C, H, 1) and (B, C, 1, W)"
            f"{refine}, and sums them, broadcast to (B, C, H, W), into one gate: returns "
            f"``x * {spec.gate}(s_h + s_w)``{_skip_doc(spec.skip)}."
        ),
        *_image_doc(spec.dims),
    )
    return StripModule(
        **base,
        functional=_functional(spec.gate),
        helpers=_helpers(strips),
        doc=docstring(doc, "    "),
        conv=spec.conv,
        convs=_strip_convs(k),
        bias=spec.bias,
        strips=strips,
        gate=GATES[spec.gate].format("s"),
        skip=spec.skip,
        checks=_input_checks(base["cls"], spec.dims),
    )


def _fraction(value: float) -> str:
    """2/3 for 0.6666666666666666 (a float that is exactly a small fraction's), else the float."""
    f = Fraction(value).limit_denominator(64)
    return (
        f"{f.numerator}/{f.denominator}"
        if f.denominator > 1 and float(f) == value
        else f"{value:g}"
    )


def coord_width(spec: specs.CoordSpec | specs.ScoordSpec) -> tuple[str, str]:
    """The bottleneck width as an expression of ``channels`` and a comment: timm's
    make_divisible(C * (1 / r) * se_factor, d) with round_limit 0, evaluated as timm evaluates it
    (left to right, in floats), or the paper's code's floor(C / r), at least min_channels."""
    if spec.se_factor == 1.0 or spec.divisor is None:
        return hidden_width(spec.reduction, spec.divisor, spec.min_channels)
    r, d, low = spec.reduction, spec.divisor, max(spec.min_channels, spec.divisor)
    factor = _fraction(spec.se_factor)
    args = [f"channels * {_scalar_literal(1 / r)} * {_scalar_literal(spec.se_factor)}", str(d)]
    # At 8 columns after "self.rd_channels = ", laid out as the formatter would (1 / 3 prints 17
    # digits, so the call can outgrow the line).
    return (
        py_call("_make_divisible", [*args, str(low), "0.0"], 8, len("self.rd_channels = ")),
        f"C / {r} * {factor} (se_factor) rounded to the nearest multiple of {d}, at least {low} "
        "(timm's make_divisible)",
    )


def _coordinate_fields(
    spec: specs.CoordSpec | specs.ScoordSpec, doc: str, rd_expr: str, rd_comment: str
) -> dict[str, Any]:
    """What coord and scoord print alike: the strips, the bottleneck width, activation, biases."""
    return {
        "functional": _functional(spec.gate),
        "helpers": _helpers(*STRIP_POOLS.values(), rd_expr),
        "doc": docstring(doc, "    "),
        "rd_expr": rd_expr,
        "rd_comment": rd_comment,
        "act": ACTIVATIONS[spec.activation],
        "bias": spec.bias,
        "pool_h": STRIP_POOLS["h"],
        "pool_w": STRIP_POOLS["w"],
    }


@builder("coord")
def _coord(spec: specs.CoordSpec, base: dict[str, Any]) -> CoordModule:
    rd_expr, rd_comment = coord_width(spec)
    norm = spec.norm == "batchnorm"
    bn = " -> batchnorm ``bn1`` (its statistics over both strips at once)" if norm else ""
    gate_h, gate_w = GATES[spec.gate].format("s_h"), GATES[spec.gate].format("s_w")
    doc = _paragraphs(
        "Coordinate attention (Hou et al., CVPR 2021).",
        spec.description,
        _prose(
            "Average-pools ``x`` along W (one C-vector per row) and along H (one per column), "
            "joins the two strips along one spatial axis and runs them through a shared 1x1 conv "
            f"``conv1`` (C -> C'){bn} -> {spec.activation}, C' = {rd_comment}. The result is "
            "split back into rows and columns, each mapped to C by its own 1x1 conv (``conv_h``, "
            f"``conv_w``; {'with' if spec.bias else 'no'} biases): a gate per row, broadcast "
            "along W, and a gate per column, broadcast along H. Returns "
            f"``x * {spec.gate}(s_h) * {spec.gate}(s_w)``{_skip_doc(spec.skip)}."
        ),
        *_image_doc(2),
    )
    return CoordModule(
        **base,
        **_coordinate_fields(spec, doc, rd_expr, rd_comment),
        output=f"x * {gate_h} * {gate_w}{' + x' if spec.skip else ''}",
        checks=_input_checks(base["cls"], 2),
        norm=norm,
        hidden="self.bn1(self.conv1(pooled))" if norm else "self.conv1(pooled)",
    )


@builder("scoord")
def _scoord(spec: specs.ScoordSpec, base: dict[str, Any]) -> ScoordModule:
    rd_expr, rd_comment = coord_width(spec)
    doc = _paragraphs(
        "Simplified coordinate attention (timm's SimpleCoordAttn, after Hou et al., 2021).",
        spec.description,
        _prose(
            "Average-pools ``x`` along W (one C-vector per row) and along H (one per column), "
            f"runs every row and column vector through a shared linear ``fc1`` (C -> C') -> "
            f"{spec.activation}, C' = {rd_comment}, maps the rows back to C with ``fc_h`` and the "
            f"columns with ``fc_w`` ({'with' if spec.bias else 'no'} biases), and gates ``x`` "
            "once with the row and column scores summed, where coordinate attention multiplies "
            f"two gates: returns ``x * {spec.gate}(s_h + s_w)``{_skip_doc(spec.skip)}."
        ),
        *_image_doc(2),
    )
    return ScoordModule(
        **base,
        **_coordinate_fields(spec, doc, rd_expr, rd_comment),
        output=f"x * {GATES[spec.gate].format('s_h + s_w')}{' + x' if spec.skip else ''}",
        checks=_input_checks(base["cls"], 2),
    )


# --- triplet, bam (zoo blocks timm does not have) -------------------------------------------------

_COUNTS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Triplet attention's branches, as the official code names and orders them: each rotates x so
# that the dim it pools comes first (Z-pool over dim 1), and rotates its gate back.
TRIPLET_BRANCHES = (
    TripletBranch("cw", "self.cw(x.transpose(1, 2)).transpose(1, 2)", "pools H: (B, C, 1, W)"),
    TripletBranch(
        "hc", "self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)", "pools W: (B, C, H, 1)"
    ),
    TripletBranch("hw", "self.hw(x)", "pools C: (B, 1, H, W)"),
)


@builder("triplet")
def _triplet(spec: specs.TripletSpec, base: dict[str, Any]) -> TripletModule:
    k = spec.kernel_size
    branches = TRIPLET_BRANCHES[:2] if spec.no_spatial else TRIPLET_BRANCHES
    n = len(branches)
    gate_cls = f"{base['cls']}Gate"
    planes = (
        "``cw`` pools over H and gates the (C, W) plane, ``hc`` pools over W and gates the (H, C) "
        "plane"
    )
    if spec.no_spatial:
        planes += " (no ``hw`` branch: no spatial attention over H, W)"
    else:
        planes += ", ``hw`` pools over C and gates the (H, W) plane (spatial attention)"
    doc = _paragraphs(
        'Triplet attention (Misra et al., 2021, "Rotate to Attend").',
        spec.description,
        _prose(
            f"{_COUNTS[n].capitalize()} branches, each a {gate_cls} on ``x`` rotated so that the dim it pools comes "
            f"first: {planes}. Returns the average of the {_COUNTS[n]} gated copies of ``x``, computed as "
            f"``x * ({' + '.join(b.name for b in branches)}) / {n}``."
        ),
        "Args:\n    channels: C, the number of input channels (checked on input).\n"
        "    device, dtype: factory kwargs for every parameter and buffer.",
        "Shape:\n    x: (B, C, H, W); returns the same shape and dtype.",
    )
    gate_doc = _paragraphs(
        "One branch of triplet attention: a gate over the plane of its input's dims 2 and 3.",
        _prose(
            "Z-pools the input over dim 1 (max and mean, concatenated in that order, as the "
            f"official code's ZPool), runs a {k}x{k} conv ``conv.conv`` (2 channels to 1, padding "
            f"{k // 2}, no bias) and a batchnorm ``conv.bn`` (eps 1e-5, momentum 0.01, as the "
            "official code's BasicConv), and returns its sigmoid."
        ),
        "Shape:\n    x: (B, N, P, Q); returns the gate, (B, 1, P, Q).",
    )
    pools = ["_mean(x, (1,))", "_max_pool(x, 1)"]
    return TripletModule(
        **{**base, "stdlib_imports": ("from collections import OrderedDict",)},
        functional=False,
        helpers=_helpers(*pools),
        doc=docstring(doc, "    "),
        gate_cls=gate_cls,
        gate_doc=docstring(gate_doc, "    "),
        kernel_size=k,
        padding=k // 2,
        branches=branches,
        mean_gate=f"({' + '.join(b.name for b in branches)}) / {n}",
        checks=_input_checks(base["cls"], 2),
    )


@builder("bam")
def _bam(spec: specs.BamSpec, base: dict[str, Any]) -> BamModule:
    cls = base["cls"]
    rd_expr, rd_comment = hidden_width(spec.reduction, None, spec.min_channels)
    d, n = spec.dilation, spec.dilated_convs
    convs = (
        f"a 1x1 conv C -> C' and {_COUNTS[n]} dilated 3x3 conv{'s' if n > 1 else ''} C' -> C' "
        f"(dilation {d}, padding {d}: the size is kept), each followed by a batchnorm and a ReLU"
        if n
        else "a 1x1 conv C -> C', a batchnorm and a ReLU"
    )
    if spec.merge == "sum":
        merge, how = "+", "sums the two (the paper's merge)"
    else:
        merge, how = "*", "multiplies the two (the authors' released code; the paper sums them)"
    doc = _paragraphs(
        "BAM: bottleneck attention module (Park et al., 2018).",
        spec.description,
        _prose(
            f"Runs two branches on ``x`` in parallel, ``channel_att`` (one logit per channel) and "
            f"``spatial_att`` (one logit per position), both working at C' channels, C' = "
            f"{rd_comment}; "
            f"{how}, broadcast to (B, C, H, W), into ``s``, and returns ``x * (1 + sigmoid(s))``: "
            "``x`` plus ``x`` gated, so the block can stress a feature but never remove it."
        ),
        _prose(
            "Submodules are named as in the authors' code (MODELS/bam.py), so its state_dict loads."
        ),
        "Args:\n    channels: C, the number of input channels.\n"
        "    device, dtype: factory kwargs for every parameter and buffer.",
        "Shape:\n    x: (B, C, H, W); returns the same shape and dtype.",
    )
    channel_doc = _paragraphs(
        "BAM's channel branch: one attention logit per channel, (B, C, 1, 1).",
        _prose(
            "Average-pools ``x`` over H, W and runs the pooled vector through ``gate_c``: a "
            f"linear layer C -> C', a batchnorm, a ReLU, a linear layer C' -> C; C' = {rd_comment}."
        ),
    )
    spatial_doc = _paragraphs(
        "BAM's spatial branch: one attention logit per position, (B, 1, H, W).",
        _prose(
            f"Runs ``x`` through ``gate_s``: {convs}, then a 1x1 conv C' -> 1; C' = {rd_comment}."
        ),
    )
    pool = CHANNEL_POOLS["avg"][2]
    return BamModule(
        **{**base, "stdlib_imports": ("from collections import OrderedDict",)},
        functional=False,
        helpers=_helpers(pool, rd_expr),
        doc=docstring(doc, "    "),
        channel_cls=f"{cls}Channel",
        channel_doc=docstring(channel_doc, "    "),
        spatial_cls=f"{cls}Spatial",
        spatial_doc=docstring(spatial_doc, "    "),
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        dilation=d,
        dilated_convs=tuple(range(n)),
        merge=merge,
        checks=_input_checks(cls, 2),
    )


# --- nl, bat: the non-local blocks ---------------------------------------------------------------------


@builder("nl")
def _nl(spec: specs.NlSpec, base: dict[str, Any]) -> NlModule:
    cls, dims = base["cls"], spec.dims
    rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, spec.round_limit)
    positions = " * ".join(SPATIAL_NAMES[dims])
    if spec.use_scale:
        scale, scale_comment = (
            "channels**-0.5",
            "C ** -0.5, C the input channels (timm's use_scale)",
        )
        scaled = "t^T p * C ** -0.5 (C the input channels, not C', as timm's use_scale)"
    else:
        scale, scale_comment = "1.0", "unscaled scores (timm's use_scale=False)"
        scaled = "t^T p, unscaled (timm's use_scale=False)"
    doc = _paragraphs(
        "Non-local block (Wang et al., 2018), as timm's NonLocalAttn.",
        spec.description,
        _prose(
            f"Embeds ``x`` by three 1x1 convs ``t``, ``p``, ``g`` (C -> C', C' = {rd_comment}, "
            f"with biases) into sequences of {positions} positions; every position attends over "
            f"every position, softmax({scaled}) applied to g, computed by "
            "``F.scaled_dot_product_attention``; a 1x1 conv ``z`` (C' -> C) and a batchnorm "
            "``norm`` (running statistics in eval) map the result back, and ``x`` is added: "
            "``x + norm(z(attention))``, a residual block, not a gate."
        ),
        _prose(
            "Initialised as timm initialises it: the convs Kaiming-normal (fan_out, relu) with "
            "zero biases, the norm's weight and bias zero, so a fresh block is the identity."
        ),
        "Args:\n    channels: C, the number of input channels.\n"
        "    device, dtype: factory kwargs for every parameter and buffer.",
        f"Shape:\n    x: {_shape(dims)}; returns the same shape and dtype.",
    )
    return NlModule(
        **base,
        functional=True,
        helpers=_helpers(rd_expr),
        doc=docstring(doc, "    "),
        conv=f"nn.Conv{dims}d",
        norm=f"nn.BatchNorm{dims}d",
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        scale=scale,
        scale_comment=scale_comment,
        checks=_input_checks(cls, dims),
    )


@builder("bat")
def _bat(spec: specs.BatSpec, base: dict[str, Any]) -> BatModule:
    cls = base["cls"]
    rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, spec.round_limit)
    n, g = spec.block_size, spec.groups
    act = ACTIVATIONS[spec.activation] if spec.activation != "none" else "nn.Identity()"
    act_text = spec.activation if spec.activation != "none" else "no activation"
    norm_cls = f"{cls}LayerNorm2d" if spec.norm == "layernorm2d" else None
    norm, norm_text = {
        "batchnorm": ("nn.BatchNorm2d(out_channels, **factory)", "a batchnorm"),
        "groupnorm1": (
            "nn.GroupNorm(1, out_channels, eps=1e-5, **factory)",
            "a one-group group norm",
        ),
        "layernorm2d": (
            py_call(f"{norm_cls}", ["out_channels", "eps=1e-5", "**factory"], 12, len("bn="), 1),
            "a channel layer norm",
        ),
    }[spec.norm]
    cna = f"a 1x1 conv (no bias), {norm_text} and {act_text}"
    drop = (
        f" then a channel dropout (``nn.Dropout2d({spec.drop_rate!r})``, training only),"
        if spec.drop_rate
        else ""
    )
    doc = _paragraphs(
        "BAT: non-local block with grouped bilinear attentional transforms (Chi et al., 2020).",
        spec.description,
        _prose(
            "As timm's BatNonLocalAttn: returns ``x + conv2(ba(conv1(x)))``: ``conv1`` maps C to "
            f"C' = {rd_comment} channels, ``ba`` (the bilinear transform) works at C', ``conv2`` maps back to C,"
            f"{drop} and ``x`` is added: a residual block, not a gate. ``conv1`` and ``conv2`` are "
            f"each {cna} (``conv``, ``bn``, ``act``, timm's ConvNormAct names)."
        ),
        _prose(
            f"H and W must be multiples of the block size {n}; other sizes raise ValueError."
            if n > 1
            else "Block size 1: each matrix is 1 x 1, sigmoid over its own sum, so the transform "
            "is conv1 and conv2 around the identity (any H and W)."
        ),
        "Args:\n    channels: C, the number of input channels; C' must be divisible by "
        f"{g}.\n    device, dtype: factory kwargs for every parameter and buffer.",
        f"Shape:\n    x: (B, C, H, W){f', H and W multiples of {n}' if n > 1 else ''}; returns "
        "the same shape and dtype.",
    )
    transform_doc = _paragraphs(
        f"The grouped bilinear attentional transform: ``y = P x Q`` per channel, {g} group"
        f"{'s' if g > 1 else ''}.",
        _prose(
            f"``conv1`` ({cna}) maps the C' channels to {g}, one map per group; its row maxima "
            f"over {n} bands of H (``F.adaptive_max_pool2d`` to ({n}, 1)) go through ``conv_p`` "
            f"(a ({n}, 1) conv) and its column maxima through ``conv_q`` (a (1, {n}) conv), "
            f"each to a {n} x {n} matrix per group; sigmoid, then P's rows and Q's columns "
            "normalised to sum to one (as softmax(logsigmoid), the same values: timm's "
            "sigmoid / sum gives 0 / 0 where a row's sigmoids all underflow, at logits below "
            "-17 in float16, -745 in float64). P acts on H as kron(P, I) (each entry spread over an "
            f"(H / {n})-wide band), Q on W as kron(Q, I); both are applied to the channels of "
            "their group without forming the H x H and W x W matrices. Then ``conv2`` "
            f"({cna}, C' -> C')."
        ),
    )
    return BatModule(
        **{**base, "stdlib_imports": ("from collections import OrderedDict",)},
        functional=True,
        helpers=_helpers(rd_expr),
        doc=docstring(doc, "    "),
        transform_cls=f"{cls}Transform",
        transform_doc=docstring(transform_doc, "    "),
        rd_expr=rd_expr,
        rd_comment=rd_comment,
        block_size=n,
        groups=g,
        act=act,
        transform=py_call(
            f"{cls}Transform", ["rd", "device=device", "dtype=dtype"], 8, len("self.ba = ")
        ),
        norm=norm,
        norm_cls=norm_cls,
        dropout=repr(spec.drop_rate) if spec.drop_rate else None,
        checks=_input_checks(cls, 2),
    )


# --- sk ----------------------------------------------------------------------------------------------

_CONV_BLOCK_ARGS = (
    "Args:\n    channels: C, the number of input channels.\n"
    "    out_channels: the number of output channels (default: channels).\n"
    "    stride: the convs' stride (default 1); 2 halves H and W, rounding up.\n"
    "    device, dtype: factory kwargs for every parameter and buffer."
)
_CONV_BLOCK_SHAPE = (
    "Shape:\n    x: (B, C, H, W); returns (B, out_channels, H', W') in x's dtype, with\n"
    "    H' = (H + 2 p - d (k - 1) - 1) // stride + 1 for the convs' padding p, dilation d and\n"
    "    kernel k (likewise W'): H at stride 1."
)


def _attn_width(expr: str, channels: str) -> str:
    """A hidden-width expression of ``channels`` (``hidden_width``'s) over another channel count."""
    return expr.replace("(channels", f"({channels}", 1)


@builder("sk")
def _sk(spec: specs.SkSpec, base: dict[str, Any]) -> SkModule:
    p = len(spec.kernel_size)
    if spec.keep_3x3:
        pairs = [(3, spec.dilation * (k - 1) // 2) for k in spec.kernel_size]
        how = "3x3 convs, a k x k kernel becoming dilation (k - 1) // 2 (keep_3x3)"
    else:
        pairs = [(k, spec.dilation) for k in spec.kernel_size]
        how = "k x k convs"
    listed = ", ".join(f"{k}x{k} at dilation {d}" for k, d in pairs)
    split = spec.split_input and p > 1
    per_path = f"channels // {p}" if split else "channels"
    per_path_comment = (
        f"Each path convolves its own 1/{p} of the channels (split_input)."
        if split
        else "Each path convolves every channel."
    )
    rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, 1, 0.9)
    attn_width = rd_comment.replace("C / ", "out_channels / ")
    paths_text = "(" + ", ".join(f"({k}, {d})" for k, d in pairs) + ("," if p == 1 else "") + ")"
    groups = f" in {spec.groups} groups (at most out_channels)" if spec.groups > 1 else ""
    doc = _paragraphs(
        "Selective kernel convolution (Li et al., 2019, SKNet), as timm's SelectiveKernel.",
        spec.description,
        _prose(
            f"{p} path{'s' if p > 1 else ''} of {how}: {listed}{groups}, each a conv, a batchnorm "
            f"and {spec.activation} (``paths.i.conv``, ``paths.i.bn``, as timm's ConvNormAct), "
            f"{'each on its own 1/' + str(p) + ' of the channels' if split else 'each on every channel'}. "
            "The attention (``attn``) averages the paths' sum over space and runs it through "
            f"``fc_reduce`` to C' channels (C' = {attn_width}), a batchnorm, a ReLU, and "
            "``fc_select`` to one logit per path and output channel; a softmax over the paths "
            "weighs them, and the output is their weighted sum. Not a gate: a conv block, with "
            "out_channels and stride."
        ),
        _CONV_BLOCK_ARGS,
        _CONV_BLOCK_SHAPE,
    )
    return SkModule(
        **{**base, "stdlib_imports": ("from collections import OrderedDict",)},
        functional=False,
        helpers=_helpers("_mean(", rd_expr),
        doc=docstring(doc, "    "),
        num_paths=p,
        split=split,
        per_path=per_path,
        per_path_comment=per_path_comment,
        groups=spec.groups,
        paths=paths_text,
        act=ACTIVATIONS[spec.activation],
        rd_expr=_attn_width(rd_expr, "out_channels"),
        rd_comment=attn_width,
        checks=_input_checks(base["cls"], 2),
    )


@builder("splat")
def _splat(spec: specs.SplatSpec, base: dict[str, Any]) -> SplatModule:
    k, d, r, g = spec.kernel_size, spec.dilation, spec.radix, spec.groups
    pad = k // 2 if spec.padding is None else spec.padding
    reach = max(1, d * (k - 1) - 2 * pad + 1)
    rd_expr, rd_comment = hidden_width(spec.reduction, spec.divisor, spec.min_channels, 0.9)
    rd_comment = rd_comment.replace("C / ", f"C * {r} / ")
    norm = spec.norm == "batchnorm"
    conv_out = "self.act0(self.bn0(self.conv(x)))" if norm else "self.act0(self.conv(x))"
    attn = (
        "self.fc2(self.act1(self.bn1(self.fc1({}))))"
        if norm
        else "self.fc2(self.act1(self.fc1({})))"
    )
    mid = f"out_channels * {r}" if r > 1 else "out_channels"
    if r > 1:
        mix = (
            f"The conv (``conv``, {g * r} groups: groups * radix) makes {r} splits of out_channels "
            f"each{', each through ``bn0`` and ' if norm else ', each through '}{spec.activation}; "
            "the attention averages their sum over space and runs it through ``fc1`` (to C' "
            f"channels, C' = {rd_comment}){', ``bn1``' if norm else ''}, {spec.activation} and "
            f"``fc2`` (one logit per split and output channel, in {g} group{'s' if g > 1 else ''}); "
            f"a softmax over the splits{' within each group' if g > 1 else ''} weighs them, and "
            "the output is their weighted sum (timm's RadixSoftmax)."
        )
    else:
        mix = (
            f"Radix 1: the conv (``conv``, {g} group{'s' if g > 1 else ''}), "
            f"{'``bn0`` and ' if norm else ''}{spec.activation}, gated per channel by a sigmoid of "
            f"``fc1`` (to C' channels, C' = {rd_comment}){', ``bn1``' if norm else ''}, "
            f"{spec.activation} and ``fc2`` on its average over space."
        )
    doc = _paragraphs(
        "Split attention (Zhang et al., 2020, ResNeSt), as timm's SplitAttn.",
        spec.description,
        _prose(
            f"{mix} The conv is {k}x{k}, padding {pad}, dilation {d}, "
            f"{'with' if spec.bias else 'no'} bias. Not a gate: a conv block, with out_channels "
            "and stride."
        ),
        _CONV_BLOCK_ARGS,
        _CONV_BLOCK_SHAPE,
    )
    return SplatModule(
        **base,
        functional=False,
        helpers=_helpers("_mean(", rd_expr),
        doc=docstring(doc, "    "),
        kernel_size=k,
        padding=pad,
        dilation=d,
        groups=g,
        radix=r,
        conv_groups=g * r,
        bias=spec.bias,
        norm=norm,
        act=ACTIVATIONS[spec.activation],
        mid=mid,
        rd_expr=_attn_width(rd_expr, f"channels * {r}") if r > 1 else rd_expr,
        rd_comment=rd_comment,
        reach=reach,
        conv_out=conv_out,
        attn=attn,
        checks=_input_checks(base["cls"], 2),
    )


# --- self-attention layers: lambda -------------------------------------------------------------------


def _self_attn_options(
    spec: specs.LambdaSpec | specs.BottleneckSpec | specs.HaloSpec,
    cls: str,
    dim_qk_expr: str,
    dim_qk_comment: str,
    feat_size_used: bool,
    size_checks: Sequence[tuple[str, str]],
) -> SelfAttnOptions:
    """What the three self-attention layers' constructors and forwards check alike."""
    return SelfAttnOptions(
        cls=cls,
        num_heads=spec.num_heads,
        dim_qk_expr=dim_qk_expr,
        dim_qk_comment=dim_qk_comment,
        qkv_bias=spec.qkv_bias,
        feat_size_used=feat_size_used,
        feat_size_why="the position embedding covers the whole map" if feat_size_used else "",
        size_checks=tuple(size_checks),
    )


def _dim_qk(spec: specs.LambdaSpec | specs.BottleneckSpec | specs.HaloSpec) -> tuple[str, str]:
    """The query/key width per head as an expression of out_channels, and what it is."""
    if spec.dim_head is not None:
        return str(spec.dim_head), "query and key width per head (the spec's dim_head)"
    h, ratio = spec.num_heads, spec.qk_ratio
    scaled = "out_channels" if ratio == 1.0 else f"out_channels * {_scalar_literal(ratio)}"
    return (
        f"_make_divisible({scaled}, 8, 8, 0.9) // {h}",
        f"query and key width per head: out_channels * {ratio:g} rounded to the nearest multiple of "
        f"8, one 8 more if that loses over 0.1 of it (timm's make_divisible), over {h} heads",
    )


def _stride_check() -> tuple[str, str]:
    return (
        "self.stride == 2 and min(x.shape[2], x.shape[3]) < 2",
        "at least 2 positions in H and W (stride 2 pools 2 x 2 windows)",
    )


def _self_attn_args(extra: str) -> str:
    return (
        "Args:\n    channels: C, the number of input channels.\n"
        "    out_channels: the output width (default C), a multiple of num_heads.\n"
        "    stride: 1, or 2 to halve H and W.\n"
        f"    feat_size: {extra}\n"
        "    device, dtype: factory kwargs for every parameter and buffer."
    )


_SELF_ATTN_SHAPE = "Shape:\n    x: (B, C, H, W); returns (B, out_channels, H // stride, W // stride), in x's dtype."


@builder("lambda")
def _lambda(spec: specs.LambdaSpec, base: dict[str, Any]) -> LambdaModule:
    cls = base["cls"]
    dim_qk_expr, dim_qk_comment = _dim_qk(spec)
    checks = [
        ("x.shape[2] == 0 or x.shape[3] == 0", "at least one position in H, W"),
    ]
    if spec.r is None:
        checks.append(
            (
                "tuple(x.shape[2:]) != self.feat_size",
                "input of shape (B, {self.channels}, {self.feat_size[0]}, {self.feat_size[1]}) "
                "(feat_size: the position embedding covers that map)",
            )
        )
        position = (
            "a learned embedding per relative offset between positions (2H - 1 x 2W - 1 of them, "
            "``pos_emb``): the map's size is fixed at construction (feat_size)"
        )
        feat = "(H, W) or one int: the input's size, covered by the position embedding (required)."
    else:
        position = (
            f"a {spec.r} x {spec.r} convolution (``conv_lambda``) over the values around each "
            "position: any input size works"
        )
        feat = "ignored (the local position lambdas work at any size); accepted as timm's is."
    checks.append(_stride_check())
    doc = _paragraphs(
        "Lambda layer (Bello, 2021), as timm's LambdaLayer.",
        spec.description,
        _prose(
            f"Projects ``x`` (1x1 conv ``qkv``) into queries ({spec.num_heads} heads, batchnormed "
            "by ``norm_q``), one set of keys (softmax-normalised over the positions) and values "
            "(batchnormed by ``norm_v``, out_channels / num_heads wide). The content lambda, keys "
            "times values summed over the positions, and each position's position lambda, from "
            f"{position}, are applied to the queries; the heads are concatenated, and with stride "
            "2 the map is average-pooled 2 x 2. Both norms keep running statistics: training and "
            "eval differ."
        ),
        _self_attn_args(feat),
        _SELF_ATTN_SHAPE,
    )
    return LambdaModule(
        **base,
        functional=spec.r is not None,
        helpers=_helpers(dim_qk_expr),
        doc=docstring(doc, "    "),
        a=_self_attn_options(spec, cls, dim_qk_expr, dim_qk_comment, spec.r is None, checks),
        r=spec.r,
    )


def _fixed_size_check() -> tuple[str, str]:
    return (
        "tuple(x.shape[2:]) != self.feat_size",
        "input of shape (B, {self.channels}, {self.feat_size[0]}, {self.feat_size[1]}) "
        "(feat_size: the position embedding covers that map)",
    )


def _pos_scale_doc(scale_pos_embed: bool) -> str:
    if scale_pos_embed:
        return "(q . k + relative position logit) / sqrt(d) (scale_pos_embed)"
    return "q . k / sqrt(d) + relative position logit"


@builder("bottleneck")
def _bottleneck(spec: specs.BottleneckSpec, base: dict[str, Any]) -> BottleneckModule:
    cls = base["cls"]
    dim_qk_expr, dim_qk_comment = _dim_qk(spec)
    doc = _paragraphs(
        "Bottleneck self-attention (Srinivas et al., 2021, BoTNet), as timm's BottleneckAttn.",
        spec.description,
        _prose(
            f"Projects ``x`` (1x1 conv ``qkv``) into queries, keys and values for {spec.num_heads} "
            "heads; every position attends over every position of the map, with logits "
            f"{_pos_scale_doc(spec.scale_pos_embed)}, the relative logits from ``pos_embed`` (an "
            "embedding per row offset and per column offset, so the map's size is fixed at "
            "construction: feat_size); the heads are concatenated, and with stride 2 the map is "
            "average-pooled 2 x 2."
        ),
        _self_attn_args(
            "(H, W) or one int: the input's size, covered by the position embedding (required)."
        ),
        _SELF_ATTN_SHAPE,
    )
    pos_doc = _paragraphs(
        "Relative position logits over a feat_size map (timm's PosEmbedRel).",
        _prose(
            "``height_rel`` and ``width_rel`` hold an embedding per row and per column offset; a "
            "query's logit for a key is its dot product with the embedding of the key's row "
            "offset plus that of its column offset. forward takes queries (N, H * W, d) and "
            "returns (N, H * W, H * W)."
        ),
    )
    return BottleneckModule(
        **base,
        functional=True,
        helpers=_helpers(dim_qk_expr, "_rel_logits_1d("),
        doc=docstring(doc, "    "),
        a=_self_attn_options(
            spec,
            cls,
            dim_qk_expr,
            dim_qk_comment,
            True,
            (
                ("x.shape[2] == 0 or x.shape[3] == 0", "at least one position in H, W"),
                _fixed_size_check(),
                _stride_check(),
            ),
        ),
        pos_cls=f"{cls}PosEmbed",
        pos_doc=docstring(pos_doc, "    "),
        scale_pos_embed=spec.scale_pos_embed,
    )


@builder("halo")
def _halo(spec: specs.HaloSpec, base: dict[str, Any]) -> HaloModule:
    cls = base["cls"]
    dim_qk_expr, dim_qk_comment = _dim_qk(spec)
    bs, halo = spec.block_size, spec.halo_size
    win = bs + 2 * halo
    pool_on_stride = spec.avg_down or bs % 2 == 1
    if spec.avg_down:
        stride_comment = "Stride 2 average-pools the output 2 x 2 (avg_down)."
    elif pool_on_stride:
        stride_comment = f"Stride 2 average-pools the output 2 x 2 (block_size {bs} is odd)."
    else:
        stride_comment = "Stride 2 strides the queries: blocks of block_size // 2 queries."
    checks = [
        ("x.shape[2] == 0 or x.shape[3] == 0", "at least one position in H, W"),
        (
            f"x.shape[2] % {bs} or x.shape[3] % {bs}",
            f"H and W multiples of the block size {bs}",
        ),
    ]
    if bs == 1:
        checks.append(_stride_check())
    doc = _paragraphs(
        "Halo attention (Vaswani et al., 2021, HaloNet), as timm's HaloAttn.",
        spec.description,
        _prose(
            f"Cuts the map into {bs} x {bs} blocks; the queries of each block (1x1 conv ``q``, "
            f"{spec.num_heads} heads) attend over the keys and values (1x1 conv ``kv``) of a "
            f"{win} x {win} window around it, the block and a halo of {halo}, zero-padded at the "
            f"border, with logits {_pos_scale_doc(spec.scale_pos_embed)} (``pos_embed``: an "
            "embedding per row and column offset within the window). H and W must be multiples of "
            f"{bs}. {stride_comment} The heads are concatenated."
        ),
        _self_attn_args("ignored (any multiple of the block size works); accepted as timm's is."),
        _SELF_ATTN_SHAPE,
    )
    pos_doc = _paragraphs(
        "Relative position logits of a block's queries over its window (timm's PosEmbedRel).",
        _prose(
            "``height_rel`` and ``width_rel`` hold an embedding per row and per column offset "
            "within the window; a query's logit for a key is its dot product with the embedding of "
            "the key's row offset plus that of its column offset. forward takes queries (N, "
            "blocks, block_size ** 2, d) and returns (N, blocks, block_size ** 2, win_size ** 2)."
        ),
    )
    return HaloModule(
        **base,
        functional=True,
        helpers=_helpers(dim_qk_expr, "_rel_logits_1d("),
        doc=docstring(doc, "    "),
        a=_self_attn_options(spec, cls, dim_qk_expr, dim_qk_comment, False, checks),
        pos_cls=f"{cls}PosEmbed",
        pos_doc=docstring(pos_doc, "    "),
        scale_pos_embed=spec.scale_pos_embed,
        block_size=bs,
        halo_size=halo,
        win_size=win,
        pool_on_stride=pool_on_stride,
        stride_comment=stride_comment,
    )


# --- sdpa, mha ----------------------------------------------------------------------------------------


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


def _causality(spec: specs.AttentionOptions, *, explicit: bool = False) -> Causality:
    bottom = spec.causal_alignment == "bottom_right"
    return Causality(
        causal=spec.causal,
        fast=spec.causal and not bottom and not explicit,
        diagonal="lk - lq" if bottom else "",
        what=(
            "bottom-right aligned: query i sees keys 0 .. i + Lk - Lq"
            if bottom
            else "top-left aligned: query i sees keys 0 .. i"
        ),
    )


def _causal_doc(spec: specs.AttentionOptions) -> str:
    if not spec.causal:
        return ""
    if spec.causal_alignment == "bottom_right":
        return "Causal, bottom-right aligned: query i attends to keys 0..i + Lk - Lq. "
    return "Causal: query i attends to keys 0..i (top-left aligned). "


def _window(spec: specs.AttentionOptions, shift: str | None = None) -> Window | None:
    """The sliding window's mask lines, aligned as the causal mask is (``shift``: the variable
    holding the alignment, where the module computes it)."""
    w = spec.window
    if w is None:
        return None
    if not spec.causal:
        return Window(
            what=f"Sliding window: query i sees keys |i - j| < {w}.",
            shift="",
            test=f"offset.abs() < {w}",
        )
    bottom = spec.causal_alignment == "bottom_right"
    return Window(
        what=(
            f"Causal sliding window of {w} keys, the query's own included: "
            + (
                f"i + {shift} - {w} < j <= i + {shift}."
                if shift
                else f"i + Lk - Lq - {w} < j <= i + Lk - Lq."
                if bottom
                else f"i - {w} < j <= i."
            )
        ),
        shift=f" + {shift}" if shift else " + lk - lq" if bottom else "",
        test=f"(offset >= 0) & (offset < {w})",
    )


def _window_doc(spec: specs.AttentionOptions) -> str:
    if spec.window is None:
        return ""
    if spec.causal:
        return (
            f"Sliding window: each query sees its {spec.window} most recent keys, itself included. "
        )
    return f"Sliding window: query i sees keys j with |i - j| < {spec.window}. "


def _softcap_doc(spec: specs.AttentionOptions) -> str:
    if spec.softcap is None:
        return ""
    return (
        f"Logits are soft-capped, ``s -> {spec.softcap!r} * tanh(s / {spec.softcap!r})`` after "
        "scaling and before masks and biases (Gemma 2); SDPA has no such step, so attention is "
        "computed explicitly. "
    )


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's head slopes (Press et al., 2022, the authors' get_slopes): a geometric sequence from
    2^(-8/n) for n a power of two; otherwise the closest power of two's slopes, then every other
    slope of twice as many heads."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


def _rope(spec: specs.MhaSpec) -> Rope | None:
    if spec.rope == "none":
        return None
    f = spec.rope_fraction
    width_expr = "self.head_dim" if f == 1.0 else f"round(self.head_dim * {f!r})"
    r = "R" if spec.rotary_dim is None else str(spec.rotary_dim)
    pairs = (
        f"features 2i and 2i + 1 of the first {r} turn together (GPT-J's interleaved layout)"
        if spec.rope == "interleaved"
        else f"features i and i + {r}/2 of the first {r} turn together (GPT-NeoX's rotate_half layout)"
    )
    rest = "; the rest pass through" if f < 1.0 else ""
    return Rope(
        doc=docstring(
            textwrap.fill(
                f"RoPE on (B, heads, L, head_dim) ``x`` at ``positions`` (B or 1, L): {pairs}, by "
                f"position * {spec.rope_base!r}^(-2i / {r}){rest}.",
                width=LINE_LENGTH - 12,
                break_on_hyphens=False,
                break_long_words=False,
            ),
            "        ",
        ),
        base=repr(spec.rope_base),
        width=None if spec.rotary_dim is None else str(spec.rotary_dim),
        width_expr=width_expr,
        interleaved=spec.rope == "interleaved",
        partial=f < 1.0,
    )


def _slopes_literal(heads: int) -> str:
    slopes = tuple(alibi_slopes(heads))
    if heads == 1:
        return f"({slopes[0]!r},)"
    return py_literal(slopes, indent=4, prefix=len("ALIBI_SLOPES = "))


def _positions_doc(spec: specs.MhaSpec) -> str:
    parts = []
    if spec.rope != "none":
        r = (
            "every feature"
            if spec.rope_fraction == 1.0
            else f"the first round(head_dim * {spec.rope_fraction!r}) features"
        )
        layout = (
            "interleaved pairs (GPT-J)"
            if spec.rope == "interleaved"
            else "rotate_half (GPT-NeoX, Llama)"
        )
        parts.append(
            f"Rotary position embedding on q and k, {layout}, theta {spec.rope_base!r}, over {r} "
            "of each head" + (", after qk-norm" if spec.qk_norm != "none" else "") + "."
        )
    if spec.alibi:
        parts.append(
            "ALiBi: head h's scores get -slope_h * (i - j) for query position i and key position j "
            "(slopes as in the paper and BLOOM)."
        )
    if not parts:
        return ""
    start = (
        "Lk - Lq, Lk - Lq + 1"
        if spec.causal and spec.causal_alignment == "bottom_right"
        else "0, 1"
    )
    return " ".join(parts) + (
        f" ``positions`` (Lq,) or (B, Lq) default to {start}, ...; ``key_positions`` "
        "(Lk,) or (B, Lk) to ``positions`` where Lk == Lq and they are given, else 0 .. Lk - 1."
    )


def _dropout_doc(spec: specs.AttentionOptions) -> str:
    return (
        f"Dropout {spec.dropout!r} on the attention weights, in training only."
        if spec.dropout
        else ""
    )


@builder("sdpa")
def _sdpa(spec: specs.SdpaSpec, base: dict[str, Any]) -> SdpaModule:
    doc = _paragraphs(
        "Scaled dot-product attention: ``softmax(q k^T * scale + mask) v``.",
        spec.description,
        _prose(
            f"Scale: {_scale_text(spec.scale, 'D')}. "
            + _causal_doc(spec)
            + _window_doc(spec)
            + _softcap_doc(spec)
            + _dropout_doc(spec)
        ),
        _prose(_mask_doc(with_padding=False)),
        "Shape:\n    q: (..., Lq, D), k: (..., Lk, D), v: (..., Lk, Dv);\n"
        "    attn_mask: broadcastable to (..., Lq, Lk); returns (..., Lq, Dv).",
    )
    explicit = spec.softcap is not None
    return SdpaModule(
        **base,
        # F serves SDPA and, on the explicit path, dropout.
        functional=not explicit or spec.dropout > 0,
        helpers=_helpers(masks=spec.causal or spec.window is not None),
        doc=docstring(doc, "    "),
        scale=None if spec.scale is None else repr(spec.scale),
        dropout=repr(spec.dropout) if spec.dropout else None,
        causality=_causality(spec, explicit=explicit or spec.window is not None),
        window=_window(spec),
        explicit=Explicit(
            why="Soft-capped logits: SDPA has no such step, so attention is computed explicitly.",
            scale="q.shape[-1] ** -0.5" if spec.scale is None else repr(spec.scale),
            softcap=repr(spec.softcap),
        )
        if explicit
        else None,
    )


@builder("mha")
def _mha(spec: specs.MhaSpec, base: dict[str, Any]) -> MhaModule:
    kv_heads = spec.kv_heads or spec.heads
    extras = []
    if kv_heads != spec.heads:
        extras.append(
            f"Grouped-query attention: {kv_heads} key/value head{'s' if kv_heads > 1 else ''}, "
            f"each shared by {spec.heads // kv_heads} contiguous query heads (SDPA's enable_gqa)."
        )
    if spec.qk_norm != "none":
        extras.append(f"Each head's q and k go through ``q_norm`` and ``k_norm`` ({spec.qk_norm}).")
    if spec.return_weights != "none":
        shape = (
            "(B, Lq, Lk), averaged over heads"
            if spec.return_weights == "mean"
            else "(B, heads, Lq, Lk)"
        )
        extras.append(f"Returns ``(output, weights)``, the weights {shape}, after dropout.")
    doc = _paragraphs(
        f"Multi-head attention with {spec.heads} head{'s' if spec.heads > 1 else ''}.",
        spec.description,
        _prose(
            "Projects ``query``, ``key`` and ``value`` (input widths may differ: embed_dim, kdim, "
            "vdim) with ``q_proj``, ``k_proj``, ``v_proj``, splits them into heads of "
            f"{'embed_dim // ' + str(spec.heads) if spec.head_dim is None else spec.head_dim} (q, k) and "
            f"{'the q/k head width' if spec.value_head_dim is None else spec.value_head_dim} (v), attends "
            f"per head with scale {_scale_text(spec.scale, 'head_dim')}, merges the heads and projects to "
            "out_dim with ``out_proj``. "
            + _causal_doc(spec)
            + _window_doc(spec)
            + _softcap_doc(spec)
            + _dropout_doc(spec)
        ),
        _prose(" ".join(extras)),
        _prose(_positions_doc(spec)),
        _prose(
            "Incremental decoding: pass the same ``cache=attnforge.KVCache()`` to every call, "
            "with ``key`` and ``value`` the new tokens; they join the cached keys and values (in "
            "place) and query i attends causally to key len(cache) + i and those before it"
            + (
                ", positions continuing from len(cache)"
                if spec.rope != "none" or spec.alibi
                else ""
            )
            + ". Masks then cover every key, the cached ones first."
        )
        if spec.causal
        else "",
        _prose(_mask_doc(with_padding=True)),
        "Args:\n    embed_dim: width of ``query``.\n    kdim, vdim: widths of ``key`` and "
        "``value`` (default: embed_dim).\n    out_dim: width of the output (default: embed_dim).\n"
        "    device, dtype: factory kwargs for every parameter.",
        "Shape (batch first):\n    query: (B, Lq, embed_dim), key: (B, Lk, kdim), value: (B, Lk, vdim);\n"
        "    key_padding_mask: (B, Lk); attn_mask: (Lq, Lk) or (B or 1, heads or 1, Lq, Lk);\n"
        + (
            "    positions: (Lq,) or (B, Lq); key_positions: (Lk,) or (B, Lk) (integers);\n"
            if spec.rope != "none" or spec.alibi
            else ""
        )
        + "    returns (B, Lq, out_dim).",
    )
    explicit = spec.return_weights != "none" or spec.softcap is not None
    bottom = spec.causal_alignment == "bottom_right"
    causality = _causality(spec, explicit=explicit or spec.alibi or spec.window is not None)
    if spec.causal:
        # Causal variants decode with a cache: the diagonal is computed in forward (``shift``).
        causality = dataclasses.replace(
            causality,
            diagonal="shift",
            what="query i sees keys 0 .. i + shift, shift the keys before the first query's own",
        )
        base = {
            **base,
            "stdlib_imports": ("from typing import TYPE_CHECKING",),
            "type_checking": ("from attnforge.cache import KVCache",),
        }
    why = []
    if spec.return_weights != "none":
        why.append("the weights are returned")
    if spec.softcap is not None:
        why.append("logits are soft-capped (SDPA has no such step)")
    because = ", and ".join(why)
    return MhaModule(
        **base,
        # F serves the fused path (SDPA) and, on the explicit path, dropout.
        functional=not explicit or spec.dropout > 0,
        helpers=_helpers(masks=True),
        doc=docstring(doc, "    "),
        heads=spec.heads,
        kv_heads=kv_heads,
        group=spec.heads // kv_heads,
        head_dim=spec.head_dim,
        value_head_dim="self.head_dim" if spec.value_head_dim is None else str(spec.value_head_dim),
        qkv_bias=spec.qkv_bias,
        out_bias=spec.out_bias,
        bias_absent_test="None" if spec.qkv_bias else "not None",
        norm=NORMS.get(spec.qk_norm),
        return_weights=None if spec.return_weights == "none" else spec.return_weights,
        weights_reduction=".mean(1)" if spec.return_weights == "mean" else "",
        returns="tuple[torch.Tensor, torch.Tensor]"
        if spec.return_weights != "none"
        else "torch.Tensor",
        scale="self.head_dim**-0.5" if spec.scale is None else repr(spec.scale),
        sdpa_scale=None if spec.scale is None else repr(spec.scale),
        dropout=repr(spec.dropout) if spec.dropout else None,
        dropout_value=repr(spec.dropout),
        causality=causality,
        torch_compatible=spec.torch_compatible,
        bias_text="biases" if spec.qkv_bias else "no biases",
        window=_window(spec, "shift" if spec.causal else None),
        explicit=Explicit(
            why=because[:1].upper()
            + because[1:]
            + ", so attention is computed explicitly here rather than fused.",
            scale="self.head_dim**-0.5" if spec.scale is None else repr(spec.scale),
            softcap=None if spec.softcap is None else repr(spec.softcap),
        )
        if explicit
        else None,
        rope=_rope(spec),
        alibi_slopes=_slopes_literal(spec.heads) if spec.alibi else None,
        positions=spec.rope != "none" or spec.alibi,
        query_start=(("past + lk - lq" if bottom else "past") if spec.causal else "0"),
        key_start="past" if spec.causal else "0",
        cache=spec.causal,
        shift=("lk - lq" if bottom else "0 if cache is None else lk - lq") if spec.causal else None,
    )
