"""The kinds database, after PyTorch's ModuleInfo: per kind, how to build a module's constructor
arguments and inputs, and what its independent reference is. Every check runs over every kind through
this table, so a new spec gets full coverage with no new test code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import references

MASKS = ("attn_bool", "attn_float", "attn_bool_4d", "attn_float_4d", "kpm_bool", "kpm_float")


@dataclass(frozen=True)
class Case:
    """One way to build and call a module: constructor args, input shapes, which masks to pass."""

    name: str
    ctor: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    masks: tuple[str, ...] = ()


@dataclass
class Inputs:
    args: list[Tensor]
    kwargs: dict[str, Tensor] = field(default_factory=dict)

    def map(self, fn: Any) -> Inputs:
        return Inputs([fn(a) for a in self.args], {k: fn(v) for k, v in self.kwargs.items()})


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


class Kind:
    """What every kind tells the checks."""

    name: str
    attention = False  # attention checks (permutation, masks) apply
    gated = False  # the output is x * gate with gate in [0, 1]
    factory_kwargs = True  # the constructor takes device= and dtype=

    def cases(self, spec: Any) -> list[Case]:
        raise NotImplementedError

    def tiny(self, spec: Any) -> Case:
        """A case small enough for ``torch.autograd.gradcheck``."""
        raise NotImplementedError

    def inputs(
        self, spec: Any, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
    ) -> Inputs:
        return Inputs([_randn(s, dtype, device, gen) for s in case.shapes])

    def out_shape(self, spec: Any, case: Case) -> tuple[int, ...]:
        return case.shapes[0]

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        raise NotImplementedError

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, from the spec alone (the layout users rely on)."""
        raise NotImplementedError


def _channel_shapes(opts: Any, c: int, dims: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
    rd, ones = references.reduced_channels(c, opts), (1,) * dims
    shapes = {f"{prefix}fc1.weight": (rd, c, *ones), f"{prefix}fc2.weight": (c, rd, *ones)}
    if opts.bias:
        shapes |= {f"{prefix}fc1.bias": (rd,), f"{prefix}fc2.bias": (c,)}
    return shapes


def _spatial_shapes(opts: Any, dims: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}conv.weight": (1, len(opts.pooling), *(opts.kernel_size,) * dims)}
    return shapes | ({f"{prefix}conv.bias": (1,)} if opts.bias else {})


_SIZES = {
    1: [(2, 16, 7), (1, 16, 1), (3, 24, 9), (1, 8, 5)],
    2: [(2, 16, 7, 5), (1, 16, 1, 1), (3, 24, 4, 9), (1, 8, 2, 3)],
    3: [(2, 16, 3, 4, 5), (1, 16, 1, 1, 1), (1, 24, 2, 3, 2), (1, 8, 3, 1, 2)],
}
_TINY = {1: (2, 4, 3), 2: (2, 4, 3, 2), 3: (1, 4, 2, 3, 2)}


def output(result: Any) -> Tensor:
    """A module's output tensor: modules that return weights return (output, weights)."""
    return result[0] if isinstance(result, tuple) else result


class _Image(Kind):
    gated = True

    def cases(self, spec: Any) -> list[Case]:
        return [
            Case(f"b{s[0]}_c{s[1]}_{'x'.join(map(str, s[2:]))}", (s[1],), (s,))
            for s in _SIZES[spec.dims]
        ]

    def tiny(self, spec: Any) -> Case:
        s = _TINY[spec.dims]
        return Case("tiny", (s[1],), (s,))


class Channel(_Image):
    name = "channel"

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        return _channel_shapes(spec, case.ctor[0], spec.dims)

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return references.channel_attention(inputs.args[0], params, spec)


class Spatial(_Image):
    name = "spatial"

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        return _spatial_shapes(spec, spec.dims)

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return references.spatial_attention(inputs.args[0], params, spec)


class Cbam(_Image):
    name = "cbam"

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        return _channel_shapes(spec.channel, case.ctor[0], spec.dims, "channel.") | _spatial_shapes(
            spec.spatial, spec.dims, "spatial."
        )

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return references.cbam(inputs.args[0], params, spec)


class Eca(_Image):
    name = "eca"

    def cases(self, spec: Any) -> list[Case]:
        # C = 512 makes the adaptive kernel 5 (log2 512 = 9); the smaller channel counts give 3.
        sizes = [1, 2, 1][: spec.dims]
        big = Case(f"b2_c512_{'x'.join(map(str, sizes))}", (512,), ((2, 512, *sizes),))
        return [*super().cases(spec), big]

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return references.eca(inputs.args[0], params, spec)

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        return {"conv.weight": (1, 1, references.eca_kernel_size(case.ctor[0], spec))}


def _bool_mask(shape: tuple[int, ...], device: str, gen: torch.Generator) -> Tensor:
    """Random True = allowed, with key 0 always allowed so no row is fully masked."""
    mask = torch.rand(shape, generator=gen) < 0.6
    mask[..., 0] = True
    return mask.to(device)


class Sdpa(Kind):
    name = "sdpa"
    attention = True
    factory_kwargs = False

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        return {}

    def cases(self, spec: Any) -> list[Case]:
        return [
            Case("b2h3_q4_k6", (), ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5))),
            Case("q1_k1", (), ((1, 1, 1, 4), (1, 1, 1, 4), (1, 1, 1, 3))),
            Case("b4_q5_k5", (), ((4, 5, 8), (4, 5, 8), (4, 5, 8))),
            Case("mask_bool", (), ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5)), ("attn_bool",)),
            Case(
                "mask_float_4d", (), ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5)), ("attn_float_4d",)
            ),
        ]

    def tiny(self, spec: Any) -> Case:
        return Case("tiny", (), ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 2)))

    def inputs(
        self, spec: Any, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
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

    def out_shape(self, spec: Any, case: Case) -> tuple[int, ...]:
        return (*case.shapes[0][:-1], case.shapes[2][-1])

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        mask = inputs.kwargs.get("attn_mask")
        return references.attention(
            *inputs.args,
            [] if mask is None else [mask],
            scale=spec.scale,
            causal=spec.causal,
            alignment=spec.causal_alignment,
        )


class Mha(Kind):
    name = "mha"
    attention = True

    @staticmethod
    def embed_dim(spec: Any, per_head: int = 4) -> int:
        return spec.heads * per_head if spec.head_dim is None else 12

    def cases(self, spec: Any) -> list[Case]:
        e = self.embed_dim(spec)
        self_attn = ((2, 5, e), (2, 5, e), (2, 5, e))
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
        ]

    def tiny(self, spec: Any) -> Case:
        e = self.embed_dim(spec, per_head=2)
        return Case("tiny", (e, e + 1, e + 2, 3), ((1, 2, e), (1, 3, e + 1), (1, 3, e + 2)))

    def inputs(
        self, spec: Any, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator
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
            else:
                raise ValueError(f"unknown mask {mask!r}")
        return inputs

    def out_shape(self, spec: Any, case: Case) -> tuple[int, ...]:
        b, lq, e = case.shapes[0]
        return (b, lq, case.ctor[3] if len(case.ctor) > 3 else e)

    def reference(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return output(references.multi_head_attention(*inputs.args, params, spec, **inputs.kwargs))

    def param_shapes(self, spec: Any, case: Case) -> dict[str, tuple[int, ...]]:
        e = case.ctor[0]
        kdim, vdim, out = (*case.ctor[1:], e, e, e)[:3]
        hd = spec.head_dim or e // spec.heads
        vd = spec.value_head_dim or hd
        kv = spec.kv_heads or spec.heads
        shapes = {
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

    def reference_weights(self, spec: Any, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
        return references.multi_head_attention(*inputs.args, params, spec, **inputs.kwargs)[1]


KINDS: dict[str, Kind] = {k.name: k for k in (Channel(), Spatial(), Cbam(), Eca(), Sdpa(), Mha())}
