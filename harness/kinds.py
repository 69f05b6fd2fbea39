"""The kind database, after PyTorch's ``module_db``: one record per kind, the only place that knows it.

A record says how to build a variant's constructor arguments and inputs (``cases``, ``tiny``,
``inputs``), what the output shape is, which parameters the spec implies, what the independent
reference is (``attnforge.references``), which anchors it is compared with (``attnforge.anchors``),
which bad inputs must raise which ``ValueError`` (``error_inputs``, ModuleInfo's
``module_error_inputs_func``), which dims may vary under ``torch.export``, and its traits (gated,
attention: how keys are masked and where the sequence dims are, causality, dropout, weights, what
``torch.autocast`` does to its output dtype). ``attnforge.checks`` reads these and never branches on a
kind's name, so a new kind is one record here plus its spec model, context builder, template and
reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from . import anchors, references
from .anchors import Anchor
from .compare import CheckFailure
from .spec import (
    AnySpec,
    AttentionOptions,
    BamSpec,
    BatSpec,
    BottleneckSpec,
    CbamSpec,
    ChannelOptions,
    ChannelSpec,
    CoordSpec,
    EcaSpec,
    ElaSpec,
    EseSpec,
    GcSpec,
    GeSpec,
    HaloSpec,
    ImageSpec,
    LambdaSpec,
    MhaSpec,
    NlSpec,
    ScoordSpec,
    SdpaSpec,
    SgeSpec,
    SimamSpec,
    SkSpec,
    SpatialOptions,
    SpatialSpec,
    SplatSpec,
    StripSpec,
    TripletSpec,
)

S = TypeVar("S", bound=AnySpec)
Img = TypeVar("Img", bound=ImageSpec)

ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: A keyword-only constructor option's value: a width or a stride, or a size per spatial dim.
Option = int | tuple[int, ...]


def int_option(options: dict[str, Option], name: str, default: int) -> int:
    """An integer constructor option (out_channels, stride), ``default`` where the case has none."""
    value = options.get(name, default)
    if not isinstance(value, int):
        raise TypeError(f"constructor option {name}: expected an int, got {value!r}")
    return value


@dataclass(frozen=True)
class Case:
    """One way to build and call a module: constructor args, input shapes, which masks to pass.

    ``ctor`` are the constructor's positional arguments and ``kwargs`` its keyword-only options
    (``out_channels``, ``stride``, ...), as (name, value) pairs so a case stays hashable.
    ``magnitudes``: the scale each positional input is drawn at (default 1). Realistic activations
    are tens to hundreds, and half-precision overflows show there and nowhere else.
    """

    name: str
    ctor: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    masks: tuple[str, ...] = ()
    magnitudes: tuple[float, ...] = ()
    kwargs: tuple[tuple[str, Option], ...] = ()

    @property
    def options(self) -> dict[str, Option]:
        """The keyword-only constructor options."""
        return dict(self.kwargs)

    @property
    def realistic(self) -> bool:
        return any(m != 1.0 for m in self.magnitudes)

    def magnitude(self, i: int) -> float:
        return self.magnitudes[i] if i < len(self.magnitudes) else 1.0


@dataclass
class Inputs:
    """A call's positional and keyword tensors; ``options``: the case's constructor options
    (``Case.options``), not passed to ``forward``, for references whose function depends on them
    (a stride, an output width)."""

    args: list[Tensor]
    kwargs: dict[str, Tensor] = field(default_factory=dict)
    options: dict[str, Option] = field(default_factory=dict)

    def map(self, fn: Callable[[Tensor], Tensor]) -> Inputs:
        return Inputs(
            [fn(a) for a in self.args], {k: fn(v) for k, v in self.kwargs.items()}, self.options
        )


@dataclass(frozen=True)
class ErrorInput:
    """A bad construction or call that must raise ``ValueError`` matching ``match`` (a regex).

    ``call(factory, device)`` performs it; ``{cls}`` in ``match`` stands for the class name.
    """

    name: str
    call: Callable[[Callable[..., nn.Module], str], object]
    match: str


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def output(result: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A module's output tensor: modules that return weights return (output, weights)."""
    return result[0] if isinstance(result, tuple) else result


class Kind(Generic[S]):
    """A kind's record. Subclasses fill in what their kind knows; the defaults say 'not this kind'."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple[torch.dtype, ...]] = ALL_DTYPES
    factory_kwargs: ClassVar[bool] = True  # the constructor takes device= and dtype=
    channels_last: ClassVar[bool] = False  # an image kind: channels_last inputs must not matter
    # Under torch.autocast: True, the output keeps the input's dtype (the last op multiplies x by a
    # gate, which autocast leaves alone, as timm's blocks do); False, it is the autocast dtype (the
    # last op is a projection or SDPA, as with nn.Linear and nn.MultiheadAttention).
    autocast_keeps_dtype: ClassVar[bool] = True
    attention: ClassVar[bool] = False  # queries attend over keys: the attention properties apply

    def gated(self, spec: S) -> bool:
        """The output is x * gate with the gate in [0, 1] (so |output| <= |x| everywhere)."""
        return False

    def cases(self, spec: S) -> list[Case]:
        raise NotImplementedError

    def tiny(self, spec: S) -> Case:
        """A case small enough for ``torch.autograd.gradcheck``."""
        raise NotImplementedError

    def inputs(
        self, spec: S, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        return Inputs(
            [_randn(s, dtype, device, gen) * case.magnitude(i) for i, s in enumerate(case.shapes)],
            options=case.options,
        )

    def out_shape(self, spec: S, case: Case) -> tuple[int, ...]:
        return case.shapes[0]

    def reference(
        self, spec: S, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        """The independent reference; ``training`` selects the training-mode function (kinds whose
        modes differ deterministically, such as batch norm, use it)."""
        raise NotImplementedError

    def plain(self, spec: S, params: references.Params, inputs: Inputs) -> Tensor:
        """The plain PyTorch formulation (timm's, for the gating blocks): the yardstick of the
        low-precision rule, computed in the precision under test. Default: the reference."""
        return self.reference(spec, dict(params), inputs)

    def param_shapes(self, spec: S, case: Case) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, from the spec alone (the layout users rely on)."""
        raise NotImplementedError

    def error_inputs(self, spec: S) -> list[ErrorInput]:
        return []

    def anchors(self, spec: S) -> list[Anchor]:
        return []

    def dynamic_dims(self, spec: S, case: Case) -> list[dict[int, str]]:
        """Per positional input, the dims that may vary under ``torch.export`` and their names."""
        raise NotImplementedError

    def export_min(self, spec: S, dim: str) -> int:
        """The least size ``torch.export`` may assume for the dynamic dim named ``dim``. 2 (0 and 1
        are specialised); more where a smaller input makes an intermediate map 1 wide (symbolic
        shapes specialise that too, so a program traced with it wider cannot cover those sizes)."""
        return 2

    # Attention traits.
    def causal(self, spec: S) -> str | None:
        """The causal alignment (top_left, bottom_right), or None where attention is not causal."""
        return None

    def dropout(self, spec: S) -> float:
        return 0.0

    def permutation_invariant(self, spec: S) -> bool:
        """Permuting keys and values together leaves the output unchanged."""
        return False

    def window(self, spec: S) -> int | None:
        """The sliding window (keys a query sees, as the spec's ``window`` says), or None."""
        return None

    def relative_positions(self, spec: S) -> bool:
        """Scores depend on query and key positions through their difference alone (RoPE, ALiBi):
        shifting every position by the same amount leaves the output unchanged."""
        return False

    def with_positions(self, spec: S, inputs: Inputs, shift: int) -> Inputs:
        """``inputs`` with explicit query and key positions: the defaults plus ``shift``."""
        raise NotImplementedError

    def decodes(self, spec: S) -> bool:
        """The module decodes incrementally with a key/value cache (``attnforge.KVCache``)."""
        return False

    def decode(self, spec: S, module: nn.Module, inputs: Inputs, chunk: int) -> Tensor:
        """The output of feeding self-attention ``inputs`` ``chunk`` tokens at a time through one
        cache, concatenated along the sequence."""
        raise NotImplementedError

    def seq_dims(self, spec: S, inputs: Inputs) -> tuple[int, int]:
        """The query and key sequence dims of the positional inputs."""
        raise NotImplementedError

    def mask_keys(self, spec: S, inputs: Inputs, masked: Tensor, fill: str) -> Inputs:
        """``inputs`` with the keys where ``masked`` (Lk,) is True masked, by a bool or -inf float mask."""
        raise NotImplementedError

    def masked_row_output(self, spec: S, module: nn.Module, out: Tensor) -> Tensor:
        """What a query row with every key masked returns."""
        raise NotImplementedError

    def returns_weights(self, spec: S) -> bool:
        """The module returns (output, attention weights)."""
        return False

    def reference_weights(
        self, spec: S, params: references.Params, inputs: Inputs
    ) -> Tensor | None:
        """The attention weights the module returns, or None where it returns none."""
        return None


# --- image kinds (channel, spatial, cbam, eca, ese, ge, gc, coord, scoord, ela, strip, simam, sge,
# triplet, bam) -------------------------------------------------------------------------------------

# The first case has 32 channels, so a reduction of 16 leaves two hidden units (with one, a dead
# ReLU would hide the MLP from every check for half of all seeds).
_SIZES: dict[int, list[tuple[int, ...]]] = {
    1: [(2, 32, 7), (1, 16, 1), (3, 24, 9), (1, 8, 5)],
    2: [(2, 32, 7, 5), (1, 16, 1, 1), (3, 24, 4, 9), (1, 8, 2, 3)],
    3: [(2, 32, 3, 4, 5), (1, 16, 1, 1, 1), (1, 24, 2, 3, 2), (1, 8, 3, 1, 2)],
}
# Realistic activations: |x| with mean ~160 (post-ReLU maps are positive; |N(0, 1)| * 200) over 462
# positions and 448 channels, so a float16 sum over either axis exceeds 65504 (~72,000) while the
# mean does not. As small as that allows: it is the costliest case of every check.
_ACTIVATION: dict[int, tuple[int, ...]] = {
    1: (1, 448, 462),
    2: (1, 448, 21, 22),
    3: (1, 448, 6, 7, 11),
}
_ACTIVATION_MAGNITUDE = 200.0
_TINY: dict[int, tuple[int, ...]] = {1: (2, 4, 3), 2: (2, 4, 3, 2), 3: (1, 4, 2, 3, 2)}
_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _channel_shapes(
    opts: ChannelOptions, c: int, dims: int, prefix: str = ""
) -> dict[str, tuple[int, ...]]:
    rd, ones = references.reduced_channels(c, opts), (1,) * dims
    shapes = {f"{prefix}fc1.weight": (rd, c, *ones), f"{prefix}fc2.weight": (c, rd, *ones)}
    if opts.bias:
        shapes |= {f"{prefix}fc1.bias": (rd,), f"{prefix}fc2.bias": (c,)}
    if opts.norm == "batchnorm":
        shapes |= {f"{prefix}bn.weight": (rd,), f"{prefix}bn.bias": (rd,)}
    return shapes


def _spatial_shapes(
    opts: SpatialOptions, dims: int, prefix: str = ""
) -> dict[str, tuple[int, ...]]:
    in_channels = 1 if opts.pooling_merge == "average" else len(opts.pooling)
    conv = f"{prefix}conv.conv." if opts.norm == "batchnorm" else f"{prefix}conv."
    shapes = {f"{conv}weight": (1, in_channels, *(opts.kernel_size,) * dims)}
    if opts.bias:
        shapes[f"{conv}bias"] = (1,)
    if opts.norm == "batchnorm":
        shapes |= {f"{prefix}conv.bn.weight": (1,), f"{prefix}conv.bn.bias": (1,)}
    return shapes


def _shape_name(s: tuple[int, ...]) -> str:
    return f"b{s[0]}_c{s[1]}_{'x'.join(map(str, s[2:]))}"


class _Image(Kind[Img]):
    channels_last = True
    # Blocks whose statistics divide by (positions - 1), a variance or an unbiased std, need two
    # positions: their single-position cases get two (along the last dim), and a single-position
    # input must raise (error input single_position).
    min_positions: ClassVar[int] = 1

    def case_channels(self, spec: Img, channels: int) -> int:
        """The channel count the cases use for ``channels`` (a block with groups needs multiples)."""
        return channels

    def _fit(self, spec: Img, shape: tuple[int, ...]) -> tuple[int, ...]:
        b, c, *spatial = shape
        if math.prod(spatial) < self.min_positions:
            spatial[-1] = self.min_positions
        return (b, self.case_channels(spec, c), *spatial)

    def gated(self, spec: Img) -> bool:
        return True

    def cases(self, spec: Img) -> list[Case]:
        act = self._fit(spec, _ACTIVATION[spec.dims])
        sizes = [self._fit(spec, s) for s in _SIZES[spec.dims]]
        return [
            *(Case(_shape_name(s), (s[1],), (s,)) for s in sizes),
            Case("act_" + _shape_name(act), (act[1],), (act,), magnitudes=(_ACTIVATION_MAGNITUDE,)),
        ]

    def tiny(self, spec: Img) -> Case:
        s = self._fit(spec, _TINY[spec.dims])
        return Case("tiny", (s[1],), (s,))

    def inputs(
        self, spec: Img, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        shape = case.shapes[0]
        if case.realistic:  # post-activation maps are positive: |N(0, 1)| at the case's magnitude
            return Inputs(
                [_randn(shape, dtype, device, gen).abs() * case.magnitude(0)], options=case.options
            )
        # Feature maps whose channels have means of their own (as real ones do): pooled vectors are
        # then O(1) and differ between samples, instead of the near-zero mean of white noise, which
        # leaves a reduced MLP's ReLU dead and the batch invisible to the gate.
        offsets = torch.randn(
            (*shape[:2], *[1] * (len(shape) - 2)), generator=gen, dtype=torch.float64
        )
        x = torch.randn(shape, generator=gen, dtype=torch.float64) + offsets
        return Inputs([x.to(device=device, dtype=dtype)], options=case.options)

    def dynamic_dims(self, spec: Img, case: Case) -> list[dict[int, str]]:
        return [{0: "batch", **{2 + i: f"d{i}" for i in range(spec.dims)}}]

    def error_inputs(self, spec: Img) -> list[ErrorInput]:
        dims = spec.dims
        names = _SPATIAL_NAMES[dims]
        c = self.case_channels(spec, 8)
        rank = (2, c, *[5] * (dims + 1))
        width = (2, c - 2, *[5] * dims)
        ok = (2, c, *[5] * dims)
        empty = (2, c, *[5] * (dims - 1), 0)
        single = (2, c, *[1] * dims)
        expected = rf"\(B, {c}, {names}\)"
        errors = [
            ErrorInput(
                "wrong_rank",
                lambda f, d: f(c, device=d)(torch.randn(rank, device=d)),
                rf"^{{cls}}: expected input of shape {expected}, got \({', '.join(map(str, rank))}\)$",
            ),
            ErrorInput(
                "wrong_channels",
                lambda f, d: f(c, device=d)(torch.randn(width, device=d)),
                rf"^{{cls}}: expected input of shape {expected}, got \({', '.join(map(str, width))}\)$",
            ),
            ErrorInput(
                "zero_channels",
                lambda f, d: f(0, device=d),
                r"^{cls}: channels must be >= 1, got 0$",
            ),
            ErrorInput(
                "integer_input",
                lambda f, d: f(c, device=d)(torch.ones(ok, dtype=torch.int64, device=d)),
                r"^{cls}: expected a floating-point input, got torch.int64$",
            ),
            ErrorInput(
                "empty_spatial",
                lambda f, d: f(c, device=d)(torch.randn(empty, device=d)),
                rf"^{{cls}}: expected at least one position in {names}, got \({', '.join(map(str, empty))}\)$",
            ),
        ]
        if self.min_positions > 1:
            errors.append(
                ErrorInput(
                    "single_position",
                    lambda f, d: f(c, device=d)(torch.randn(single, device=d)),
                    rf"^{{cls}}: expected at least two positions in {names} \(.+\), got \({', '.join(map(str, single))}\)$",
                )
            )
        return errors


def _timm_anchor(name: str, kind: Kind[Any], spec: Any) -> Anchor:
    return anchors.formulation_anchor(name, lambda params, x: kind.plain(spec, params, x))


class Channel(_Image[ChannelSpec]):
    name = "channel"

    def param_shapes(self, spec: ChannelSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return _channel_shapes(spec, case.ctor[0], spec.dims)

    def reference(
        self,
        spec: ChannelSpec,
        params: references.State,
        inputs: Inputs,
        *,
        training: bool = False,
    ) -> Tensor:
        return references.channel_attention(inputs.args[0], params, spec, training=training)

    def plain(self, spec: ChannelSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_channel(inputs.args[0], params, spec)

    def anchors(self, spec: ChannelSpec) -> list[Anchor]:
        return [_timm_anchor("timm SEModule / ChannelAttn formulation", self, spec)]


class Spatial(_Image[SpatialSpec]):
    name = "spatial"

    def param_shapes(self, spec: SpatialSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return _spatial_shapes(spec, spec.dims)

    def reference(
        self,
        spec: SpatialSpec,
        params: references.State,
        inputs: Inputs,
        *,
        training: bool = False,
    ) -> Tensor:
        return references.spatial_attention(inputs.args[0], params, spec, training=training)

    def plain(self, spec: SpatialSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_spatial(inputs.args[0], params, spec)

    def anchors(self, spec: SpatialSpec) -> list[Anchor]:
        return [_timm_anchor("timm SpatialAttn formulation", self, spec)]


class Cbam(_Image[CbamSpec]):
    name = "cbam"

    def param_shapes(self, spec: CbamSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return _channel_shapes(spec.channel, case.ctor[0], spec.dims, "channel.") | _spatial_shapes(
            spec.spatial, spec.dims, "spatial."
        )

    def reference(
        self, spec: CbamSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.cbam(inputs.args[0], params, spec, training=training)

    def plain(self, spec: CbamSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_cbam(inputs.args[0], params, spec)

    def anchors(self, spec: CbamSpec) -> list[Anchor]:
        return [_timm_anchor("timm CbamModule formulation", self, spec)]


class Eca(_Image[EcaSpec]):
    name = "eca"

    def cases(self, spec: EcaSpec) -> list[Case]:
        # C = 512 makes the adaptive kernel 5 (log2 512 = 9); the smaller channel counts give 3.
        sizes = [1, 2, 1][: spec.dims]
        big = Case(f"b2_c512_{'x'.join(map(str, sizes))}", (512,), ((2, 512, *sizes),))
        return [*super().cases(spec), big]

    def reference(
        self, spec: EcaSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.eca(inputs.args[0], params, spec)

    def plain(self, spec: EcaSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_eca(inputs.args[0], params, spec)

    def anchors(self, spec: EcaSpec) -> list[Anchor]:
        return [_timm_anchor("timm EcaModule formulation", self, spec)]

    def param_shapes(self, spec: EcaSpec, case: Case) -> dict[str, tuple[int, ...]]:
        k = references.eca_kernel_size(case.ctor[0], spec)
        if spec.mlp:
            rd = references.eca_hidden(case.ctor[0], spec)
            return {
                "conv.weight": (rd, 1, 1),
                "conv.bias": (rd,),
                "conv2.weight": (1, rd, k),
                "conv2.bias": (1,),
            }
        return {"conv.weight": (1, 1, k)} | ({"conv.bias": (1,)} if spec.bias else {})


class Ese(_Image[EseSpec]):
    name = "ese"

    def param_shapes(self, spec: EseSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        return {"fc.weight": (c, c, *(1,) * spec.dims)} | ({"fc.bias": (c,)} if spec.bias else {})

    def reference(
        self, spec: EseSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.ese(inputs.args[0], params, spec)

    def plain(self, spec: EseSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_ese(inputs.args[0], params, spec)

    def anchors(self, spec: EseSpec) -> list[Anchor]:
        return [_timm_anchor("timm EffectiveSEModule formulation", self, spec)]


class Coord(_Image[CoordSpec]):
    # The image cases are 4D with H != W ((2, 32, 7, 5), (3, 24, 4, 9), the 21 x 22 activation
    # case, the 3 x 2 tiny one), so a row gate applied along the columns cannot pass.
    name = "coord"

    def gated(self, spec: CoordSpec) -> bool:
        return not spec.skip  # with skip, x * gate + x: up to 2 |x|

    def param_shapes(self, spec: CoordSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        rd = references.coord_hidden(c, spec)
        shapes: dict[str, tuple[int, ...]] = {
            "conv1.weight": (rd, c, 1, 1),
            "conv_h.weight": (c, rd, 1, 1),
            "conv_w.weight": (c, rd, 1, 1),
        }
        if spec.bias:
            shapes |= {"conv1.bias": (rd,), "conv_h.bias": (c,), "conv_w.bias": (c,)}
        if spec.norm == "batchnorm":
            shapes |= {"bn1.weight": (rd,), "bn1.bias": (rd,)}
        return shapes

    def reference(
        self, spec: CoordSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.coordinate_attention(inputs.args[0], params, spec, training=training)

    def plain(self, spec: CoordSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_coord(inputs.args[0], params, spec)

    def anchors(self, spec: CoordSpec) -> list[Anchor]:
        return [_timm_anchor("timm CoordAttn formulation", self, spec)]


class Scoord(_Image[ScoordSpec]):
    # The image cases have H != W (see Coord): fc_h and fc_w swapped cannot pass.
    name = "scoord"

    def gated(self, spec: ScoordSpec) -> bool:
        return not spec.skip  # with skip, x * gate + x: up to 2 |x|

    def param_shapes(self, spec: ScoordSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        rd = references.coord_hidden(c, spec)
        shapes: dict[str, tuple[int, ...]] = {
            "fc1.weight": (rd, c),
            "fc_h.weight": (c, rd),
            "fc_w.weight": (c, rd),
        }
        if spec.bias:
            shapes |= {"fc1.bias": (rd,), "fc_h.bias": (c,), "fc_w.bias": (c,)}
        return shapes

    def reference(
        self, spec: ScoordSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.simple_coordinate_attention(inputs.args[0], params, spec)

    def plain(self, spec: ScoordSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_scoord(inputs.args[0], params, spec)

    def anchors(self, spec: ScoordSpec) -> list[Anchor]:
        return [_timm_anchor("timm SimpleCoordAttn formulation", self, spec)]


def _statistics_in_float32(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)``; for float16 and bfloat16 ``x``, ``fn`` run in float32 and its output rounded back.

    The zoo's code run in float16 overflows on realistic activations (SimAM's squared deviations,
    SGE's products of x with its mean: above 65504) and would leave the low-precision rule no
    yardstick. In float32 it is the yardstick the generated modules must keep up with: they, too,
    compute their statistics in float32 and round only the gate and the product.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        return fn(x.float()).to(x.dtype)
    return fn(x)


class Simam(_Image[SimamSpec]):
    name = "simam"
    min_positions = 2  # the variance divides by H * W - 1

    def param_shapes(self, spec: SimamSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return {}

    def reference(
        self, spec: SimamSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.simam(inputs.args[0], spec)

    def plain(self, spec: SimamSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return _statistics_in_float32(lambda x: anchors.zoo_simam(x, params, spec), inputs.args[0])

    def anchors(self, spec: SimamSpec) -> list[Anchor]:
        return [_timm_anchor("SimAM's official code (simam_module) formulation", self, spec)]


class Sge(_Image[SgeSpec]):
    name = "sge"
    min_positions = 2  # the unbiased std divides by H * W - 1

    def case_channels(self, spec: SgeSpec, channels: int) -> int:
        # A multiple of the groups, with at least two channels a group: the similarity then sums
        # over channels and the grouping's order matters.
        g = spec.groups
        return g * max(2, -(-channels // g))

    def param_shapes(self, spec: SgeSpec, case: Case) -> dict[str, tuple[int, ...]]:
        shape = (1, spec.groups, *(1,) * spec.dims)
        return {"weight": shape, "bias": shape}

    def reference(
        self, spec: SgeSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.sge(inputs.args[0], params, spec)

    def plain(self, spec: SgeSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return _statistics_in_float32(lambda x: anchors.zoo_sge(x, params, spec), inputs.args[0])

    def anchors(self, spec: SgeSpec) -> list[Anchor]:
        return [_timm_anchor("SGE's official code (SpatialGroupEnhance) formulation", self, spec)]

    def error_inputs(self, spec: SgeSpec) -> list[ErrorInput]:
        g = spec.groups
        errors = super().error_inputs(spec)
        if g > 1:
            errors.append(
                ErrorInput(
                    "indivisible_channels",
                    lambda f, d: f(g + 1, device=d),
                    rf"^{{cls}}: channels must be divisible by {g} groups, got {g + 1}$",
                )
            )
        return errors


def _strip_conv_shapes(c: int, k: int, bias: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "conv_h.weight": (c, 1, k, 1),
        "conv_w.weight": (c, 1, 1, k),
    }
    if bias:
        shapes |= {"conv_h.bias": (c,), "conv_w.bias": (c,)}
    return shapes


class Ela(_Image[ElaSpec]):
    name = "ela"

    def gated(self, spec: ElaSpec) -> bool:
        return not spec.skip  # with skip, x * a_h * a_w + x: up to 2 |x|

    @staticmethod
    def _groups(spec: ElaSpec) -> int:
        return spec.norm_groups if spec.norm == "groupnorm" else 1

    def case_channels(self, spec: ElaSpec, channels: int) -> int:
        # A multiple of the norm's groups, with at least two channels a group: F.group_norm refuses
        # a group holding a single value (in eval too), which one channel a group would give on a
        # batch of one with a strip of length one.
        g = self._groups(spec)
        return max(-(-channels // g), 2) * g

    def error_inputs(self, spec: ElaSpec) -> list[ErrorInput]:
        errors = super().error_inputs(spec)
        g = self._groups(spec)
        if g > 1:
            errors.append(
                ErrorInput(
                    "indivisible_channels",
                    lambda f, d: f(g + 1, device=d),
                    rf"^{{cls}}: channels must be a multiple of the norm's {g} groups, got {g + 1}$",
                )
            )
        return errors

    def param_shapes(self, spec: ElaSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        shapes = _strip_conv_shapes(c, spec.kernel_size, spec.bias)
        if spec.norm != "none":
            shapes |= {f"norm_{a}.{p}": (c,) for a in "hw" for p in ("weight", "bias")}
        return shapes

    def reference(
        self, spec: ElaSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.ela(inputs.args[0], params, spec, training=training)

    def plain(self, spec: ElaSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_ela(inputs.args[0], params, spec)

    def anchors(self, spec: ElaSpec) -> list[Anchor]:
        return [_timm_anchor("timm EfficientLocalAttn formulation", self, spec)]


class Strip(_Image[StripSpec]):
    name = "strip"

    def gated(self, spec: StripSpec) -> bool:
        return not spec.skip  # with skip, x * a + x: up to 2 |x|

    def param_shapes(self, spec: StripSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return _strip_conv_shapes(case.ctor[0], spec.kernel_size, spec.bias) if spec.conv else {}

    def reference(
        self, spec: StripSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.strip(inputs.args[0], params, spec)

    def plain(self, spec: StripSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_strip(inputs.args[0], params, spec)

    def anchors(self, spec: StripSpec) -> list[Anchor]:
        return [_timm_anchor("timm StripAttn formulation", self, spec)]


class Ge(_Image[GeSpec]):
    name = "ge"

    @staticmethod
    def _even_dims(spec: GeSpec) -> list[int]:
        """The spatial dims (0-based) where the gather kernel is even: inputs need 2 positions there."""
        return [i for i, k in enumerate(spec.feat_size or ()) if k % 2 == 0]

    def cases(self, spec: GeSpec) -> list[Case]:
        # An even gather kernel padded (k - 1) // 2 a side needs 2 positions along its dim.
        even = self._even_dims(spec)
        cases = [c for c in super().cases(spec) if all(c.shapes[0][2 + i] >= 2 for i in even)]
        low = [self.export_min(spec, f"d{i}") for i in range(spec.dims)]
        wide = [c for c in cases if not c.realistic]  # the export check skips realistic cases
        if not any(all(n >= m for n, m in zip(c.shapes[0][2:], low, strict=True)) for c in wide):
            # A map wide enough that the gathered map is at least 2 wide (the export check's).
            shape = (2, 8, *(m + i for i, m in enumerate(low)))
            cases.append(Case(_shape_name(shape), (8,), (shape,)))
        return cases

    def export_min(self, spec: GeSpec, dim: str) -> int:
        # A gather with stride e leaves 1 + (n - 1) // e positions of n: 2 from n = e + 1 on. An
        # even kernel with timm's padding leaves n - 1.
        if dim.startswith("d") and spec.extent:
            return spec.extent + 1
        if dim.startswith("d") and int(dim[1:]) in self._even_dims(spec):
            return 3
        return 2

    def param_shapes(self, spec: GeSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c, ones = case.ctor[0], (1,) * spec.dims
        shapes: dict[str, tuple[int, ...]] = {}
        if spec.extra_params:
            kernels = (
                [tuple(spec.feat_size or ())]
                if spec.extent == 0
                else [(3,) * spec.dims] * (spec.extent.bit_length() - 1)
            )
            for i, kernel in enumerate(kernels, 1):
                shapes[f"gather.conv{i}.weight"] = (c, 1, *kernel)
                if spec.norm == "batchnorm":
                    shapes |= {f"gather.norm{i}.weight": (c,), f"gather.norm{i}.bias": (c,)}
        if spec.mlp:
            rd = references.hidden_width(c, spec.reduction, spec.divisor, 1, spec.round_limit)
            shapes |= {
                "mlp.fc1.weight": (rd, c, *ones),
                "mlp.fc1.bias": (rd,),
                "mlp.fc2.weight": (c, rd, *ones),
                "mlp.fc2.bias": (c,),
            }
        return shapes

    def reference(
        self, spec: GeSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.gather_excite(inputs.args[0], params, spec, training=training)

    def plain(self, spec: GeSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_ge(inputs.args[0], params, spec)

    def anchors(self, spec: GeSpec) -> list[Anchor]:
        return [_timm_anchor("timm GatherExcite formulation", self, spec)]

    def error_inputs(self, spec: GeSpec) -> list[ErrorInput]:
        errors = super().error_inputs(spec)
        even = self._even_dims(spec)
        if even:
            small = tuple(1 if i in even else 5 for i in range(spec.dims))
            shape = (2, 8, *small)
            names = ", ".join(_SPATIAL_NAMES[spec.dims].split(", ")[i] for i in even)
            errors.append(
                ErrorInput(
                    "too_small_for_even_kernel",
                    lambda f, d: f(8, device=d)(torch.randn(shape, device=d)),
                    rf"^{{cls}}: expected at least 2 positions in {names} \(.*\), got "
                    rf"\({', '.join(map(str, shape))}\)$",
                )
            )
        return errors


class Gc(_Image[GcSpec]):
    name = "gc"

    def gated(self, spec: GcSpec) -> bool:
        # x + mlp_add(context) is no gate: the output may exceed x anywhere.
        return not spec.fuse_add

    def param_shapes(self, spec: GcSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c, ones = case.ctor[0], (1,) * spec.dims
        rd = references.hidden_width(c, spec.reduction, spec.divisor, 1, spec.round_limit)
        shapes: dict[str, tuple[int, ...]] = {}
        if spec.context == "attention":
            shapes |= {"conv_attn.weight": (1, c, *ones), "conv_attn.bias": (1,)}
        for mlp, on in (("mlp_add", spec.fuse_add), ("mlp_scale", spec.fuse_scale)):
            if on:
                shapes |= {
                    f"{mlp}.fc1.weight": (rd, c, *ones),
                    f"{mlp}.fc1.bias": (rd,),
                    f"{mlp}.norm.weight": (rd,),
                    f"{mlp}.norm.bias": (rd,),
                    f"{mlp}.fc2.weight": (c, rd, *ones),
                    f"{mlp}.fc2.bias": (c,),
                }
        return shapes

    def reference(
        self, spec: GcSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.global_context(inputs.args[0], params, spec)

    def plain(self, spec: GcSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_gc(inputs.args[0], params, spec)

    def anchors(self, spec: GcSpec) -> list[Anchor]:
        return [_timm_anchor("timm GlobalContext formulation", self, spec)]


class Triplet(_Image[TripletSpec]):
    name = "triplet"

    def param_shapes(self, spec: TripletSpec, case: Case) -> dict[str, tuple[int, ...]]:
        k = spec.kernel_size
        shapes: dict[str, tuple[int, ...]] = {}
        for branch in references.triplet_branches(spec):
            shapes |= {
                f"{branch}.conv.conv.weight": (1, 2, k, k),
                f"{branch}.conv.bn.weight": (1,),
                f"{branch}.conv.bn.bias": (1,),
            }
        return shapes

    def reference(
        self, spec: TripletSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.triplet(inputs.args[0], params, spec, training=training)

    def plain(self, spec: TripletSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.zoo_triplet(inputs.args[0], params, spec)

    def anchors(self, spec: TripletSpec) -> list[Anchor]:
        return [_timm_anchor("official TripletAttention formulation", self, spec)]


class Bam(_Image[BamSpec]):
    name = "bam"

    def gated(self, spec: BamSpec) -> bool:
        return False  # x * (1 + sigmoid(s)): x plus x gated, up to 2 |x|

    def cases(self, spec: BamSpec) -> list[Case]:
        # Besides the image cases (some smaller than the dilation), one where every tap of the
        # dilated convs reaches into the map from every side (H, W > 2 * dilation); 64 channels
        # leave 4 reduced ones at r = 16.
        d = spec.dilation
        shape = (2, 64, 2 * d + 3, 2 * d + 2)
        return [*super().cases(spec), Case(_shape_name(shape), (64,), (shape,))]

    def param_shapes(self, spec: BamSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        rd = references.hidden_width(c, spec.reduction, None, spec.min_channels)
        gc, gs = "channel_att.gate_c.", "spatial_att.gate_s."
        shapes = {
            f"{gc}gate_c_fc_0.weight": (rd, c),
            f"{gc}gate_c_fc_0.bias": (rd,),
            f"{gc}gate_c_bn_1.weight": (rd,),
            f"{gc}gate_c_bn_1.bias": (rd,),
            f"{gc}gate_c_fc_final.weight": (c, rd),
            f"{gc}gate_c_fc_final.bias": (c,),
            f"{gs}gate_s_conv_reduce0.weight": (rd, c, 1, 1),
            f"{gs}gate_s_conv_reduce0.bias": (rd,),
            f"{gs}gate_s_bn_reduce0.weight": (rd,),
            f"{gs}gate_s_bn_reduce0.bias": (rd,),
        }
        for i in range(spec.dilated_convs):
            shapes |= {
                f"{gs}gate_s_conv_di_{i}.weight": (rd, rd, 3, 3),
                f"{gs}gate_s_conv_di_{i}.bias": (rd,),
                f"{gs}gate_s_bn_di_{i}.weight": (rd,),
                f"{gs}gate_s_bn_di_{i}.bias": (rd,),
            }
        return shapes | {
            f"{gs}gate_s_conv_final.weight": (1, rd, 1, 1),
            f"{gs}gate_s_conv_final.bias": (1,),
        }

    def reference(
        self, spec: BamSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.bam(inputs.args[0], params, spec, training=training)

    def plain(self, spec: BamSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.zoo_bam(inputs.args[0], params, spec)

    def anchors(self, spec: BamSpec) -> list[Anchor]:
        return [_timm_anchor("the authors' BAM formulation", self, spec)]


class Nl(_Image[NlSpec]):
    name = "nl"

    def gated(self, spec: NlSpec) -> bool:
        return False  # x + norm(z(attention)): a residual

    def param_shapes(self, spec: NlSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c, ones = case.ctor[0], (1,) * spec.dims
        rd = references.hidden_width(c, spec.reduction, spec.divisor, 1, spec.round_limit)
        shapes: dict[str, tuple[int, ...]] = {}
        for name in ("t", "p", "g"):
            shapes |= {f"{name}.weight": (rd, c, *ones), f"{name}.bias": (rd,)}
        return shapes | {
            "z.weight": (c, rd, *ones),
            "z.bias": (c,),
            "norm.weight": (c,),
            "norm.bias": (c,),
        }

    def reference(
        self, spec: NlSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.non_local(inputs.args[0], params, spec, training=training)

    def plain(self, spec: NlSpec, params: references.Params, inputs: Inputs) -> Tensor:
        # timm's bmm(t, p) in float16 overflows on realistic activations (scores of ~1e5), which
        # would leave the rule no yardstick; SDPA's kernels accumulate the scores in float32, and
        # so does the yardstick (the convs and the norm stay in float16, as timm runs them).
        x = inputs.args[0]
        wide = torch.float32 if x.dtype == torch.float16 else None
        return anchors.timm_nl(x, params, spec, scores_dtype=wide)

    def anchors(self, spec: NlSpec) -> list[Anchor]:
        return [_timm_anchor("timm NonLocalAttn formulation", self, spec)]


def _bat_width(spec: BatSpec, channels: int) -> int:
    return references.hidden_width(channels, spec.reduction, spec.divisor, 1, spec.round_limit)


class Bat(_Image[BatSpec]):
    name = "bat"

    def gated(self, spec: BatSpec) -> bool:
        return False  # x + conv2(...): a residual

    def dropout(self, spec: BatSpec) -> float:
        return spec.drop_rate

    def case_channels(self, spec: BatSpec, channels: int) -> int:
        # The least count from ``channels`` up whose reduced width the groups divide.
        c = channels
        while _bat_width(spec, c) % spec.groups:
            c += 1
        return c

    def cases(self, spec: BatSpec) -> list[Case]:
        # H and W multiples of the block size: bands of one row (t = 1) and of several, H != W.
        n = spec.block_size
        shapes = [(2, 32, n, 2 * n), (1, 16, n, n), (3, 24, 3 * n, 2 * n)]
        cases = []
        for b, c, h, w in shapes:
            shape = (b, self.case_channels(spec, c), h, w)
            cases.append(Case(_shape_name(shape), (shape[1],), (shape,)))
        act = (1, self.case_channels(spec, 448), 3 * n, 3 * n)
        magnitude = (_ACTIVATION_MAGNITUDE,)
        return [*cases, Case("act_" + _shape_name(act), (act[1],), (act,), magnitudes=magnitude)]

    def tiny(self, spec: BatSpec) -> Case:
        n = spec.block_size
        c = self.case_channels(spec, 4)
        return Case("tiny", (c,), ((2, c, n, 2 * n),))

    def dynamic_dims(self, spec: BatSpec, case: Case) -> list[dict[int, str]]:
        # The batch only: H and W must stay multiples of the block size, which a torch.export
        # Dim cannot say (the input check guards H % n, so they specialise).
        return [{0: "batch"}]

    def error_inputs(self, spec: BatSpec) -> list[ErrorInput]:
        errors = super().error_inputs(spec)
        n, c = spec.block_size, self.case_channels(spec, 8)
        shape = (2, c, n + 1, n)
        if n > 1:  # every size is a multiple of 1
            errors.append(
                ErrorInput(
                    "not_block_multiple",
                    lambda f, d: f(c, device=d)(torch.randn(shape, device=d)),
                    rf"^{{cls}}: expected H and W multiples of the block size {n}, got "
                    rf"\({', '.join(map(str, shape))}\)$",
                )
            )
        bad = next((c for c in range(1, 4097) if _bat_width(spec, c) % spec.groups), None)
        if bad is not None:
            rd = _bat_width(spec, bad)
            errors.append(
                ErrorInput(
                    "indivisible_width",
                    lambda f, d: f(bad, device=d),
                    rf"^{{cls}}: the reduced width {rd} \(from {bad} channels\) must be "
                    rf"divisible by the {spec.groups} groups$",
                )
            )
        return errors

    def param_shapes(self, spec: BatSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        rd, n, g = _bat_width(spec, c), spec.block_size, spec.groups

        def cna(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
            return {
                f"{prefix}conv.weight": (cout, cin, 1, 1),
                f"{prefix}bn.weight": (cout,),
                f"{prefix}bn.bias": (cout,),
            }

        return {
            **cna("conv1.", c, rd),
            **cna("ba.conv1.", rd, g),
            "ba.conv_p.weight": (n * n * g, g, n, 1),
            "ba.conv_p.bias": (n * n * g,),
            "ba.conv_q.weight": (n * n * g, g, 1, n),
            "ba.conv_q.bias": (n * n * g,),
            **cna("ba.conv2.", rd, rd),
            **cna("conv2.", rd, c),
        }

    def reference(
        self, spec: BatSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.bat(inputs.args[0], params, spec, training=training)

    def plain(self, spec: BatSpec, params: references.Params, inputs: Inputs) -> Tensor:
        # The yardstick normalises the sigmoids as the module does: timm's sigmoid / sum is 0 / 0
        # on realistic activations (logits far below zero), in float64 too.
        return anchors.timm_bat(inputs.args[0], params, spec, stable=True)

    def anchors(self, spec: BatSpec) -> list[Anchor]:
        # timm's formulation as timm writes it, where its normalisation has no 0 / 0: unit-scale
        # inputs (tests/timm_interop compares real timm on such inputs too).
        exact = anchors.formulation_anchor(
            "timm BatNonLocalAttn formulation",
            lambda params, x: anchors.timm_bat(x.args[0], params, spec),
        )
        return [dataclasses.replace(exact, applies=lambda case: not case.realistic)]


# --- timm's self-attention layers (lambda, bottleneck, halo) -----------------------------------------

SelfAttnSpec = TypeVar("SelfAttnSpec", bound=LambdaSpec | BottleneckSpec | HaloSpec)
# Post-activation maps at a magnitude where the keys' softmax and the attention are sharp but not
# one-hot: tens (at the image kinds' hundreds, logits in the thousands leave a softmax whose
# rounding flips the winner, which no precision judges fairly).
_SELF_ATTN_MAGNITUDE = 10.0


def _opts(options: dict[str, Option]) -> tuple[tuple[str, Option], ...]:
    return tuple(options.items())


class _SelfAttn(_Image[SelfAttnSpec]):
    """timm's self-attention layers: ``Cls(channels, *, out_channels, stride, feat_size)``, output
    (B, out_channels, H // stride, W // stride); what sizes an input may have is the kind's."""

    autocast_keeps_dtype = False  # the output is a matmul's (the autocast dtype)

    def gated(self, spec: SelfAttnSpec) -> bool:
        return False

    def fixed_size(self, spec: SelfAttnSpec) -> bool:
        """The input's H, W must equal feat_size (a position embedding over the whole map)."""
        return False

    def sizes(self, spec: SelfAttnSpec) -> list[tuple[int, int]]:
        """The cases' (H, W), the first H != W: a layer that swaps them cannot pass."""
        return [(7, 5), (1, 1), (6, 9), (4, 4)]

    def _options(
        self, spec: SelfAttnSpec, hw: tuple[int, int], **options: Option
    ) -> dict[str, Option]:
        return {**options, "feat_size": hw} if self.fixed_size(spec) else options

    def _case(
        self,
        spec: SelfAttnSpec,
        b: int,
        c: int,
        hw: tuple[int, int],
        magnitude: float = 1.0,
        **options: Option,
    ) -> Case:
        o = options.get("out_channels")
        name = f"b{b}_c{c}_{hw[0]}x{hw[1]}" + (f"_out{o}" if o else "")
        name += "_s2" if options.get("stride") == 2 else ""
        return Case(
            ("act_" if magnitude != 1.0 else "") + name,
            (c,),
            ((b, c, *hw),),
            magnitudes=(magnitude,) if magnitude != 1.0 else (),
            kwargs=_opts(self._options(spec, hw, **options)),
        )

    def cases(self, spec: SelfAttnSpec) -> list[Case]:
        h = spec.num_heads
        c = 4 * h
        sizes = self.sizes(spec)
        cases = [self._case(spec, 2, c, sizes[0])]
        cases += [self._case(spec, 1, c, hw) for hw in sizes[1:2]]
        # A wider output, and stride 2 (an odd side: the last row or column is dropped).
        cases.append(self._case(spec, 2, c, sizes[2], out_channels=6 * h, stride=2))
        cases += [self._case(spec, 3, 2 * h, hw) for hw in sizes[3:]]
        cases.append(self._case(spec, 1, 8 * h, sizes[0], _SELF_ATTN_MAGNITUDE))
        return cases

    def tiny(self, spec: SelfAttnSpec) -> Case:
        # A batch of two: torch 2.13's CPU batch norm backward in eval is wrong for a batch of one
        # when the incoming gradient is laid out channels-last (it is, from the transposed
        # queries), in timm's layers as in these; gradcheck would judge torch, not the layer.
        hw = self.sizes(spec)[-1]
        return Case(
            "tiny",
            (2 * spec.num_heads,),
            ((2, 2 * spec.num_heads, *hw),),
            kwargs=_opts(self._options(spec, hw)),
        )

    def inputs(
        self, spec: SelfAttnSpec, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        inputs = super().inputs(spec, case, dtype, device, gen)
        return Inputs(inputs.args, inputs.kwargs, case.options)

    def out_shape(self, spec: SelfAttnSpec, case: Case) -> tuple[int, ...]:
        b, c, h, w = case.shapes[0]
        out = int_option(case.options, "out_channels", c)
        s = int_option(case.options, "stride", 1)
        assert isinstance(out, int) and isinstance(s, int)
        return (b, out, h // s, w // s)

    def dynamic_dims(self, spec: SelfAttnSpec, case: Case) -> list[dict[int, str]]:
        # A map fixed by feat_size exports with H and W static; the batch is dynamic always.
        return [{0: "batch"} if self.fixed_size(spec) else {0: "batch", 2: "d0", 3: "d1"}]

    def error_inputs(self, spec: SelfAttnSpec) -> list[ErrorInput]:
        h = spec.num_heads
        c = 2 * h
        hw = self.sizes(spec)[-1]
        fixed = self.fixed_size(spec)
        opts = self._options(spec, hw)

        def shape_text(shape: tuple[int, ...]) -> str:
            return ", ".join(map(str, shape))

        def call(
            shape: tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: Option
        ) -> Callable[[Callable[..., nn.Module], str], object]:
            return lambda f, d: f(c, device=d, **{**opts, **kw})(
                torch.ones(shape, dtype=dtype, device=d)
            )

        def build(channels: int, **kw: Option) -> Callable[[Callable[..., nn.Module], str], object]:
            return lambda f, d: f(channels, device=d, **{**opts, **kw})

        rank, width = (2, c, *hw, 1), (2, c - 1, *hw)
        expected = rf"\(B, {c}, H, W\)"
        errors = [
            ErrorInput(
                "wrong_rank",
                call(rank),
                rf"^{{cls}}: expected input of shape {expected}, got \({shape_text(rank)}\)$",
            ),
            ErrorInput(
                "wrong_channels",
                call(width),
                rf"^{{cls}}: expected input of shape {expected}, got \({shape_text(width)}\)$",
            ),
            ErrorInput("zero_channels", build(0), r"^{cls}: channels must be >= 1, got 0$"),
            ErrorInput(
                "integer_input",
                call((2, c, *hw), torch.int64),
                r"^{cls}: expected a floating-point input, got torch.int64$",
            ),
            ErrorInput(
                "indivisible_out_channels",
                build(c, out_channels=c + 1 if h > 1 else 0),
                rf"^{{cls}}: out_channels must be a positive multiple of {h} heads, got {c + 1 if h > 1 else 0}$",
            ),
            ErrorInput("stride_3", build(c, stride=3), r"^{cls}: stride must be 1 or 2, got 3$"),
        ]
        errors += self.size_errors(spec, c, hw, call, shape_text)
        if fixed:
            errors.append(
                ErrorInput(
                    "no_feat_size",
                    lambda f, d: f(c, device=d),
                    r"^{cls}: feat_size \(H, W\) is required: ",
                )
            )
        return errors

    def size_errors(
        self,
        spec: SelfAttnSpec,
        c: int,
        hw: tuple[int, int],
        call: Callable[..., Callable[[Callable[..., nn.Module], str], object]],
        shape_text: Callable[[tuple[int, ...]], str],
    ) -> list[ErrorInput]:
        """The inputs of a size the layer cannot take: empty maps, and the kind's own rules."""
        raise NotImplementedError


class Lambda(_SelfAttn[LambdaSpec]):
    name = "lambda"

    def fixed_size(self, spec: LambdaSpec) -> bool:
        return spec.r is None

    def param_shapes(self, spec: LambdaSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        _, dk, dv = references.self_attn_widths(spec, c, case.options)
        heads = spec.num_heads
        shapes: dict[str, tuple[int, ...]] = {"qkv.weight": (heads * dk + dk + dv, c, 1, 1)}
        if spec.qkv_bias:
            shapes["qkv.bias"] = (heads * dk + dk + dv,)
        shapes |= {
            "norm_q.weight": (heads * dk,),
            "norm_q.bias": (heads * dk,),
            "norm_v.weight": (dv,),
            "norm_v.bias": (dv,),
        }
        if spec.r is None:
            size = case.options["feat_size"]
            assert isinstance(size, tuple)
            return shapes | {"pos_emb": (2 * size[0] - 1, 2 * size[1] - 1, dk)}
        return shapes | {
            "conv_lambda.weight": (dk, 1, spec.r, spec.r, 1),
            "conv_lambda.bias": (dk,),
        }

    def reference(
        self, spec: LambdaSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.lambda_layer(inputs.args[0], params, spec, inputs.options, training)

    def size_errors(
        self,
        spec: LambdaSpec,
        c: int,
        hw: tuple[int, int],
        call: Callable[..., Callable[[Callable[..., nn.Module], str], object]],
        shape_text: Callable[[tuple[int, ...]], str],
    ) -> list[ErrorInput]:
        if spec.r is None:
            return _fixed_size_errors(c, hw, call, shape_text)
        empty, one_row = (2, c, 5, 0), (2, c, 1, 5)
        return [
            ErrorInput(
                "empty_spatial",
                call(empty),
                rf"^{{cls}}: expected at least one position in H, W, got \({shape_text(empty)}\)$",
            ),
            ErrorInput(
                "stride_2_one_row",
                call(one_row, stride=2),
                rf"^{{cls}}: expected at least 2 positions in H and W \(stride 2 .*\), got \({shape_text(one_row)}\)$",
            ),
        ]


def _fixed_size_errors(
    c: int,
    hw: tuple[int, int],
    call: Callable[..., Callable[[Callable[..., nn.Module], str], object]],
    shape_text: Callable[[tuple[int, ...]], str],
) -> list[ErrorInput]:
    """A map of another size than feat_size; stride 2 on a map one row high."""
    other = (2, c, hw[0] + 1, hw[1])
    one_row = (2, c, 1, 5)
    return [
        ErrorInput(
            "not_feat_size",
            call(other),
            rf"^{{cls}}: expected input of shape \(B, {c}, {hw[0]}, {hw[1]}\) \(feat_size: .*\), got \({shape_text(other)}\)$",
        ),
        ErrorInput(
            "stride_2_one_row",
            call(one_row, stride=2, feat_size=(1, 5)),
            rf"^{{cls}}: expected at least 2 positions in H and W \(stride 2 .*\), got \({shape_text(one_row)}\)$",
        ),
    ]


class Bottleneck(_SelfAttn[BottleneckSpec]):
    name = "bottleneck"

    def fixed_size(self, spec: BottleneckSpec) -> bool:
        return True

    def param_shapes(self, spec: BottleneckSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        out, dk, _ = references.self_attn_widths(spec, c, case.options)
        width = 2 * spec.num_heads * dk + out
        shapes: dict[str, tuple[int, ...]] = {"qkv.weight": (width, c, 1, 1)}
        if spec.qkv_bias:
            shapes["qkv.bias"] = (width,)
        size = case.options["feat_size"]
        assert isinstance(size, tuple)
        return shapes | {
            "pos_embed.height_rel": (2 * size[0] - 1, dk),
            "pos_embed.width_rel": (2 * size[1] - 1, dk),
        }

    def reference(
        self,
        spec: BottleneckSpec,
        params: references.State,
        inputs: Inputs,
        *,
        training: bool = False,
    ) -> Tensor:
        return references.bottleneck_attn(inputs.args[0], params, spec, inputs.options)

    def size_errors(
        self,
        spec: BottleneckSpec,
        c: int,
        hw: tuple[int, int],
        call: Callable[..., Callable[[Callable[..., nn.Module], str], object]],
        shape_text: Callable[[tuple[int, ...]], str],
    ) -> list[ErrorInput]:
        return _fixed_size_errors(c, hw, call, shape_text)


class Halo(_SelfAttn[HaloSpec]):
    name = "halo"

    def sizes(self, spec: HaloSpec) -> list[tuple[int, int]]:
        # Multiples of the block size, H != W first: two blocks by one, one, two by three (with
        # stride 2: the queries strided, or the output pooled), one.
        bs = spec.block_size
        return [(2 * bs, bs), (bs, bs), (2 * bs, 3 * bs), (bs, bs)]

    def dynamic_dims(self, spec: HaloSpec, case: Case) -> list[dict[int, str]]:
        # H and W must be multiples of block_size, a guard torch.export cannot state for a plain
        # dynamic dim: the batch alone is dynamic.
        return [{0: "batch"}]

    def param_shapes(self, spec: HaloSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        out, dk, _ = references.self_attn_widths(spec, c, case.options)
        heads = spec.num_heads
        win = spec.block_size + 2 * spec.halo_size
        shapes: dict[str, tuple[int, ...]] = {
            "q.weight": (heads * dk, c, 1, 1),
            "kv.weight": (heads * dk + out, c, 1, 1),
        }
        if spec.qkv_bias:
            shapes |= {"q.bias": (heads * dk,), "kv.bias": (heads * dk + out,)}
        return shapes | {
            "pos_embed.height_rel": (2 * win - 1, dk),
            "pos_embed.width_rel": (2 * win - 1, dk),
        }

    def reference(
        self, spec: HaloSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return references.halo_attn(inputs.args[0], params, spec, inputs.options)

    def size_errors(
        self,
        spec: HaloSpec,
        c: int,
        hw: tuple[int, int],
        call: Callable[..., Callable[[Callable[..., nn.Module], str], object]],
        shape_text: Callable[[tuple[int, ...]], str],
    ) -> list[ErrorInput]:
        bs = spec.block_size
        empty, off = (2, c, bs, 0), (2, c, bs + 1, bs)
        errors = [
            ErrorInput(
                "empty_spatial",
                call(empty),
                rf"^{{cls}}: expected at least one position in H, W, got \({shape_text(empty)}\)$",
            ),
        ]
        if bs > 1:
            errors.append(
                ErrorInput(
                    "not_block_multiple",
                    call(off),
                    rf"^{{cls}}: expected H and W multiples of the block size {bs}, got \({shape_text(off)}\)$",
                )
            )
        else:
            one_row = (2, c, 1, 5)
            errors.append(
                ErrorInput(
                    "stride_2_one_row",
                    call(one_row, stride=2),
                    rf"^{{cls}}: expected at least 2 positions in H and W \(stride 2 .*\), got \({shape_text(one_row)}\)$",
                )
            )
        return errors


# --- attention kinds (sdpa, mha) ---------------------------------------------------------------------


def _bool_mask(shape: tuple[int, ...], device: str, gen: torch.Generator) -> Tensor:
    """Random True = allowed, with key 0 always allowed so no row is fully masked."""
    mask = torch.rand(shape, generator=gen) < 0.6
    mask[..., 0] = True
    return mask.to(device)


def _float_key_mask(allowed: Tensor, like: Tensor) -> Tensor:
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill(
        ~allowed, float("-inf")
    )


# Realistic attention inputs: values (and hidden states on the value path) in the tens, queries
# and keys at the scale that gives the logits of a trained model (|q k^T| * scale ~ 10). Tens on
# the query/key path would give logits in the hundreds: a saturated softmax whose rounding flips
# which key wins, which no precision judges fairly.
_VALUE_MAGNITUDE = 30.0
_QK_MAGNITUDE = 3.0
_ATTENTION_MAGNITUDES = (_QK_MAGNITUDE, _QK_MAGNITUDE, _VALUE_MAGNITUDE)


class _Attention(Kind[S]):
    attention = True
    autocast_keeps_dtype = False

    def causal(self, spec: S) -> str | None:
        assert isinstance(spec, AttentionOptions)
        return spec.causal_alignment if spec.causal else None

    def dropout(self, spec: S) -> float:
        assert isinstance(spec, AttentionOptions)
        return spec.dropout

    def permutation_invariant(self, spec: S) -> bool:
        return (
            self.causal(spec) is None
            and self.window(spec) is None
            and not self.relative_positions(spec)
        )

    def window(self, spec: S) -> int | None:
        assert isinstance(spec, AttentionOptions)
        return spec.window


class Sdpa(_Attention[SdpaSpec]):
    name = "sdpa"
    factory_kwargs = False

    def param_shapes(self, spec: SdpaSpec, case: Case) -> dict[str, tuple[int, ...]]:
        return {}

    def cases(self, spec: SdpaSpec) -> list[Case]:
        qkv = ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5))
        return [
            Case("b2h3_q4_k6", (), qkv),
            Case("q1_k1", (), ((1, 1, 1, 4), (1, 1, 1, 4), (1, 1, 1, 3))),
            Case("b4_q5_k5", (), ((4, 5, 8), (4, 5, 8), (4, 5, 8))),
            Case("mask_bool", (), qkv, ("attn_bool",)),
            Case("mask_float_4d", (), qkv, ("attn_float_4d",)),
            Case(
                "act_b2h4_q32_k48",
                (),
                ((2, 4, 32, 16), (2, 4, 48, 16), (2, 4, 48, 16)),
                magnitudes=_ATTENTION_MAGNITUDES,
            ),
        ]

    def tiny(self, spec: SdpaSpec) -> Case:
        return Case("tiny", (), ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 2)))

    def inputs(
        self, spec: SdpaSpec, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        inputs = super().inputs(spec, case, dtype, device, gen)
        q, k = case.shapes[0], case.shapes[1]
        lq, lk = q[-2], k[-2]
        for mask in case.masks:
            if mask == "attn_bool":
                inputs.kwargs["attn_mask"] = _bool_mask((lq, lk), device, gen)
            elif mask == "attn_float_4d":
                inputs.kwargs["attn_mask"] = _randn((q[0], 1, lq, lk), dtype, device, gen)
            else:
                raise ValueError(f"sdpa cases take no {mask!r} mask")
        return inputs

    def out_shape(self, spec: SdpaSpec, case: Case) -> tuple[int, ...]:
        return (*case.shapes[0][:-1], case.shapes[2][-1])

    def reference(
        self, spec: SdpaSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        q, k, v = inputs.args
        mask = inputs.kwargs.get("attn_mask")
        out = references.attention(
            q,
            k,
            v,
            [] if mask is None else [mask],
            scale=spec.scale,
            causal=spec.causal,
            alignment=spec.causal_alignment,
            window=spec.window,
            softcap=spec.softcap,
        )
        assert isinstance(out, Tensor)
        return out

    def anchors(self, spec: SdpaSpec) -> list[Anchor]:
        # SDPA has no soft-capping: a soft-capped variant has no SDPA anchor.
        return [] if spec.softcap is not None else [anchors.sdpa_anchor(spec)]

    def dynamic_dims(self, spec: SdpaSpec, case: Case) -> list[dict[int, str]]:
        n = len(case.shapes[0])
        lead = {i: f"lead{i}" for i in range(n - 2)}
        return [{**lead, n - 2: "lq"}, {**lead, n - 2: "lk"}, {**lead, n - 2: "lk"}]

    def seq_dims(self, spec: SdpaSpec, inputs: Inputs) -> tuple[int, int]:
        return inputs.args[0].ndim - 2, inputs.args[1].ndim - 2

    def mask_keys(self, spec: SdpaSpec, inputs: Inputs, masked: Tensor, fill: str) -> Inputs:
        q = inputs.args[0]
        allowed = ~masked.expand(q.shape[-2], -1)
        mask = allowed if fill == "bool" else _float_key_mask(allowed, q)
        return Inputs(list(inputs.args), {"attn_mask": mask})

    def masked_row_output(self, spec: SdpaSpec, module: nn.Module, out: Tensor) -> Tensor:
        return torch.zeros_like(out)

    def error_inputs(self, spec: SdpaSpec) -> list[ErrorInput]:
        def call(
            *shapes: tuple[int, ...],
            mask: Tensor | None = None,
            dtypes: tuple[torch.dtype, ...] = (torch.float32,) * 3,
            devices: tuple[str | None, ...] = (None,) * 3,
        ) -> Callable[[Callable[..., nn.Module], str], object]:
            # Tensors are made on the device under test unless a device is named (meta: another
            # device on any machine); a mask already on meta stays there.
            def run(f: Callable[..., nn.Module], d: str) -> object:
                qkv = [
                    torch.ones(s, dtype=t, device=dev or d)
                    for s, t, dev in zip(shapes, dtypes, devices, strict=True)
                ]
                on = None if mask is None else mask if mask.device.type == "meta" else mask.to(d)
                return f()(*qkv, attn_mask=on)

            return run

        qkv = r"^{cls}: expected q \(\.\.\., Lq, D\), k \(\.\.\., Lk, D\) and v \(\.\.\., Lk, Dv\) of one rank"
        return [
            ErrorInput("qk_widths", call((2, 4, 8), (2, 6, 7), (2, 6, 5)), qkv),
            ErrorInput("kv_lengths", call((2, 4, 8), (2, 6, 8), (2, 5, 5)), qkv),
            ErrorInput("ranks", call((2, 4, 8), (6, 8), (6, 5)), qkv),
            ErrorInput("rank1", call((8,), (8,), (8,)), qkv),
            ErrorInput(
                "mask_shape",
                call((2, 4, 8), (2, 6, 8), (2, 6, 5), mask=torch.ones(4, 5, dtype=torch.bool)),
                r"^{cls}: expected attn_mask broadcastable to \(\.\.\., 4, 6\), got \(4, 5\)",
            ),
            ErrorInput(
                "mask_dtype",
                call((2, 4, 8), (2, 6, 8), (2, 6, 5), mask=torch.ones(4, 6, dtype=torch.int64)),
                r"^{cls}: attn_mask must be bool or floating point, got torch.int64",
            ),
            ErrorInput(
                "mask_extra_dims",
                call(
                    (2, 4, 8), (2, 6, 8), (2, 6, 5), mask=torch.ones(3, 2, 4, 6, dtype=torch.bool)
                ),
                r"^{cls}: expected attn_mask broadcastable to \(\.\.\., 4, 6\), got \(3, 2, 4, 6\)",
            ),
            ErrorInput(
                "mask_batch",
                call((2, 4, 8), (2, 6, 8), (2, 6, 5), mask=torch.ones(3, 4, 6, dtype=torch.bool)),
                r"^{cls}: expected attn_mask broadcastable to \(\.\.\., 4, 6\), got \(3, 4, 6\)",
            ),
            ErrorInput(
                "mask_device",
                call(
                    (2, 4, 8),
                    (2, 6, 8),
                    (2, 6, 5),
                    mask=torch.ones(4, 6, dtype=torch.bool, device="meta"),
                ),
                r"^{cls}: attn_mask is on meta, the inputs on ",
            ),
            ErrorInput(
                "integer_inputs",
                call((2, 4, 8), (2, 6, 8), (2, 6, 5), dtypes=(torch.int64,) * 3),
                r"^{cls}: expected q, k and v of one floating-point dtype, got torch.int64",
            ),
            ErrorInput(
                "mixed_dtypes",
                call(
                    (2, 4, 8),
                    (2, 6, 8),
                    (2, 6, 5),
                    dtypes=(torch.float32, torch.float64, torch.float32),
                ),
                r"^{cls}: expected q, k and v of one floating-point dtype, got torch.float32, torch.float64",
            ),
            ErrorInput(
                "inputs_device",
                call((2, 4, 8), (2, 6, 8), (2, 6, 5), devices=(None, "meta", None)),
                r"^{cls}: expected q, k and v on one device, got ",
            ),
        ]


class Mha(_Attention[MhaSpec]):
    name = "mha"

    @staticmethod
    def per_head(spec: MhaSpec, at_least: int) -> int:
        """A head width of at least ``at_least`` whose rotary part is even and >= 2."""
        width = at_least
        while spec.rope != "none" and (
            round(width * spec.rope_fraction) < 2 or round(width * spec.rope_fraction) % 2
        ):
            width += 1
        return width

    @classmethod
    def embed_dim(cls, spec: MhaSpec, per_head: int = 4) -> int:
        return spec.heads * cls.per_head(spec, per_head) if spec.head_dim is None else 12

    def relative_positions(self, spec: MhaSpec) -> bool:
        return spec.rope != "none" or spec.alibi

    def decodes(self, spec: MhaSpec) -> bool:
        return spec.causal

    def decode(self, spec: MhaSpec, module: nn.Module, inputs: Inputs, chunk: int) -> Tensor:
        from .cache import KVCache

        cache = KVCache()
        length = inputs.args[0].shape[1]
        outs = [
            output(module(*(a[:, i : i + chunk] for a in inputs.args), cache=cache))
            for i in range(0, length, chunk)
        ]
        if cache.length != length:
            raise CheckFailure(f"the cache holds {cache.length} tokens after {length}")
        return torch.cat(outs, dim=1)

    def with_positions(self, spec: MhaSpec, inputs: Inputs, shift: int) -> Inputs:
        q, k, _ = inputs.args
        q_pos, k_pos = references.default_positions(spec, q.shape[1], k.shape[1], device=q.device)
        kwargs = {"positions": q_pos[0] + shift, "key_positions": k_pos[0] + shift}
        return Inputs(list(inputs.args), {**inputs.kwargs, **kwargs})

    def cases(self, spec: MhaSpec) -> list[Case]:
        e = self.embed_dim(spec)
        self_attn = ((2, 5, e), (2, 5, e), (2, 5, e))
        big = self.embed_dim(spec, per_head=16)
        return [
            Case("self_b2_l5", (e,), self_attn),
            Case(
                "cross_b2_q3_k7",
                (e, e + 3, e + 5, e + 1),
                ((2, 3, e), (2, 7, e + 3), (2, 7, e + 5)),
            ),
            Case("b1_l1", (e,), ((1, 1, e),) * 3),
            Case("kpm_bool", (e,), self_attn, ("kpm_bool",)),
            Case("kpm_float", (e,), self_attn, ("kpm_float",)),
            Case("attn_bool", (e,), self_attn, ("attn_bool",)),
            Case("attn_float_4d", (e,), self_attn, ("attn_float_4d",)),
            Case(
                "kpm_bool_attn_bool_4d",
                (e, e + 3, e + 5),
                ((2, 3, e), (2, 7, e + 3), (2, 7, e + 5)),
                ("kpm_bool", "attn_bool_4d"),
            ),
            Case(
                f"act_b2_l32_e{big}", (big,), ((2, 32, big),) * 3, magnitudes=_ATTENTION_MAGNITUDES
            ),
            *(
                # Per-sample positions with gaps (as after left padding), queries and keys apart.
                [
                    Case(
                        "positions_b2_q3_k7",
                        (e,),
                        ((2, 3, e), (2, 7, e), (2, 7, e)),
                        ("positions",),
                    )
                ]
                if self.relative_positions(spec)
                else []
            ),
        ]

    def tiny(self, spec: MhaSpec) -> Case:
        e = self.embed_dim(spec, per_head=2)
        return Case("tiny", (e, e + 1, e + 2, 3), ((1, 2, e), (1, 3, e + 1), (1, 3, e + 2)))

    def inputs(
        self, spec: MhaSpec, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        inputs = super().inputs(spec, case, dtype, device, gen)
        b, lq, lk = case.shapes[0][0], case.shapes[0][1], case.shapes[1][1]
        for mask in case.masks:
            if (
                mask == "kpm_bool"
            ):  # True = padding: pad the tail of every sequence but its first key
                lengths = torch.randint(1, lk + 1, (b,), generator=gen)
                inputs.kwargs["key_padding_mask"] = (
                    torch.arange(lk)[None, :] >= lengths[:, None]
                ).to(device)
            elif mask == "kpm_float":
                inputs.kwargs["key_padding_mask"] = _randn((b, lk), dtype, device, gen)
            elif mask == "attn_bool":
                inputs.kwargs["attn_mask"] = _bool_mask((lq, lk), device, gen)
            elif mask == "attn_bool_4d":
                inputs.kwargs["attn_mask"] = _bool_mask((1, spec.heads, lq, lk), device, gen)
            elif mask == "attn_float_4d":
                inputs.kwargs["attn_mask"] = _randn((b, spec.heads, lq, lk), dtype, device, gen)
            elif mask == "positions":
                steps = torch.randint(0, 3, (b, lq + lk), generator=gen).cumsum(1)
                inputs.kwargs["positions"] = steps[:, :lq].to(device)
                inputs.kwargs["key_positions"] = steps[:, lq:].to(device)
            else:
                raise ValueError(f"unknown mask {mask!r}")
        return inputs

    def out_shape(self, spec: MhaSpec, case: Case) -> tuple[int, ...]:
        b, lq, e = case.shapes[0]
        return (b, lq, case.ctor[3] if len(case.ctor) > 3 else e)

    def reference(
        self, spec: MhaSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        return output(self._reference(spec, params, inputs))

    @staticmethod
    def _reference(
        spec: MhaSpec, params: references.Params, inputs: Inputs
    ) -> Tensor | tuple[Tensor, Tensor]:
        query, key, value = inputs.args
        return references.multi_head_attention(
            query,
            key,
            value,
            params,
            spec,
            key_padding_mask=inputs.kwargs.get("key_padding_mask"),
            attn_mask=inputs.kwargs.get("attn_mask"),
            positions=inputs.kwargs.get("positions"),
            key_positions=inputs.kwargs.get("key_positions"),
        )

    def returns_weights(self, spec: MhaSpec) -> bool:
        return spec.return_weights != "none"

    def reference_weights(
        self, spec: MhaSpec, params: references.Params, inputs: Inputs
    ) -> Tensor | None:
        if spec.return_weights == "none":
            return None
        result = self._reference(spec, params, inputs)
        assert isinstance(result, tuple)
        return result[1]

    def anchors(self, spec: MhaSpec) -> list[Anchor]:
        return [anchors.mha_anchor(spec)] if spec.torch_compatible else []

    def param_shapes(self, spec: MhaSpec, case: Case) -> dict[str, tuple[int, ...]]:
        e = case.ctor[0]
        kdim, vdim, out = (*case.ctor[1:], e, e, e)[:3]
        hd = spec.head_dim or e // spec.heads
        vd = spec.value_head_dim or hd
        kv = spec.kv_heads or spec.heads
        shapes: dict[str, tuple[int, ...]] = {
            "q_proj.weight": (spec.heads * hd, e),
            "k_proj.weight": (kv * hd, kdim),
            "v_proj.weight": (kv * vd, vdim),
            "out_proj.weight": (out, spec.heads * vd),
        }
        if spec.qkv_bias:
            shapes |= {
                "q_proj.bias": (spec.heads * hd,),
                "k_proj.bias": (kv * hd,),
                "v_proj.bias": (kv * vd,),
            }
        if spec.out_bias:
            shapes["out_proj.bias"] = (out,)
        if spec.qk_norm != "none":
            shapes |= {"q_norm.weight": (hd,), "k_norm.weight": (hd,)}
            if spec.qk_norm == "layernorm":
                shapes |= {"q_norm.bias": (hd,), "k_norm.bias": (hd,)}
        return shapes

    def dynamic_dims(self, spec: MhaSpec, case: Case) -> list[dict[int, str]]:
        return [{0: "batch", 1: "lq"}, {0: "batch", 1: "lk"}, {0: "batch", 1: "lk"}]

    def seq_dims(self, spec: MhaSpec, inputs: Inputs) -> tuple[int, int]:
        return 1, 1

    def mask_keys(self, spec: MhaSpec, inputs: Inputs, masked: Tensor, fill: str) -> Inputs:
        q, k, _ = inputs.args
        pad = masked.expand(k.shape[0], -1)
        mask = pad if fill == "bool" else _float_key_mask(~pad, q)
        return Inputs(list(inputs.args), {"key_padding_mask": mask})

    def masked_row_output(self, spec: MhaSpec, module: nn.Module, out: Tensor) -> Tensor:
        # zeros from attention, then the output projection
        proj = module.out_proj
        assert isinstance(proj, nn.Linear)
        return proj(out.new_zeros(*out.shape[:-1], proj.in_features))

    def error_inputs(self, spec: MhaSpec) -> list[ErrorInput]:
        heads = spec.heads
        e = heads * self.per_head(spec, 2)
        shapes = ((2, 3, e), (2, 5, e + 1), (2, 5, e + 2))
        widths = rf"^{{cls}}: expected query \(B, Lq, {e}\), key \(B, Lk, {e + 1}\) and value \(B, Lk, {e + 2}\), got "

        def call(
            *picks: Callable[[list[Tensor]], Tensor], **kwargs: Tensor
        ) -> Callable[[Callable[..., nn.Module], str], object]:
            def run(f: Callable[..., nn.Module], d: str) -> object:
                q, k, v = (torch.randn(s, device=d) for s in shapes)
                args = [pick([q, k, v]) for pick in picks]
                masks = {n: m if m.device.type == "meta" else m.to(d) for n, m in kwargs.items()}
                return f(e, e + 1, e + 2, device=d)(*args, **masks)

            return run

        def q(t: list[Tensor]) -> Tensor:
            return t[0]

        def k(t: list[Tensor]) -> Tensor:
            return t[1]

        def v(t: list[Tensor]) -> Tensor:
            return t[2]

        errors = [
            ErrorInput("key_width", call(q, v, v), widths),
            ErrorInput("value_width", call(q, k, k), widths),
            ErrorInput(
                "unbatched", call(lambda t: t[0][0], lambda t: t[1][0], lambda t: t[2][0]), widths
            ),
            ErrorInput("kv_lengths", call(q, k, lambda t: t[2][:, :4]), widths),
            ErrorInput("batch_sizes", call(lambda t: t[0][:1], k, v), widths),
            ErrorInput(
                "padding_shape",
                call(q, k, v, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
                r"^{cls}: expected key_padding_mask of shape \(2, 5\), got \(2, 4\)",
            ),
            ErrorInput(
                "mask_shape",
                call(q, k, v, attn_mask=torch.ones(2, 3, 5, dtype=torch.bool)),
                rf"^{{cls}}: expected attn_mask of shape \(3, 5\) or \(B or 1, {heads} or 1, 3, 5\), got \(2, 3, 5\)",
            ),
            ErrorInput(
                "padding_dtype",
                call(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.int32)),
                r"^{cls}: key_padding_mask must be bool or floating point, got torch.int32",
            ),
            ErrorInput(
                "integer_inputs",
                call(lambda t: t[0].long(), lambda t: t[1].long(), lambda t: t[2].long()),
                r"^{cls}: expected floating-point query, key and value, got torch.int64",
            ),
            ErrorInput(
                "inputs_device",
                call(q, lambda t: t[1].to("meta"), v),
                r"^{cls}: expected query, key and value on one device, got ",
            ),
            ErrorInput(
                "padding_device",
                call(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool, device="meta")),
                r"^{cls}: key_padding_mask is on meta, the inputs on ",
            ),
        ]
        if self.relative_positions(spec):
            errors += [
                ErrorInput(
                    "positions_shape",
                    call(q, k, v, positions=torch.arange(4)),
                    r"^{cls}: expected integer positions of shape \(3,\) or \(2, 3\), got torch.int64 of shape \(4,\)",
                ),
                ErrorInput(
                    "key_positions_dtype",
                    call(q, k, v, key_positions=torch.zeros(5)),
                    r"^{cls}: expected integer key_positions of shape \(5,\) or \(2, 5\), got torch.float32 of shape \(5,\)",
                ),
                ErrorInput(
                    "positions_device",
                    call(q, k, v, positions=torch.arange(3, device="meta")),
                    r"^{cls}: positions is on meta, the inputs on ",
                ),
            ]
        if self.decodes(spec):

            def cross_with_cache(f: Callable[..., nn.Module], d: str) -> object:
                from .cache import KVCache

                q, k, v = (torch.randn(s, device=d) for s in shapes)
                return f(e, e + 1, e + 2, device=d)(q, k, v, cache=KVCache())

            errors.append(
                ErrorInput(
                    "cache_lengths",
                    cross_with_cache,
                    r"^{cls}: with a cache, expected key and value of the query's length 3 \(the new tokens\), got 5",
                )
            )
        if spec.rope != "none" and spec.head_dim is None:
            errors.append(
                ErrorInput(
                    "rotary_width",
                    lambda f, d: f(heads, device=d),
                    r"^{cls}: the rotary width \d+ \(of head_dim 1\) must be even and >= 2",
                )
            )
        if spec.head_dim is None and heads > 1:
            errors.append(
                ErrorInput(
                    "indivisible_embed_dim",
                    lambda f, d: f(e + 1, device=d),
                    rf"^{{cls}}: embed_dim must be divisible by {heads} heads, got {e + 1}",
                )
            )
        if spec.torch_compatible:
            other = heads + 1
            errors.append(
                ErrorInput(
                    "from_torch_config",
                    lambda f, d: f.from_torch(  # type: ignore[attr-defined]
                        nn.MultiheadAttention(2 * other, other, batch_first=True, device=d)
                    ),
                    rf"^{{cls}}.from_torch: expected num_heads={heads}, .*; got num_heads={other}, ",
                )
            )
        return errors


class _ConvBlock(_Image[Img]):
    """A conv block rather than a gate (timm's SelectiveKernel, SplitAttn): the constructor takes
    ``out_channels`` and ``stride``, so some cases change the output's channels and size."""

    # The convs run in the autocast dtype (as nn.Conv2d does): the output is in it too.
    autocast_keeps_dtype = False

    def gated(self, spec: Img) -> bool:
        return False

    def out_geometry(self, spec: Img) -> tuple[int, int]:
        """The kernel size and dilation of the conv that sets the output's size."""
        raise NotImplementedError

    def padding(self, spec: Img, stride: int) -> int:
        """That conv's padding at ``stride``."""
        raise NotImplementedError

    def out_shape(self, spec: Img, case: Case) -> tuple[int, ...]:
        b, c, *spatial = case.shapes[0]
        stride = int_option(case.options, "stride", 1)
        k, d = self.out_geometry(spec)
        pad = self.padding(spec, stride)
        size = [(n + 2 * pad - d * (k - 1) - 1) // stride + 1 for n in spatial]
        return (b, int_option(case.options, "out_channels", c), *size)

    def cases(self, spec: Img) -> list[Case]:
        c = self.case_channels(spec, 16)
        out = self.case_channels(spec, c + 1)  # never c: the output's channels change
        strided = (2, c, 9, 6)
        # The realistic case at 64 channels, not 448: a conv's cost grows with C^2 (448 made it
        # 49 times dearer: 26 s a float16 reference check here), and 462 positions at ~160 still
        # overflow a float16 sum over space.
        act = self._fit(spec, (1, 64, *_ACTIVATION[2][2:]))
        realistic = Case(
            "act_" + _shape_name(act), (act[1],), (act,), magnitudes=(_ACTIVATION_MAGNITUDE,)
        )
        return [
            *(c for c in super().cases(spec) if not c.realistic),
            realistic,
            Case(
                f"{_shape_name(strided)}_s2_o{out}",
                (c,),
                (strided,),
                kwargs=(("out_channels", out), ("stride", 2)),
            ),
            Case(f"b1_c{c}_5x7_s3", (c,), ((1, c, 5, 7),), kwargs=(("stride", 3),)),
        ]

    def error_inputs(self, spec: Img) -> list[ErrorInput]:
        c = self.case_channels(spec, 8)
        return [
            *super().error_inputs(spec),
            ErrorInput(
                "zero_out_channels",
                lambda f, d: f(c, out_channels=0, device=d),
                r"^{cls}: out_channels must be >= 1, got 0$",
            ),
            ErrorInput(
                "zero_stride",
                lambda f, d: f(c, stride=0, device=d),
                r"^{cls}: stride must be >= 1, got 0$",
            ),
        ]


class Sk(_ConvBlock[SkSpec]):
    name = "sk"

    @staticmethod
    def _split(spec: SkSpec) -> int:
        """How many slices the input channels are split into (1 without split_input)."""
        return len(spec.kernel_size) if spec.split_input else 1

    def case_channels(self, spec: SkSpec, channels: int) -> int:
        m = self._split(spec) * spec.groups
        return max(1, -(-channels // m)) * m

    def out_geometry(self, spec: SkSpec) -> tuple[int, int]:
        k = spec.kernel_size[0]
        return (3, spec.dilation * (k - 1) // 2) if spec.keep_3x3 else (k, spec.dilation)

    def padding(self, spec: SkSpec, stride: int) -> int:
        k, d = self.out_geometry(spec)
        return ((stride - 1) + d * (k - 1)) // 2  # timm's get_padding

    def param_shapes(self, spec: SkSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        out = int_option(case.options, "out_channels", c)
        groups = min(out, spec.groups)
        per_path = c // self._split(spec)
        rd = references.hidden_width(out, spec.reduction, spec.divisor, 1, 0.9)
        shapes: dict[str, tuple[int, ...]] = {}
        for i, k in enumerate(spec.kernel_size):
            kernel = 3 if spec.keep_3x3 else k
            shapes[f"paths.{i}.conv.weight"] = (out, per_path // groups, kernel, kernel)
            shapes |= {f"paths.{i}.bn.weight": (out,), f"paths.{i}.bn.bias": (out,)}
        return shapes | {
            "attn.fc_reduce.weight": (rd, out, 1, 1),
            "attn.bn.weight": (rd,),
            "attn.bn.bias": (rd,),
            "attn.fc_select.weight": (out * len(spec.kernel_size), rd, 1, 1),
        }

    def reference(
        self, spec: SkSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        stride = int_option(inputs.options, "stride", 1)
        return references.selective_kernel(
            inputs.args[0], params, spec, training=training, stride=stride
        )

    def plain(self, spec: SkSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_sk(
            inputs.args[0], params, spec, int_option(inputs.options, "stride", 1)
        )

    def anchors(self, spec: SkSpec) -> list[Anchor]:
        return [_timm_anchor("timm SelectiveKernel formulation", self, spec)]

    def error_inputs(self, spec: SkSpec) -> list[ErrorInput]:
        errors = super().error_inputs(spec)
        p, g = self._split(spec), spec.groups
        if p > 1:
            errors.append(
                ErrorInput(
                    "indivisible_channels",
                    lambda f, d: f(p * g + 1, device=d),
                    rf"^{{cls}}: channels must be divisible by the {p} paths \(split_input\), got {p * g + 1}$",
                )
            )
        if g > 1:
            out = 2 * g + 1
            errors.append(
                ErrorInput(
                    "indivisible_groups",
                    lambda f, d: f(p * g, out_channels=out, device=d),
                    rf"^{{cls}}: {g} groups must divide each path's input channels \({g}\) and out_channels \({out}\)$",
                )
            )
        return errors


class Splat(_ConvBlock[SplatSpec]):
    name = "splat"

    @staticmethod
    def _reach(spec: SplatSpec) -> int:
        """The least H and W that leave one output position (1 unless the padding is short)."""
        k, pad = spec.kernel_size, Splat._pad(spec)
        return max(1, spec.dilation * (k - 1) - 2 * pad + 1)

    @staticmethod
    def _pad(spec: SplatSpec) -> int:
        return spec.kernel_size // 2 if spec.padding is None else spec.padding

    def case_channels(self, spec: SplatSpec, channels: int) -> int:
        m = spec.groups * spec.radix
        return max(1, -(-channels // m)) * m

    def cases(self, spec: SplatSpec) -> list[Case]:
        # A padding short of the dilated kernel shrinks the map: only inputs it reaches across,
        # and first a map two wider than that (the export check's, at stride 1).
        reach = self._reach(spec)
        cases = [c for c in super().cases(spec) if min(c.shapes[0][2:]) >= reach]
        if reach == 1:
            return cases
        c = self.case_channels(spec, 8)
        wide = (2, c, reach + 1, reach + 2)
        return [Case(_shape_name(wide), (c,), (wide,)), *cases]

    def tiny(self, spec: SplatSpec) -> Case:
        b, c, *spatial = super().tiny(spec).shapes[0]
        shape = (b, c, *(max(n, self._reach(spec)) for n in spatial))
        return Case("tiny", (c,), (shape,))

    def export_min(self, spec: SplatSpec, dim: str) -> int:
        # Two output positions, so symbolic shapes do not specialise a map of one.
        return self._reach(spec) + 1 if dim.startswith("d") else 2

    def out_geometry(self, spec: SplatSpec) -> tuple[int, int]:
        return spec.kernel_size, spec.dilation

    def padding(self, spec: SplatSpec, stride: int) -> int:
        return self._pad(spec)

    def _hidden(self, spec: SplatSpec, channels: int) -> int:
        return references.hidden_width(
            channels * spec.radix, spec.reduction, spec.divisor, spec.min_channels, 0.9
        )

    def param_shapes(self, spec: SplatSpec, case: Case) -> dict[str, tuple[int, ...]]:
        c = case.ctor[0]
        out = int_option(case.options, "out_channels", c)
        r, g, k = spec.radix, spec.groups, spec.kernel_size
        rd = self._hidden(spec, c)
        shapes: dict[str, tuple[int, ...]] = {
            "conv.weight": (out * r, c // (g * r), k, k),
            "fc1.weight": (rd, out // g, 1, 1),
            "fc1.bias": (rd,),
            "fc2.weight": (out * r, rd // g, 1, 1),
            "fc2.bias": (out * r,),
        }
        if spec.bias:
            shapes["conv.bias"] = (out * r,)
        if spec.norm == "batchnorm":
            shapes |= {"bn0.weight": (out * r,), "bn0.bias": (out * r,)}
            shapes |= {"bn1.weight": (rd,), "bn1.bias": (rd,)}
        return shapes

    def reference(
        self, spec: SplatSpec, params: references.State, inputs: Inputs, *, training: bool = False
    ) -> Tensor:
        stride = int_option(inputs.options, "stride", 1)
        return references.split_attention(
            inputs.args[0], params, spec, training=training, stride=stride
        )

    def plain(self, spec: SplatSpec, params: references.Params, inputs: Inputs) -> Tensor:
        return anchors.timm_splat(
            inputs.args[0], params, spec, int_option(inputs.options, "stride", 1)
        )

    def anchors(self, spec: SplatSpec) -> list[Anchor]:
        return [_timm_anchor("timm SplitAttn formulation", self, spec)]

    def error_inputs(self, spec: SplatSpec) -> list[ErrorInput]:
        errors = super().error_inputs(spec)
        m, g, reach = spec.groups * spec.radix, spec.groups, self._reach(spec)
        if m > 1:
            errors.append(
                ErrorInput(
                    "indivisible_channels",
                    lambda f, d: f(m + 1, device=d),
                    rf"^{{cls}}: channels must be divisible by groups \* radix \({m}\), got {m + 1}$",
                )
            )
        if g > 1:
            errors.append(
                ErrorInput(
                    "indivisible_out_channels",
                    lambda f, d: f(m, out_channels=g + 1, device=d),
                    rf"^{{cls}}: out_channels must be divisible by the {g} groups, got {g + 1}$",
                )
            )
        if reach > 1:
            c = self.case_channels(spec, 8)
            small = (2, c, reach - 1, reach + 2)
            errors.append(
                ErrorInput(
                    "too_small",
                    lambda f, d: f(c, device=d)(torch.randn(small, device=d)),
                    rf"^{{cls}}: expected H and W of at least {reach} \(.+\), got \({', '.join(map(str, small))}\)$",
                )
            )
        return errors


#: kind name -> its record.
KIND_DB: dict[str, Kind[Any]] = {
    k.name: k
    for k in (
        *(Channel(), Spatial(), Cbam(), Eca(), Ese(), Ge(), Gc(), Coord(), Scoord()),
        *(Ela(), Strip(), Simam(), Sge(), Triplet(), Bam(), Nl(), Bat(), Sdpa(), Mha()),
        Sk(),
        Splat(),
        Lambda(),
        Bottleneck(),
        Halo(),
    )
}


def record(spec: AnySpec) -> Kind[Any]:
    return KIND_DB[spec.kind]
