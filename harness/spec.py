"""Spec models: what a YAML variant may say, validated before any template sees it.

One pydantic model per kind, joined in a union discriminated on ``kind``. Every model is frozen and
forbids unknown fields; every number has bounds; cross-field rules (odd kernels, unique pooling
entries) live here, so a spec that validates always renders to a module that works.

The field names are the project's vocabulary: one name per idea, shared across kinds (timm's
habit). Renaming a field is a breaking change for every spec file out there.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

Gate = Literal["sigmoid", "hard_sigmoid"]
Activation = Literal["relu", "relu6", "silu", "gelu", "hard_swish"]
Norm = Literal["none", "batchnorm"]
# The strip blocks (ela): a norm on each pooled strip, group norm included (no running statistics).
StripNorm = Literal["none", "groupnorm", "batchnorm"]
# An activation that may be absent (ela: the paper has none between its norm and its gate).
ActivationOrNone = Literal["none", "relu", "relu6", "silu", "gelu", "hard_swish"]


def _integer(value: Any) -> Any:
    # Literal[1, 2, 3] alone accepts 2.0 (equal and hashed alike); a spec that says 2.0 meant a
    # float, and a float is not a dimension count.
    if isinstance(value, float):
        raise ValueError(f"expected an integer, got the float {value!r}")
    return value


Dims = Annotated[Literal[1, 2, 3], BeforeValidator(_integer)]


def _odd_kernel(why: str) -> Callable[[Any], Any]:
    """A kernel_size validator: odd (or null where null is allowed), ``why`` said in the error."""

    def check(value: Any) -> Any:
        if value is not None and value % 2 == 0:
            raise ValueError(f"kernel_size must be odd ({why}), got {value}")
        return value

    return check


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"pooling entries must be unique, {', '.join(duplicates)} repeated")
    return values


def class_name(name: str) -> str:
    """A variant's class name: ``se_resnet50`` -> ``SeResnet50``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


class _Model(BaseModel):
    # strict: a YAML "4" is not the integer 4 and "yes" (quoted) is not True; say so instead of coercing.
    # allow_inf_nan=False: .nan and .inf are no scale, rate or coefficient.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ChannelOptions(_Model):
    """Channel attention (SE, CBAM's channel half): pool over space, a 1x1-conv MLP, a gate."""

    reduction: int = Field(
        16,
        ge=1,
        le=1024,
        description="Reduction ratio r of the MLP's hidden layer: C -> C/r -> C (rounded, see divisor).",
    )
    divisor: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Rounding of the hidden width. null: floor(C / r), as in the SE and CBAM papers. "
            "An integer d: timm's make_divisible(C * (1 / r), d, round_limit), computed as timm "
            "does: the nearest multiple of d, at least d."
        ),
    )
    round_limit: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "With a divisor: when rounding lost more than (1 - round_limit) of C / r, add d "
            "(timm's make_divisible; its SE and CBAM pass 0.0, its default is 0.9)."
        ),
    )
    min_channels: int = Field(
        1, ge=1, le=4096, description="Lower bound on the hidden width (never 0 channels)."
    )
    pooling: tuple[Literal["avg", "max"], ...] = Field(
        ("avg",),
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=2,
        description="Global poolings over the spatial dims: avg, max, or both.",
    )
    pooling_merge: Literal["after_mlp", "before_mlp"] = Field(
        "after_mlp",
        description=(
            "With two poolings: after_mlp runs each pooled vector through the shared MLP and sums "
            "the outputs (CBAM); before_mlp averages the pooled vectors, then one MLP "
            "(timm's SE add_maxpool)."
        ),
    )
    activation: Activation = Field("relu", description="Activation between fc1 and fc2.")
    norm: Norm = Field(
        "none",
        description=(
            "Normalisation of the hidden layer, between fc1 and the activation (bn, as in timm's "
            "SEModule norm_layer). batchnorm keeps running statistics: training and eval differ."
        ),
    )
    gate: Gate = Field("sigmoid", description="Gate applied to the MLP output before x * gate.")
    bias: bool = Field(True, description="Biases on fc1 and fc2.")

    _pooling_unique = field_validator("pooling")(_unique)

    @model_validator(mode="after")
    def _round_limit_needs_divisor(self) -> ChannelOptions:
        if self.round_limit and self.divisor is None:
            raise ValueError("round_limit applies only with a divisor")
        if self.norm != "none" and len(self.pooling) == 2 and self.pooling_merge == "after_mlp":
            raise ValueError(
                "a norm in an MLP that each pooling goes through separately is not supported "
                "(batch statistics of which?); use pooling_merge: before_mlp"
            )
        return self


class SpatialOptions(_Model):
    """Spatial attention (CBAM's spatial half): pool over channels, a k x k conv, a gate."""

    kernel_size: int = Field(
        7, ge=1, le=31, description="Side of the conv kernel; odd, so the output keeps its size."
    )
    pooling: tuple[Literal["mean", "max"], ...] = Field(
        ("mean", "max"),
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=2,
        description=(
            "Poolings over the channel dim, in concatenation order: [mean, max] as in the CBAM "
            "paper and timm, [max, mean] as in the original CBAM code."
        ),
    )
    pooling_merge: Literal["concat", "average"] = Field(
        "concat",
        description=(
            "With two poolings: concat feeds both maps to the conv as channels (CBAM); average "
            "feeds their mean, one channel (timm's LightSpatialAttn)."
        ),
    )
    norm: Norm = Field(
        "none",
        description=(
            "batchnorm: a BatchNorm after the conv, as timm's SpatialAttn (ConvNormAct); the conv "
            "and the norm are then conv.conv and conv.bn."
        ),
    )
    gate: Gate = Field("sigmoid", description="Gate applied to the conv output before x * gate.")
    bias: bool = Field(False, description="Bias on the conv.")

    _pooling_unique = field_validator("pooling")(_unique)

    _odd = field_validator("kernel_size")(_odd_kernel("even sizes change the output size"))


class _Variant(_Model):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Lowercase Python identifier, unique across all spec files; the module's name.",
    )
    description: str = Field(
        "",
        max_length=4000,
        description="Free text for the class docstring. Kept literally; never executed or templated.",
    )

    @field_validator("name")
    @classmethod
    def _not_keyword(cls, value: str) -> str:
        # The module is <name>.py and the class CamelCase(name): neither may be a keyword or one
        # of the constants None, True, False (`none`, `true_` -> class None, True). A class name
        # that would shadow what its module binds or uses (F, SPEC, ValueError ...) is caught
        # when the module is rendered, from the module itself.
        cls_name = class_name(value)
        for word, what in ((value, "name"), (cls_name, f"its class name {cls_name!r}")):
            if keyword.iskeyword(word) or keyword.issoftkeyword(word):
                raise ValueError(f"{what} must not be a Python keyword, got {value!r}")
        return value

    @field_validator("description")
    @classmethod
    def _normalise_description(cls, value: str) -> str:
        # The formatter strips trailing blanks in docstrings; strip them here so the docstring
        # holds exactly the validated text.
        # Split on newlines only: str.splitlines() also breaks at \x1c-\x1e, \x85, \u2028 ...
        text = value.replace("\r\n", "\n").replace("\r", "\n")
        return "\n".join(line.rstrip(" ") for line in text.split("\n")).strip("\n ")


class _Spatial(_Model):
    dims: Dims = Field(
        2, description="Spatial dims of the input: 1 (B, C, L), 2 (B, C, H, W), 3 (B, C, D, H, W)."
    )


class ChannelSpec(ChannelOptions, _Spatial, _Variant):
    kind: Literal["channel"] = Field(description="Channel attention: SE, CBAM's channel half.")


class SpatialSpec(SpatialOptions, _Spatial, _Variant):
    kind: Literal["spatial"] = Field(description="Spatial attention: CBAM's spatial half.")


CBAM_CHANNEL_DEFAULTS: dict[str, Any] = {"pooling": ("avg", "max"), "bias": False}


class CbamSpec(_Spatial, _Variant):
    kind: Literal["cbam"] = Field(
        description="CBAM: channel attention and spatial attention in sequence."
    )
    channel: ChannelOptions = Field(
        ChannelOptions(**CBAM_CHANNEL_DEFAULTS),
        description=(
            "The channel half. Fields not given take the cbam.channel defaults, except "
            "pooling [avg, max] and bias false, as in the CBAM paper."
        ),
    )
    spatial: SpatialOptions = Field(SpatialOptions(), description="The spatial half.")
    order: Literal["channel_first", "spatial_first"] = Field(
        "channel_first", description="Which half runs first."
    )

    @field_validator("channel", mode="before")
    @classmethod
    def _cbam_channel_defaults(cls, value: Any) -> Any:
        return {**CBAM_CHANNEL_DEFAULTS, **value} if isinstance(value, dict) else value


MAX_ECA_KERNEL = 255


class EcaSpec(_Spatial, _Variant):
    kind: Literal["eca"] = Field(description="Efficient channel attention (Wang et al., 2020).")
    kernel_size: int | None = Field(
        None,
        ge=1,
        le=31,
        description=(
            "Odd size of the 1D conv across channels; null: the paper's adaptive size "
            "t = int(abs((log2(C) + beta) / gamma)), t + 1 if t is even. An explicit size is never overridden."
        ),
    )
    gamma: float = Field(
        2.0, gt=0, le=16, description="gamma of the adaptive kernel size (kernel_size null only)."
    )
    beta: float = Field(
        1.0, ge=-16, le=16, description="beta of the adaptive kernel size (kernel_size null only)."
    )
    min_kernel_size: int = Field(
        1,
        ge=1,
        le=31,
        description="Lower bound on the adaptive size (timm's EcaModule and CecaModule use 3).",
    )
    padding: Literal["zeros", "circular"] = Field(
        "zeros",
        description=(
            "How the conv sees past the first and last channel: zeros, or circular (the last "
            "channels wrap around to the first: timm's CecaModule)."
        ),
    )
    mlp: bool = Field(
        False,
        description=(
            "timm's ecam: a 1x1 conv from the pooled vector to a hidden width (conv), the "
            "activation, then the k-wide conv back to one (conv2), both with biases."
        ),
    )
    reduction: int = Field(
        8,
        ge=1,
        le=1024,
        description="With mlp: the hidden width is C / reduction (rounded, see divisor).",
    )
    divisor: int = Field(8, ge=1, le=256, description="With mlp: timm's make_divisible divisor.")
    round_limit: float = Field(
        0.9, ge=0.0, lt=1.0, description="With mlp: timm's make_divisible round_limit."
    )
    activation: Activation = Field(
        "relu", description="With mlp: the activation between the convs."
    )
    bias: bool = Field(
        False,
        description="Without mlp: a bias on the conv (timm's CecaModule has one when given an act_layer).",
    )
    gate: Gate = Field("sigmoid", description="Gate applied to the conv output before x * gate.")

    _odd = field_validator("kernel_size")(_odd_kernel("even sizes shift the channels"))

    @model_validator(mode="after")
    def _kernel_stays_small(self) -> EcaSpec:
        # What the generated constructor computes, for every channel count up to 2^31: the widest
        # adaptive kernel must stay a kernel (gamma 1e-9 would ask for a 28 GB one).
        if self.kernel_size is None:
            widest = max(abs(self.beta), abs(31 + self.beta)) / self.gamma
            if widest > MAX_ECA_KERNEL:
                raise ValueError(
                    f"gamma {self.gamma!r} and beta {self.beta!r} make the adaptive kernel up to "
                    f"{widest:.3g} wide (channels up to 2^31); at most {MAX_ECA_KERNEL}"
                )
        return self

    @model_validator(mode="after")
    def _adaptive_only(self) -> EcaSpec:
        if self.kernel_size is not None and (
            (self.gamma, self.beta, self.min_kernel_size) != (2.0, 1.0, 1)
        ):
            raise ValueError(
                "gamma, beta and min_kernel_size set the adaptive size: give them only with "
                "kernel_size null"
            )
        defaults = {"reduction": 8, "divisor": 8, "round_limit": 0.9, "activation": "relu"}
        changed = [f for f, v in defaults.items() if getattr(self, f) != v]
        if changed and not self.mlp:
            raise ValueError(f"{', '.join(changed)} apply only with mlp: true")
        if self.mlp and self.bias:
            raise ValueError("bias applies only without mlp (timm's mlp convs always have biases)")
        return self


class EseSpec(_Spatial, _Variant):
    kind: Literal["ese"] = Field(
        description="Effective squeeze-excitation (Lee and Park, 2020): one C -> C conv, no reduction."
    )
    pooling: tuple[Literal["avg", "max"], ...] = Field(
        ("avg",),
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=2,
        description=(
            "Global poolings over the spatial dims; with both, their average (timm's add_maxpool)."
        ),
    )
    gate: Gate = Field(
        "hard_sigmoid", description="Gate applied to the conv output before x * gate."
    )
    bias: bool = Field(True, description="Bias on the conv fc.")

    _pooling_unique = field_validator("pooling")(_unique)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class GeSpec(_Spatial, _Variant):
    kind: Literal["ge"] = Field(
        description=(
            "Gather-excite (Hu et al., 2018): gather each position's context over an extent, "
            "excite with a gate (timm's GatherExcite)."
        )
    )
    extent: int = Field(
        0,
        ge=0,
        le=32,
        description=(
            "How far the gather reaches. 0: global (the whole map, as SE). An even e: a (2e - 1)-wide "
            "average with stride e, padding not counted (extra_params: log2(e) depthwise 3x3 convs "
            "with stride 2), and the gate map resized back to the input's size by nearest-neighbour "
            "interpolation."
        ),
    )
    extra_params: bool = Field(
        False,
        description=(
            "GE-theta: gather with depthwise convs (gather.conv1, gather.norm1, gather.act1, "
            "gather.conv2 ...) instead of parameter-free pooling. With extent 0 one conv whose "
            "kernel is feat_size, padded (k - 1) // 2 on each side as timm pads it: each position "
            "then gathers a feat_size window around itself."
        ),
    )
    feat_size: tuple[Annotated[int, Field(ge=1, le=128)], ...] | None = Field(
        None,
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=3,
        description=(
            "With extra_params and extent 0 (and only then): the kernel of the gather conv, one "
            "size per spatial dim (timm's feat_size, the feature map's size). An even size needs "
            "inputs of at least 2 positions along its dim."
        ),
    )
    norm: Norm = Field(
        "batchnorm",
        description=(
            "With extra_params: a batchnorm after each gather conv (timm's, whatever norm_layer "
            "names, or none for norm_layer None). batchnorm keeps running statistics."
        ),
    )
    pooling: tuple[Literal["avg", "max"], ...] = Field(
        ("avg",),
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=2,
        description=(
            "Without extra_params: the gather's pooling, avg, max, or both averaged (timm's "
            "add_maxpool)."
        ),
    )
    mlp: bool = Field(
        True,
        description=(
            "A 1x1-conv MLP between gather and gate: mlp.fc1 (C -> C'), the activation, mlp.fc2 "
            "(C' -> C), both with biases (timm's use_mlp, a ConvMlp). false: the gate sees the "
            "gathered map itself."
        ),
    )
    reduction: int = Field(
        16, ge=1, le=1024, description="With mlp: C' = C / reduction (rounded, see divisor)."
    )
    divisor: int | None = Field(
        1,
        ge=1,
        le=256,
        description=(
            "With mlp: timm's make_divisible(C / reduction, divisor) (round_limit below), the "
            "nearest multiple, at least divisor; null: floor(C / reduction), at least 1."
        ),
    )
    round_limit: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="With mlp and a divisor: timm's make_divisible round_limit (GatherExcite passes 0).",
    )
    activation: Activation = Field(
        "relu",
        description=(
            "In the MLP between fc1 and fc2, and between the gather convs (extra_params with "
            "extent 4 or more)."
        ),
    )
    gate: Gate = Field("sigmoid", description="Gate applied to the excite map before x * gate.")

    _pooling_unique = field_validator("pooling")(_unique)

    @field_validator("extent")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"extent must be 0 (global) or even, got {value}")
        return value

    @model_validator(mode="after")
    def _options_apply(self) -> GeSpec:
        if self.extra_params and self.extent and not _is_power_of_two(self.extent):
            raise ValueError(
                f"extra_params gathers with log2(extent) stride-2 convs: extent must be a power "
                f"of two, got {self.extent}"
            )
        needs_feat = self.extra_params and self.extent == 0
        if needs_feat and self.feat_size is None:
            raise ValueError(
                "extra_params with extent 0 needs feat_size (the gather conv's kernel)"
            )
        if not needs_feat and self.feat_size is not None:
            raise ValueError("feat_size applies only with extra_params: true and extent 0")
        if self.feat_size is not None and len(self.feat_size) != self.dims:
            raise ValueError(
                f"feat_size needs one size per spatial dim ({self.dims}), got {list(self.feat_size)}"
            )
        if self.norm != "batchnorm" and not self.extra_params:
            raise ValueError("norm applies only with extra_params: true (to the gather convs)")
        if self.pooling != ("avg",) and self.extra_params:
            raise ValueError("pooling applies only without extra_params (the convs gather then)")
        if self.dims == 3 and self.extent and not self.extra_params:
            raise ValueError(
                "extent > 0 without extra_params pools with avg_pool3d in 3D, which PyTorch refuses "
                "for inputs smaller than its kernel, padding or not: use dims 1 or 2, extent 0 or "
                "extra_params"
            )
        defaults = {"reduction": 16, "divisor": 1, "round_limit": 0.0}
        changed = [f for f, v in defaults.items() if getattr(self, f) != v]
        if changed and not self.mlp:
            raise ValueError(f"{', '.join(changed)} apply only with mlp: true")
        if self.round_limit and self.divisor is None:
            raise ValueError("round_limit applies only with a divisor")
        gather_act = self.extra_params and self.extent >= 4
        if self.activation != "relu" and not (self.mlp or gather_act):
            raise ValueError(
                "activation applies only with mlp: true or between gather convs (extra_params, "
                "extent 4 or more)"
            )
        return self


class GcSpec(_Spatial, _Variant):
    kind: Literal["gc"] = Field(
        description=(
            "Global context (Cao et al., 2019, GCNet): one context vector per sample, transformed "
            "and fused into every position by scale and/or add (timm's GlobalContext)."
        )
    )
    context: Literal["attention", "avg"] = Field(
        "attention",
        description=(
            "Context modelling: attention, a 1x1 conv conv_attn to one logit per position, softmax "
            "over the positions, the weighted sum of x (timm's use_attn); avg, the spatial mean."
        ),
    )
    fuse_scale: bool = Field(
        True,
        description=("x * gate(mlp_scale(context)): the SE-like fusion (timm's fuse_scale; gc)."),
    )
    fuse_add: bool = Field(
        False,
        description=(
            "x + mlp_add(context), after the scale when both: the paper's fusion (timm's "
            "fuse_add; gca). The output is then not x times a gate."
        ),
    )
    reduction: int = Field(
        8,
        ge=1,
        le=1024,
        description=(
            "The transforms' hidden width C' = C / reduction (rounded, see divisor): each is fc1 "
            "(C -> C'), a layer norm over C' (eps 1e-6), the activation, fc2 (C' -> C)."
        ),
    )
    divisor: int | None = Field(
        1,
        ge=1,
        le=256,
        description=(
            "timm's make_divisible(C / reduction, divisor) (round_limit below), the nearest "
            "multiple, at least divisor; null: floor(C / reduction), at least 1."
        ),
    )
    round_limit: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="With a divisor: timm's make_divisible round_limit (GlobalContext passes 0).",
    )
    activation: Activation = Field(
        "relu", description="In each transform, between the layer norm and fc2."
    )
    gate: Gate = Field(
        "sigmoid", description="With fuse_scale: gate applied to mlp_scale's output."
    )

    @model_validator(mode="after")
    def _fusion(self) -> GcSpec:
        if not (self.fuse_scale or self.fuse_add):
            raise ValueError(
                "fuse_scale and fuse_add both false would return x unchanged: set at least one"
            )
        if self.gate != "sigmoid" and not self.fuse_scale:
            raise ValueError("gate applies only with fuse_scale: true")
        if self.round_limit and self.divisor is None:
            raise ValueError("round_limit applies only with a divisor")
        return self


class SimamSpec(_Spatial, _Variant):
    kind: Literal["simam"] = Field(
        description=(
            "SimAM (Yang et al., 2021): parameter-free attention, each neuron gated by the inverse "
            "of its minimal energy within its channel."
        )
    )
    e_lambda: float = Field(
        1e-4,
        ge=1e-8,
        le=100.0,
        description=(
            "lambda, the energy's regulariser: the gate is sigmoid(d / (4 (v + lambda)) + 1/2), d a "
            "position's squared deviation from its channel's mean, v = sum(d) / (positions - 1). "
            "Positive, so a constant channel gets sigmoid(1/2), not 0 / 0; larger values flatten "
            "every gate towards that."
        ),
    )


class SgeSpec(_Spatial, _Variant):
    kind: Literal["sge"] = Field(
        description=(
            "Spatial group-wise enhance (Li et al., 2019): per channel group, a spatial gate from "
            "each position's similarity with the group's mean vector."
        )
    )
    groups: int = Field(
        64,
        ge=1,
        le=1024,
        description=(
            "G, the number of channel groups (64 in the paper); each group has its own scale "
            "``weight`` and shift ``bias``. The channel count must be divisible by G (checked when "
            "the module is built)."
        ),
    )


class AttentionOptions(_Model):
    """What scaled dot-product attention and multi-head attention share."""

    scale: float | None = Field(
        None, gt=0, le=1e4, description="Multiplier of q k^T; null: 1 / sqrt(head dim of q and k)."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout probability on the attention weights (training only).",
    )
    causal: bool = Field(
        False, description="Query i attends to keys 0..i only (aligned as causal_alignment says)."
    )
    causal_alignment: Literal["top_left", "bottom_right"] = Field(
        "top_left",
        description=(
            "With causal and Lq != Lk: top_left, query i sees keys 0..i (SDPA's is_causal); "
            "bottom_right, query i sees keys 0..i + Lk - Lq (decoding with a cache)."
        ),
    )

    window: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description=(
            "Sliding-window (local) attention over W keys, the query's own included (Mistral's "
            "sliding_window): causal, query i sees keys i - W < j <= i (aligned as "
            "causal_alignment says); not causal, keys |i - j| < W. null: every key."
        ),
    )
    softcap: float | None = Field(
        None,
        gt=0,
        le=1e4,
        description=(
            "Logit soft-capping (Gemma 2's attn_logit_softcapping): scaled scores s become "
            "softcap * tanh(s / softcap) before masks and biases are added; computed on an explicit "
            "softmax path (SDPA has no such step). null: none."
        ),
    )

    @model_validator(mode="after")
    def _alignment_needs_causal(self) -> AttentionOptions:
        if self.causal_alignment != "top_left" and not self.causal:
            raise ValueError("causal_alignment applies only with causal: true")
        return self


class SdpaSpec(AttentionOptions, _Variant):
    kind: Literal["sdpa"] = Field(
        description="Scaled dot-product attention over (..., L, D) tensors."
    )


class MhaSpec(AttentionOptions, _Variant):
    kind: Literal["mha"] = Field(description="Multi-head attention with q/k/v/out projections.")
    heads: int = Field(8, ge=1, le=256, description="Number of attention heads.")
    head_dim: int | None = Field(
        None, ge=1, le=1024, description="Width of each q/k head; null: embed_dim // heads."
    )
    value_head_dim: int | None = Field(
        None, ge=1, le=1024, description="Width of each value head; null: the q/k head width."
    )
    kv_heads: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Key/value heads, shared by contiguous groups of query heads (grouped-query attention; "
            "1: multi-query); must divide heads. null: heads."
        ),
    )
    qk_norm: Literal["none", "layernorm", "rmsnorm"] = Field(
        "none",
        description=(
            "Normalise each head's q and k over head_dim (q_norm, k_norm; eps 1e-5 for layernorm, "
            "1e-6 for rmsnorm), as timm's Attention does."
        ),
    )
    return_weights: Literal["none", "mean", "per_head"] = Field(
        "none",
        description=(
            "none: forward returns the output. mean / per_head: forward returns (output, weights), "
            "weights (B, Lq, Lk) averaged over heads or (B, heads, Lq, Lk), after dropout, "
            "through an explicit softmax path."
        ),
    )
    qkv_bias: bool = Field(True, description="Biases on q_proj, k_proj and v_proj.")
    out_bias: bool = Field(True, description="Bias on out_proj.")
    rope: Literal["none", "half", "interleaved"] = Field(
        "none",
        description=(
            "Rotary position embedding (Su et al., 2021) on each head's q and k, after qk_norm: "
            "half pairs feature i with i + R/2 (GPT-NeoX, Llama: rotate_half), interleaved pairs "
            "features 2i and 2i + 1 (GPT-J); R is the rotary width (rope_fraction)."
        ),
    )
    rope_base: float = Field(
        10000.0,
        gt=1.0,
        le=1e9,
        description="RoPE's theta: pair i turns by position * rope_base^(-2i / R).",
    )
    rope_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=(
            "The rotary part of each head: its first R = round(head_dim * rope_fraction) features "
            "(GPT-NeoX's rotary_pct, partial_rotary_factor); R must be even and >= 2; the rest "
            "pass through."
        ),
    )
    alibi: bool = Field(
        False,
        description=(
            "ALiBi (Press et al., 2022): adds -slope_h * (i - j) to head h's scores, the slopes as "
            "the paper (and BLOOM) define them for any head count."
        ),
    )

    @property
    def torch_compatible(self) -> bool:
        """Whether an nn.MultiheadAttention of the same configuration exists (from_torch, anchors)."""
        return (
            self.head_dim is None
            and self.value_head_dim is None
            and self.qkv_bias == self.out_bias
            and self.kv_heads in (None, self.heads)
            and self.qk_norm == "none"
            and self.rope == "none"
            and not self.alibi
            and self.window is None
            and self.softcap is None
        )

    @property
    def rotary_dim(self) -> int | None:
        """R, the rotary width, where head_dim is fixed by the spec (else known at construction)."""
        if self.rope == "none" or self.head_dim is None:
            return None
        return round(self.head_dim * self.rope_fraction)

    @model_validator(mode="after")
    def _positions_consistent(self) -> MhaSpec:
        if self.rope == "none" and (self.rope_base != 10000.0 or self.rope_fraction != 1.0):
            raise ValueError(
                "rope_base and rope_fraction apply only with rope: half or interleaved"
            )
        if self.rope != "none" and self.alibi:
            raise ValueError(
                "rope and alibi are alternative position encodings: choose one (alibi: true or rope)"
            )
        r = self.rotary_dim
        if r is not None and (r < 2 or r % 2):
            raise ValueError(
                f"the rotary width round(head_dim * rope_fraction) = round({self.head_dim} * "
                f"{self.rope_fraction}) = {r} must be even and >= 2"
            )
        return self

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> MhaSpec:
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads must divide heads ({self.heads}), got {self.kv_heads}")
        return self


class _Planar(_Spatial):
    """Blocks that pool along H and along W separately: 2D inputs only."""

    dims: Dims = Field(
        2,
        description=(
            "Spatial dims of the input: 2 only, (B, C, H, W); the block pools along H and along "
            "W separately."
        ),
    )

    #: Why the block is 2D only, for the error.
    planar_reason: ClassVar[str] = "this block pools along H and along W separately"

    @field_validator("dims")
    @classmethod
    def _two_dims(cls, value: int) -> int:
        if value != 2:
            raise ValueError(f"{cls.planar_reason}: dims must be 2, got {value}")
        return value


class ElaSpec(_Planar, _Variant):
    kind: Literal["ela"] = Field(
        description=(
            "Efficient local attention (Xu and Wan, 2024): a gate along H times a gate along W, "
            "each from a depthwise 1D conv over a pooled strip."
        )
    )
    kernel_size: int = Field(
        7,
        ge=1,
        le=31,
        description=(
            "Odd length of the depthwise 1D convs: k x 1 along H (conv_h), 1 x k along W (conv_w)."
        ),
    )
    bias: bool = Field(False, description="Biases on conv_h and conv_w.")
    norm: StripNorm = Field(
        "groupnorm",
        description=(
            "Normalisation of each conv's output (norm_h, norm_w): groupnorm (statistics of each "
            "sample: training and eval agree), batchnorm (running statistics: they differ) or none."
        ),
    )
    norm_groups: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "With groupnorm: its number of groups, which must divide C. 1: one group over every "
            "channel and position of the strip (timm's GroupNorm1); the widely copied ELA code uses 16."
        ),
    )
    activation: ActivationOrNone = Field(
        "silu",
        description=(
            "Activation between the norm and the gate (timm's); none: the norm's output goes "
            "straight into the gate, as in the paper."
        ),
    )
    gate: Gate = Field(
        "sigmoid", description="Gate applied to each strip: x * gate(h strip) * gate(w strip)."
    )
    skip: bool = Field(
        False,
        description="Adds x to the gated output (a residual): x * a_h * a_w + x, no longer a gate.",
    )

    _odd = field_validator("kernel_size")(_odd_kernel("an even one lengthens the strip by one"))

    @model_validator(mode="after")
    def _groups_need_groupnorm(self) -> ElaSpec:
        if self.norm_groups != 1 and self.norm != "groupnorm":
            raise ValueError("norm_groups applies only with norm: groupnorm")
        return self


class StripSpec(_Planar, _Variant):
    kind: Literal["strip"] = Field(
        description=(
            "Strip attention (timm's StripAttn): one gate from the sum of a pooled H strip and a "
            "pooled W strip, each optionally refined by a depthwise 1D conv."
        )
    )
    conv: bool = Field(
        True,
        description=(
            "Depthwise 1D convs on the strips, k x 1 along H (conv_h) and 1 x k along W (conv_w); "
            "false: the pooled strips are summed as they are (no parameters)."
        ),
    )
    kernel_size: int = Field(
        3, ge=1, le=31, description="With conv: the odd length of conv_h and conv_w."
    )
    bias: bool = Field(False, description="With conv: biases on conv_h and conv_w.")
    gate: Gate = Field("sigmoid", description="Gate applied to the summed strips before x * gate.")
    skip: bool = Field(
        False,
        description="Adds x to the gated output (a residual): x * a + x, no longer a gate.",
    )

    _odd = field_validator("kernel_size")(_odd_kernel("an even one lengthens the strip by one"))

    @model_validator(mode="after")
    def _conv_options(self) -> StripSpec:
        changed = [f for f, v in (("kernel_size", 3), ("bias", False)) if getattr(self, f) != v]
        if changed and not self.conv:
            verb = "applies" if len(changed) == 1 else "apply"
            raise ValueError(f"{', '.join(changed)} {verb} only with conv: true")
        return self


# The fields coord and scoord share (each model lists its own, in the order a reader expects).
def _coord_reduction(default: int, first: str, heads: str) -> Any:
    return Field(
        default,
        ge=1,
        le=1024,
        description=(
            f"Reduction ratio r of the shared bottleneck {first}: C -> C / r * se_factor "
            f"(rounded, see divisor) -> C in each of {heads}."
        ),
    )


def _coord_divisor() -> Any:
    return Field(
        8,
        ge=1,
        le=256,
        description=(
            "Rounding of the bottleneck width. An integer d: timm's make_divisible(C * (1 / r) * "
            "se_factor, d) with round_limit 0, computed as timm does: the nearest multiple of d, "
            "at least d. null: floor(C / r), as in the paper's code (there with min_channels 8)."
        ),
    )


def _coord_min_channels() -> Any:
    return Field(
        1,
        ge=1,
        le=4096,
        description="Lower bound on the bottleneck width (with a divisor d, at least d anyway).",
    )


def _coord_se_factor() -> Any:
    return Field(
        2 / 3,
        gt=0.0,
        le=4.0,
        description=(
            "With a divisor: C / r is multiplied by it before rounding (timm's se_factor; its 2/3 "
            "keeps the parameter count near an SE block's, which has one head where this has two)."
        ),
    )


def _coord_skip() -> Any:
    return Field(
        False,
        description=(
            "Add x to the output, x * gate + x (timm's has_skip): a residual, so the output is no "
            "longer bounded by x."
        ),
    )


def _se_factor_needs_divisor(spec: CoordSpec | ScoordSpec) -> CoordSpec | ScoordSpec:
    if spec.divisor is None and spec.se_factor != 1.0:
        raise ValueError(
            "se_factor applies only with a divisor (timm's rounding); with divisor null the "
            "width is floor(C / reduction): give se_factor 1.0"
        )
    return spec


class CoordSpec(_Planar, _Variant):
    kind: Literal["coord"] = Field(
        description=(
            "Coordinate attention (Hou et al., 2021): a row gate and a column gate from strip pooling."
        )
    )
    reduction: int = _coord_reduction(16, "conv1", "conv_h and conv_w")
    divisor: int | None = _coord_divisor()
    min_channels: int = _coord_min_channels()
    se_factor: float = _coord_se_factor()
    activation: Activation = Field(
        "hard_swish", description="Activation after conv1 (and bn1): hard_swish in the paper."
    )
    norm: Norm = Field(
        "batchnorm",
        description=(
            "Normalisation bn1 after conv1, over both strips together (batch statistics over B "
            "and H + W positions). batchnorm keeps running statistics: training and eval differ."
        ),
    )
    gate: Gate = Field(
        "sigmoid", description="Gate applied to each axis's scores: x * gate(s_h) * gate(s_w)."
    )
    bias: bool = Field(False, description="Biases on conv1, conv_h and conv_w.")
    skip: bool = _coord_skip()

    _se_factor_rule = model_validator(mode="after")(_se_factor_needs_divisor)


class ScoordSpec(_Planar, _Variant):
    kind: Literal["scoord"] = Field(
        description=(
            "timm's simplified coordinate attention: linear layers, no norm, one gate of the row "
            "and column scores summed."
        )
    )
    reduction: int = _coord_reduction(4, "fc1", "fc_h and fc_w")
    divisor: int | None = _coord_divisor()
    min_channels: int = _coord_min_channels()
    se_factor: float = _coord_se_factor()
    activation: Activation = Field("silu", description="Activation after fc1.")
    gate: Gate = Field(
        "sigmoid", description="Gate applied to the summed scores: x * gate(s_h + s_w)."
    )
    bias: bool = Field(True, description="Biases on fc1, fc_h and fc_w.")
    skip: bool = _coord_skip()

    _se_factor_rule = model_validator(mode="after")(_se_factor_needs_divisor)


class TripletSpec(_Planar, _Variant):
    planar_reason: ClassVar[str] = "triplet attention rotates C, H and W into one another"
    kind: Literal["triplet"] = Field(
        description=(
            "Triplet attention (Misra et al., 2021): three branches, each pooling over one of "
            "C, H, W and gating the plane of the other two; their gated copies averaged."
        )
    )
    dims: Dims = Field(
        2,
        description=(
            "Spatial dims of the input: 2 only, (B, C, H, W); the branches rotate C, H and W "
            "into one another."
        ),
    )
    kernel_size: int = Field(
        7,
        ge=1,
        le=31,
        description=(
            "Side of each branch's conv kernel (the paper's k = 7); odd, so every map keeps its size."
        ),
    )
    no_spatial: bool = Field(
        False,
        description=(
            "Drop the hw branch (spatial attention over H, W): the cw and hc branches alone, "
            "averaged (the official code's no_spatial)."
        ),
    )

    _odd = field_validator("kernel_size")(_odd_kernel("even sizes change the output size"))


BAM_DILATION = 4


class BamSpec(_Planar, _Variant):
    planar_reason: ClassVar[str] = "BAM is defined for 2D inputs only"
    kind: Literal["bam"] = Field(
        description=(
            "BAM, bottleneck attention module (Park et al., 2018): channel and spatial attention "
            "in parallel, x * (1 + sigmoid(channel + spatial))."
        )
    )
    dims: Dims = Field(
        2,
        description=(
            "Spatial dims of the input: 2 only, (B, C, H, W), as in the paper and the authors' "
            "code (2D convs and batchnorms)."
        ),
    )
    reduction: int = Field(
        16,
        ge=1,
        le=1024,
        description=(
            "Reduction ratio r: the channel MLP's hidden layer and the spatial branch work at "
            "C' = floor(C / r) channels (at least min_channels)."
        ),
    )
    min_channels: int = Field(1, ge=1, le=4096, description="Lower bound on C' (never 0 channels).")
    dilation: int = Field(
        BAM_DILATION,
        ge=1,
        le=32,
        description=(
            "Dilation d of the spatial branch's 3x3 convs, padded by d so the map keeps its size "
            "(the paper's 4)."
        ),
    )
    dilated_convs: int = Field(
        2,
        ge=0,
        le=8,
        description=(
            "Number of dilated 3x3 convs C' -> C' in the spatial branch, each followed by a "
            "batchnorm and a ReLU (the paper's 2)."
        ),
    )
    merge: Literal["sum", "product"] = Field(
        "sum",
        description=(
            "How the two branches combine before the sigmoid: sum, as in the paper (the best in "
            "its ablation); product, as in the authors' released code (MODELS/bam.py)."
        ),
    )

    @model_validator(mode="after")
    def _dilation_needs_convs(self) -> BamSpec:
        if self.dilated_convs == 0 and self.dilation != BAM_DILATION:
            raise ValueError("dilation applies only with dilated_convs of at least 1")
        return self


def _timm_width(default: int, what: str) -> tuple[Any, Any, Any]:
    """reduction, divisor and round_limit of a width timm rounds with its make_divisible defaults."""
    return (
        Field(
            default,
            ge=1,
            le=1024,
            description=f"{what} C' = C / reduction (rounded, see divisor): timm's rd_ratio 1/{default}.",
        ),
        Field(
            8,
            ge=1,
            le=256,
            description=(
                "timm's rd_divisor: make_divisible(C / reduction, divisor, round_limit), the nearest "
                "multiple, at least divisor. A fixed rd_channels w is reduction 1024, divisor w."
            ),
        ),
        Field(
            0.9,
            ge=0.0,
            lt=1.0,
            description="timm's make_divisible round_limit (its default 0.9, which NonLocalAttn and BatNonLocalAttn keep).",
        ),
    )


_NL_WIDTH = _timm_width(8, "The width of the embeddings t, p, g:")


class NlSpec(_Spatial, _Variant):
    kind: Literal["nl"] = Field(
        description=(
            "Non-local block (Wang et al., 2018; timm's NonLocalAttn): every position attends over "
            "every position, embedded at a reduced width; the result projected back, batch-normed "
            "and added to x."
        )
    )
    use_scale: bool = Field(
        True,
        description=(
            "Scale the scores t^T p by C ** -0.5 before the softmax, C the input channels (timm's "
            "use_scale; not the reduced width); false: unscaled, as the paper's embedded Gaussian."
        ),
    )
    reduction: int = _NL_WIDTH[0]
    divisor: int = _NL_WIDTH[1]
    round_limit: float = _NL_WIDTH[2]


_BAT_WIDTH = _timm_width(4, "The width the bilinear transform works at:")


class BatSpec(_Planar, _Variant):
    planar_reason: ClassVar[str] = "BAT transforms rows and columns with bilinear matrices"
    kind: Literal["bat"] = Field(
        description=(
            "Non-local block with grouped bilinear attentional transforms (Chi et al., 2020; "
            "timm's BatNonLocalAttn): x + conv2(BAT(conv1(x))), each conv a 1x1 conv, a norm and "
            "an activation."
        )
    )
    dims: Dims = Field(
        2,
        description=(
            "Spatial dims of the input: 2 only, (B, C, H, W); BAT transforms rows and columns with "
            "bilinear matrices."
        ),
    )
    block_size: int = Field(
        7,
        ge=1,
        le=64,
        description=(
            "n: the bilinear matrices are n x n, each entry spread over an (H / n) x (W / n) block; "
            "H and W must be multiples of n."
        ),
    )
    groups: int = Field(
        2,
        ge=1,
        le=256,
        description=(
            "Channel groups of the transform, one pair of bilinear matrices each; must divide the "
            "reduced width C' (checked when the module is built)."
        ),
    )
    reduction: int = _BAT_WIDTH[0]
    divisor: int = _BAT_WIDTH[1]
    round_limit: float = _BAT_WIDTH[2]
    drop_rate: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Channel dropout (Dropout2d) on the transformed map before the residual add, training only.",
    )
    activation: ActivationOrNone = Field(
        "relu",
        description="Activation after each norm (timm's act_layer; none: nn.Identity, act_layer None).",
    )
    norm: Literal["batchnorm", "groupnorm1", "layernorm2d"] = Field(
        "batchnorm",
        description=(
            "The norm of each conv-norm-act (timm's norm_layer): batchnorm (running statistics: "
            "training and eval differ), groupnorm1 (one group: each sample over its channels and "
            "positions) or layernorm2d (each position over its channels), both eps 1e-5. "
            "groupnorm1 with groups 1 refuses a 1 x 1 map (its transform's one-channel norm sees "
            "a single value: F.group_norm raises, as in timm)."
        ),
    )


def _sk_kernels(values: tuple[int, ...]) -> tuple[int, ...]:
    bad = [k for k in values if k < 3 or k % 2 == 0]
    if bad:
        raise ValueError(
            f"kernel_size entries must be odd and at least 3 (timm's SelectiveKernel asserts it), "
            f"got {', '.join(map(str, bad))}"
        )
    return values


class SkSpec(_Planar, _Variant):
    kind: Literal["sk"] = Field(
        description=(
            "Selective kernel convolution (Li et al., 2019, SKNet; timm's SelectiveKernel): "
            "parallel conv-BN-act paths of different receptive fields, mixed per channel by "
            "softmax weights from their pooled sum. A conv block: its constructor takes "
            "out_channels and stride."
        )
    )
    planar_reason: ClassVar[str] = "the paths are 2D convs (timm's ConvNormAct)"
    kernel_size: tuple[int, ...] = Field(
        (3, 5),
        strict=False,  # YAML gives a list
        min_length=1,
        max_length=4,
        description=(
            "One odd kernel size (at least 3) per path, in order: [3, 5] is timm's default, a 3x3 "
            "and a 5x5 path; timm's kernel_size k is [k, k]."
        ),
    )
    dilation: int = Field(
        1,
        ge=1,
        le=8,
        description="Dilation of the module as a whole: every path's dilation is multiplied by it.",
    )
    keep_3x3: bool = Field(
        True,
        description=(
            "Every path a 3x3 conv, a k-sized kernel becoming dilation (k - 1) // 2 (the same "
            "receptive field, timm's default); false: each path its own k x k kernel."
        ),
    )
    split_input: bool = Field(
        True,
        description=(
            "Split the input channels evenly across the paths (path i sees channels i * C/P to "
            "(i + 1) * C/P, C divisible by the number of paths P), as timm's default; false: "
            "every path sees every channel."
        ),
    )
    groups: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Groups of each path's conv; at most out_channels (timm's min(out_channels, groups)). "
            "They must divide each path's input and output channels."
        ),
    )
    reduction: int = Field(
        16,
        ge=1,
        le=1024,
        description=(
            "The attention's hidden width: make_divisible(out_channels / reduction, divisor) with "
            "round_limit 0.9, as timm's rd_ratio = 1 / reduction."
        ),
    )
    divisor: int = Field(
        8, ge=1, le=256, description="timm's rd_divisor: the hidden width is a multiple of it."
    )
    activation: Activation = Field(
        "relu",
        description=(
            "The paths' activation, after each conv's batchnorm (timm's act_layer). The "
            "attention's own activation is a ReLU whatever this says, as timm builds it."
        ),
    )

    _kernels = field_validator("kernel_size")(_sk_kernels)


class SplatSpec(_Planar, _Variant):
    kind: Literal["splat"] = Field(
        description=(
            "Split attention (Zhang et al., 2020, ResNeSt; timm's SplitAttn): one grouped conv to "
            "radix splits of the output, mixed per channel by a softmax over the splits (a "
            "sigmoid with radix 1) from their pooled sum. A conv block: its constructor takes "
            "out_channels and stride."
        )
    )
    planar_reason: ClassVar[str] = "the conv is 2D (timm's SplitAttn)"
    kernel_size: int = Field(3, ge=1, le=31, description="The conv's kernel size.")
    padding: int | None = Field(
        None,
        ge=0,
        le=64,
        description=(
            "The conv's padding; null: kernel_size // 2 (timm's default). ResNeSt passes its "
            "dilation. A padding below dilation * (kernel_size - 1) / 2 shrinks the output."
        ),
    )
    dilation: int = Field(1, ge=1, le=8, description="The conv's dilation.")
    groups: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Cardinality: the conv has groups * radix groups, fc1 and fc2 groups groups, and the "
            "softmax runs over the radix within each group."
        ),
    )
    radix: int = Field(
        2,
        ge=1,
        le=8,
        description=(
            "Splits of the conv's output (out_channels each) that the attention mixes; 1: no "
            "mixing, the output is the conv's times a sigmoid gate."
        ),
    )
    bias: bool = Field(False, description="A bias on the conv (fc1 and fc2 always have one).")
    reduction: int = Field(
        4,
        ge=1,
        le=1024,
        description=(
            "The attention's hidden width: make_divisible(channels * radix / reduction, divisor, "
            "min_channels) with round_limit 0.9, as timm's rd_ratio = 1 / reduction (the input's "
            "channels, as timm)."
        ),
    )
    divisor: int = Field(
        8, ge=1, le=256, description="timm's rd_divisor: the hidden width is a multiple of it."
    )
    min_channels: int = Field(
        32,
        ge=1,
        le=4096,
        description="Lower bound on the hidden width (timm's make_divisible min_value=32).",
    )
    activation: Activation = Field(
        "relu", description="After the conv's norm (act0) and after fc1's norm (act1)."
    )
    norm: Norm = Field(
        "none",
        description=(
            "batchnorm: bn0 after the conv and bn1 after fc1 (running statistics: training and "
            "eval differ), as ResNeSt builds it; none: timm's default."
        ),
    )


def _num_heads(default: int) -> Any:
    return Field(
        default,
        ge=1,
        le=64,
        description=(
            "Attention heads; the output width (out_channels, default C) must be divisible by it. "
            "Each head's value width is out_channels / num_heads."
        ),
    )


def _dim_head(default: int | None) -> Any:
    return Field(
        default,
        ge=1,
        le=512,
        description=(
            "Query and key width per head. null: timm's make_divisible(out_channels * qk_ratio, 8) "
            "// num_heads, from the output width at construction."
        ),
    )


def _qk_ratio() -> Any:
    return Field(
        1.0,
        gt=0.0,
        le=4.0,
        description="With dim_head null: the query and key width relative to the output width.",
    )


def _qkv_bias() -> Any:
    return Field(False, description="Biases on the query, key and value projections.")


def _scale_pos_embed() -> Any:
    return Field(
        False,
        description=(
            "Scale the relative position logits with the content logits: (q k + pos) / sqrt(d) "
            "(timm's scale_pos_embed); false: q k / sqrt(d) + pos."
        ),
    )


class _SelfAttention(_Planar):
    """timm's self-attention layers (lambda, bottleneck, halo): heads, head widths, biases."""

    planar_reason: ClassVar[str] = "the layer attends over the positions of a 2D feature map"

    num_heads: int = _num_heads(4)
    dim_head: int | None = _dim_head(None)
    qk_ratio: float = _qk_ratio()
    qkv_bias: bool = _qkv_bias()

    @model_validator(mode="after")
    def _qk_ratio_needs_no_dim_head(self) -> _SelfAttention:
        if self.dim_head is not None and self.qk_ratio != 1.0:
            raise ValueError("qk_ratio applies only with dim_head: null")
        return self


class LambdaSpec(_SelfAttention, _Variant):
    kind: Literal["lambda"] = Field(
        description=(
            "Lambda layer (Bello, 2021): content and position lambdas, linear functions computed "
            "from the context, applied to each query (timm's LambdaLayer)."
        )
    )
    dim_head: int | None = _dim_head(16)
    r: int | None = Field(
        9,
        ge=1,
        le=31,
        description=(
            "Side of the local lambda convolution that makes the position lambdas (odd, so the "
            "map keeps its size); any input size works. null: a relative position embedding "
            "over the whole map, whose size is fixed at construction (feat_size)."
        ),
    )

    @field_validator("r")
    @classmethod
    def _odd_r(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError(f"r must be odd (an even one changes the map's size), got {value}")
        return value


class BottleneckSpec(_SelfAttention, _Variant):
    kind: Literal["bottleneck"] = Field(
        description=(
            "Bottleneck self-attention (Srinivas et al., 2021, BoTNet): multi-head attention over "
            "every position of a fixed-size map, with relative position logits (timm's "
            "BottleneckAttn)."
        )
    )
    scale_pos_embed: bool = _scale_pos_embed()


class HaloSpec(_SelfAttention, _Variant):
    kind: Literal["halo"] = Field(
        description=(
            "Halo attention (Vaswani et al., 2021, HaloNet): the map cut into blocks, each block's "
            "queries attending over the block and a halo around it (timm's HaloAttn)."
        )
    )
    num_heads: int = _num_heads(8)
    block_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Side of the query blocks; the input's H and W must be multiples of it.",
    )
    halo_size: int = Field(
        3,
        ge=0,
        le=32,
        description=(
            "Width of the halo: each block attends over a (block_size + 2 * halo_size)-wide window "
            "around it, zero-padded at the map's border (padded keys and values are zeros, not "
            "masked, as in timm)."
        ),
    )
    avg_down: bool = Field(
        False,
        description=(
            "With stride 2: average-pool the output 2 x 2 instead of striding the queries (timm "
            "pools anyway when block_size is odd)."
        ),
    )
    scale_pos_embed: bool = _scale_pos_embed()


ImageSpec = (
    ChannelSpec
    | SpatialSpec
    | CbamSpec
    | EcaSpec
    | EseSpec
    | GeSpec
    | GcSpec
    | CoordSpec
    | ScoordSpec
    | ElaSpec
    | StripSpec
    | SimamSpec
    | SgeSpec
    | TripletSpec
    | BamSpec
    | NlSpec
    | BatSpec
    | SkSpec
    | SplatSpec
    | LambdaSpec
    | BottleneckSpec
    | HaloSpec
)
AnySpec = ImageSpec | SdpaSpec | MhaSpec
SPEC_ADAPTER: TypeAdapter[AnySpec] = TypeAdapter(Annotated[AnySpec, Field(discriminator="kind")])
#: kind name -> its spec model. The kind names, in the order the README lists them.
MODELS: dict[str, type[_Variant]] = {
    "channel": ChannelSpec,
    "spatial": SpatialSpec,
    "cbam": CbamSpec,
    "eca": EcaSpec,
    "ese": EseSpec,
    "ge": GeSpec,
    "gc": GcSpec,
    "coord": CoordSpec,
    "scoord": ScoordSpec,
    "ela": ElaSpec,
    "strip": StripSpec,
    "simam": SimamSpec,
    "sge": SgeSpec,
    "triplet": TripletSpec,
    "bam": BamSpec,
    "nl": NlSpec,
    "bat": BatSpec,
    "sk": SkSpec,
    "splat": SplatSpec,
    "lambda": LambdaSpec,
    "bottleneck": BottleneckSpec,
    "halo": HaloSpec,
    "sdpa": SdpaSpec,
    "mha": MhaSpec,
}
KIND_NAMES: tuple[str, ...] = tuple(MODELS)


def validate(data: Any) -> AnySpec:
    """Validate one variant mapping; raises ``pydantic.ValidationError``."""
    return SPEC_ADAPTER.validate_python(data)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (``specs/schema.json``)."""
    variant = SPEC_ADAPTER.json_schema()
    defs = variant.pop("$defs", {})
    matrix_entry = {
        "type": "object",
        "description": (
            "A base variant expanded over lists of values: every combination of the `matrix` "
            "lists becomes one variant, named by formatting `name` (e.g. se_r{reduction})."
        ),
        "required": ["name", "kind", "matrix"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": list(KIND_NAMES)},
            "matrix": {
                "type": "object",
                "additionalProperties": {"type": "array", "minItems": 1},
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "attnforge spec file",
        "type": "object",
        "additionalProperties": False,
        "required": ["variants"],
        "properties": {
            "variants": {
                "type": "array",
                "items": {
                    "if": {"required": ["matrix"]},
                    "then": matrix_entry,
                    "else": variant,
                },
            }
        },
        "$defs": defs,
    }


def _type_text(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    literals = re.findall(r"Literal\[([^\]]*)\]", text)
    if literals:
        options = ", ".join(o.strip().strip("'") for o in literals[0].split(","))
        return f"list of {options}" if text.startswith("tuple") else f"one of {options}"
    text = (
        text.replace("<class '", "")
        .replace("'>", "")
        .replace("NoneType", "null")
        .replace(" | ", " or ")
    )
    if text.startswith(("harness.spec.", "attnforge.spec.")):
        return "mapping"
    return text


def _bounds_text(info: Any) -> str:
    parts = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
        for attr, word in (("min_length", "min length"), ("max_length", "max length")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{word} {getattr(meta, attr)}")
        if getattr(meta, "pattern", None):
            parts.append(f"matches `{meta.pattern}`")
    return ", ".join(parts)


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if isinstance(value, BaseModel):  # a nested mapping: what differs from its own table's defaults
        changed = value.model_dump(mode="json", exclude_defaults=True)
        return ("`" + json.dumps(changed) + "`" if changed else "`{}`") + " over the table below"
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value) + "`"


def reference_markdown() -> str:
    """The spec reference: every field of every kind, with type, default, bounds and meaning."""
    out = []
    sections: list[tuple[str, type[BaseModel]]] = [(kind, model) for kind, model in MODELS.items()]
    sections += [("cbam.channel", ChannelOptions), ("cbam.spatial", SpatialOptions)]
    for title, model in sections:
        out += [
            f"#### `{title}`",
            "",
            "| field | type | default | bounds | meaning |",
            "|---|---|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            if name == "kind":
                continue
            default = _default_text(info)
            out.append(
                f"| `{name}` | {_type_text(info.annotation)} | {default} | {_bounds_text(info)} | {info.description} |"
            )
        out.append("")
    return "\n".join(out)
