"""The checks: plain functions that prove a generated block correct, usable from a notebook.

    from harness import checks
    from harness.registry import default
    subject = checks.Subject.of("cbam_paper")          # or Subject(spec, any module class)
    checks.run("reference", subject, "b2_c16_7x5")     # raises CheckFailure with the numbers

Each check takes a ``Subject`` (a spec and the class to build), a case name from the kinds database
(``harness.kinds``), a device and a seed, and raises ``CheckFailure`` (an ``AssertionError``) or
``CheckSkipped`` with the reason. ``CHECKS`` says which checks apply to a spec and over which cases;
``TOLERANCES`` is the one table of tolerances (per check and dtype).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kinds import KINDS, Case, Inputs, Kind, output
from .references import causal_allowed


class CheckFailure(AssertionError):
    """A check found the module wrong; the message says what, where and by how much."""


class CheckSkipped(Exception):
    """A check cannot run here (no CUDA device, say); the message is the reason."""


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float


# The one tolerance table: (check, dtype) -> Tol, with per-dtype defaults under check "*".
# float64 comparisons differ only by summation order; float32 by kernel choice (TF32 off).
TOLERANCES: dict[tuple[str, torch.dtype], Tol] = {
    ("*", torch.float64): Tol(rtol=1e-7, atol=1e-10),
    ("*", torch.float32): Tol(rtol=1e-5, atol=1e-6),
    ("*", torch.float16): Tol(rtol=1e-3, atol=1e-3),
    ("*", torch.bfloat16): Tol(rtol=1.6e-2, atol=1e-2),
    ("construct", torch.float64): Tol(rtol=0.0, atol=0.0),  # a state_dict round trip is exact
    ("parity", torch.float32): Tol(
        rtol=1e-4, atol=1e-5
    ),  # CUDA float32 vs the CPU float64 reference
    # FlashAttention rule: |low - ref64| <= FACTOR * |plain_low - ref64| + atol.
    ("parity_lowp", torch.float16): Tol(rtol=2.0, atol=1e-3),
    ("parity_lowp", torch.bfloat16): Tol(rtol=2.0, atol=1e-2),
}


def tolerance(check: str, dtype: torch.dtype) -> Tol:
    return TOLERANCES.get((check, dtype)) or TOLERANCES[("*", dtype)]


def assert_close(actual: Tensor, expected: Tensor, check: str, what: str) -> None:
    if actual.shape != expected.shape:
        raise CheckFailure(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    tol = tolerance(check, actual.dtype)  # the precision under test decides
    a, e = actual.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu()
    if a.isnan().any() != e.isnan().any() or not torch.equal(a.isnan(), e.isnan()):
        raise CheckFailure(f"{what}: NaN where the expected value has none (or the reverse)")
    bad = (a - e).abs() > tol.atol + tol.rtol * e.abs()
    if bad.any():
        err = (a - e).abs().nan_to_num(0).max().item()
        i = tuple(bad.nonzero()[0].tolist())
        raise CheckFailure(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond rtol={tol.rtol}, atol={tol.atol}; "
            f"max abs error {err:.3g}; first at {i}: {a[i].item():.6g} vs expected {e[i].item():.6g}"
        )


@dataclass(frozen=True)
class Subject:
    """What the checks examine: a validated spec and the class to build (its constructor contract)."""

    spec: Any
    factory: Callable[..., nn.Module]

    @classmethod
    def of(cls, name: str, catalogue: Any = None) -> Subject:
        from . import registry

        catalogue = catalogue or registry.default
        return cls(catalogue.spec_of(name), catalogue.cls(name))

    @property
    def kind(self) -> Kind:
        return KINDS[self.spec.kind]

    def build(
        self,
        case: Case,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
        gen: torch.Generator | None = None,
    ) -> nn.Module:
        """Build for ``case`` and, given ``gen``, draw every parameter from N(0, 0.5^2) (no zero biases)."""
        kwargs = {"device": device, "dtype": dtype} if self.kind.factory_kwargs else {}
        module = self.factory(*case.ctor, **kwargs)
        if not self.kind.factory_kwargs:
            module = module.to(device=device, dtype=dtype)
        if gen is not None:
            with torch.no_grad():
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        return module.eval()

    def case(self, name: str) -> Case:
        for case in self.kind.cases(self.spec):
            if case.name == name:
                return case
        if name == "tiny":
            return self.kind.tiny(self.spec)
        raise KeyError(f"{self.spec.name}: no case {name!r}")


def seed_of(test_id: str) -> int:
    """A stable seed from a test id (same on every machine and Python hash seed)."""
    return zlib.crc32(test_id.encode())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(module: nn.Module, inputs: Inputs) -> Tensor:
    """The module's output (without the weights of modules that also return them)."""
    return output(module(*inputs.args, **inputs.kwargs))


def _float_leaves(inputs: Inputs) -> Inputs:
    """The inputs as fresh leaves; the floating positional ones require grad (masks do not)."""
    return Inputs(
        [a.detach().clone().requires_grad_(a.is_floating_point()) for a in inputs.args],
        {k: v.detach().clone() for k, v in inputs.kwargs.items()},
    )


def _grads(out: Tensor, leaves: list[Tensor], upstream: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(out, leaves, upstream, allow_unused=True))


def _compare_forward_backward(
    module: nn.Module,
    inputs: Inputs,
    expected_fn: Callable[[dict[str, Tensor], Inputs], Tensor],
    check: str,
    gen: torch.Generator,
    *,
    parameters: bool = True,
    pick: Callable[[Any], Tensor] = output,
) -> None:
    """Forward, input gradients and (with ``parameters``) parameter gradients against ``expected_fn``.

    ``pick`` selects what is compared from the module's result (the output, or the weights).
    """
    params = dict(module.named_parameters()) if parameters else {}
    x = _float_leaves(inputs)
    out = pick(module(*x.args, **x.kwargs))
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    rx = _float_leaves(inputs)
    expected = expected_fn(ref_params, rx)
    assert_close(out, expected, check, "forward")
    with torch.no_grad():  # modules may take a faster path when nothing needs a gradient
        assert_close(
            pick(module(*inputs.args, **inputs.kwargs)), expected, check, "forward without autograd"
        )
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    leaves = [a for a in x.args if a.requires_grad] + list(params.values())
    ref_leaves = [a for a in rx.args if a.requires_grad] + list(ref_params.values())
    names = [f"grad of input {i}" for i, a in enumerate(x.args) if a.requires_grad] + [
        f"grad of {n}" for n in params
    ]
    for got, want, name in zip(
        _grads(out, leaves, upstream), _grads(expected, ref_leaves, upstream), names, strict=True
    ):
        if got is None or want is None:
            if (got is None) != (want is None):
                raise CheckFailure(f"{name}: {'missing' if got is None else 'unexpected'} gradient")
            continue
        assert_close(got, want, check, name)


# ---------------------------------------------------------------------------------------------------
# The checks. Each: (subject, case, device, seed, options) -> None, raising CheckFailure.


def check_construct(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Parameter names and shapes as the spec says; device/dtype reach every parameter; builds on
    meta; repr; state_dict round-trips exactly."""
    kind = subject.kind
    shapes = {n: tuple(p.shape) for n, p in subject.factory(*case.ctor).named_parameters()}
    expected = kind.param_shapes(subject.spec, case)
    if shapes != expected:
        raise CheckFailure(f"parameters {shapes}, expected from the spec {expected}")
    if kind.factory_kwargs:
        for dtype in (torch.float64, torch.float32):
            module = subject.factory(*case.ctor, device=device, dtype=dtype)
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if t.dtype != dtype or t.device.type != torch.device(device).type:
                    raise CheckFailure(
                        f"{name} is {t.dtype} on {t.device}, asked for {dtype} on {device}"
                    )
        meta = subject.factory(*case.ctor, device="meta")
        if any(p.device.type != "meta" for p in meta.parameters()):
            raise CheckFailure("device='meta' did not reach every parameter")
        out = _call(meta, kind.inputs(subject.spec, case, torch.float32, "meta", _generator(seed)))
        if tuple(out.shape) != kind.out_shape(subject.spec, case):
            raise CheckFailure(
                f"on meta: output shape {tuple(out.shape)}, expected {kind.out_shape(subject.spec, case)}"
            )
    text = repr(subject.factory(*case.ctor))
    if type(subject.factory(*case.ctor)).__name__ not in text:
        raise CheckFailure(f"repr does not name the class: {text!r}")
    gen = _generator(seed)
    a, b = subject.build(case, device=device, gen=gen), subject.build(case, device=device, gen=gen)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    inputs = kind.inputs(subject.spec, case, torch.float64, device, gen)
    assert_close(
        _call(b, inputs), _call(a, inputs), "construct", "output after a state_dict round trip"
    )


def check_shape(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Output shape and dtype, in float32 and float64."""
    gen = _generator(seed)
    expected = subject.kind.out_shape(subject.spec, case)
    for dtype in (torch.float32, torch.float64):
        module = subject.build(case, device=device, dtype=dtype, gen=gen)
        out = _call(module, subject.kind.inputs(subject.spec, case, dtype, device, gen))
        if tuple(out.shape) != expected or out.dtype != dtype:
            raise CheckFailure(
                f"{dtype}: output {tuple(out.shape)} {out.dtype}, expected {expected} {dtype}"
            )


def check_reference(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """float64 forward and backward (input and parameter gradients) equal the independent reference."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    _compare_forward_backward(
        module, inputs, lambda p, x: subject.kind.reference(subject.spec, p, x), "reference", gen
    )


def _sdpa_anchor(subject: Subject, inputs: Inputs) -> Tensor:
    spec = subject.spec
    q, k, v = inputs.args
    mask = inputs.kwargs.get("attn_mask")
    if spec.causal and (mask is not None or spec.causal_alignment == "bottom_right"):
        causal = causal_allowed(q.shape[-2], k.shape[-2], spec.causal_alignment, q.device)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=spec.scale)
        mask = (
            mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=spec.scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=spec.causal, scale=spec.scale
    )


def _torch_mha(
    subject: Subject, case: Case, device: str, gen: torch.Generator
) -> nn.MultiheadAttention:
    spec = subject.spec
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
    return mha.eval()


def _torch_mha_call(mha: nn.MultiheadAttention, subject: Subject, inputs: Inputs) -> Tensor:
    """Our mask conventions translated to nn.MultiheadAttention's (bool attn_mask: True = NOT allowed)."""
    q, k, v = inputs.args
    b, lq, lk, h = q.shape[0], q.shape[1], k.shape[1], subject.spec.heads
    mask = inputs.kwargs.get("attn_mask")
    if subject.spec.causal:
        causal = causal_allowed(lq, lk, subject.spec.causal_alignment, q.device)
        mask = (
            causal
            if mask is None
            else (
                mask & causal
                if mask.dtype == torch.bool
                else mask.masked_fill(~causal, float("-inf"))
            )
        )
    padding = inputs.kwargs.get("key_padding_mask")
    if mask is not None:
        if mask.ndim == 4:
            mask = mask.expand(b, h, lq, lk).reshape(b * h, lq, lk)
        if mask.dtype == torch.bool and padding is not None and padding.is_floating_point():
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~mask, float("-inf")
            )
        elif mask.dtype == torch.bool:
            mask = ~mask
    out, _ = mha(q, k, v, key_padding_mask=padding, attn_mask=mask, need_weights=False)
    return out


def anchor_applies(subject: Subject, case: Case) -> bool:
    spec = subject.spec
    if spec.kind == "sdpa":
        return True
    return spec.torch_compatible and len(case.ctor) < 4  # nn.MultiheadAttention has no out_dim


def check_anchor(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Equals F.scaled_dot_product_attention / nn.MultiheadAttention (weights copied by from_torch)."""
    gen = _generator(seed)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    if subject.spec.kind == "sdpa":
        module = subject.build(case, device=device)
        _compare_forward_backward(
            module, inputs, lambda _, x: _sdpa_anchor(subject, x), "anchor", gen
        )
        return
    mha = _torch_mha(subject, case, device, gen)
    module = subject.factory.from_torch(mha).eval()
    # nn.MultiheadAttention keeps its parameters in another layout: forward and input gradients.
    _compare_forward_backward(
        module,
        inputs,
        lambda _, x: _torch_mha_call(mha, subject, x),
        "anchor",
        gen,
        parameters=False,
    )


def check_gradcheck(
    subject: Subject, case: Case, device: str, seed: int, gradcheck: str = "fast", **_: Any
) -> None:
    """torch.autograd.gradcheck in float64 over the inputs and every parameter (tiny shapes)."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    args = [a.detach().clone().requires_grad_() for a in inputs.args]

    def fn(*flat: Tensor) -> Tensor:
        xs, ps = flat[: len(args)], flat[len(args) :]
        return torch.func.functional_call(
            module, dict(zip(names, ps, strict=True)), tuple(xs), inputs.kwargs
        )

    try:
        torch.autograd.gradcheck(
            fn, (*args, *params), fast_mode=gradcheck == "fast", raise_exception=True
        )
    except RuntimeError as exc:  # gradcheck raises GradcheckError (a RuntimeError)
        raise CheckFailure(f"gradcheck: {str(exc).splitlines()[0]}") from None


def _non_contiguous(t: Tensor) -> Tensor:
    """The same values in a non-contiguous layout (every other element of a wider tensor)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.shape[-1] == 1
    return out


def check_layout(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Non-contiguous and channels_last inputs give the same result; batch samples are independent."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    expected = _call(module, inputs)
    assert_close(
        _call(module, inputs.map(_non_contiguous)), expected, "layout", "non-contiguous input"
    )
    x = inputs.args[0]
    if x.ndim in (4, 5) and not subject.kind.attention:
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        out = _call(module, Inputs([x.contiguous(memory_format=fmt)]))
        assert_close(out, expected, "layout", "channels_last input")
    batch = x.shape[0]
    if batch < 2:
        return
    # Sample 0 alone, and sample 0 with the other samples changed, give the batched result's row 0.
    first = Inputs(
        [a[:1] for a in inputs.args], {k: _sample0(k, v) for k, v in inputs.kwargs.items()}
    )
    assert_close(_call(module, first), expected[:1], "layout", "sample 0 run alone")
    changed = inputs.map(lambda t: t.clone())
    for a in changed.args:
        a[1:] = torch.randn(a[1:].shape, generator=gen, dtype=torch.float64).to(a) * 3
    assert_close(
        _call(module, changed)[:1], expected[:1], "layout", "sample 0 when the other samples change"
    )


def _sample0(name: str, mask: Tensor) -> Tensor:
    """A mask for sample 0 alone: padding masks and 4-d masks carry a batch dim, (Lq, Lk) ones do not."""
    return mask[:1] if name == "key_padding_mask" or mask.ndim == 4 else mask


def check_gate_bound(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """A gated block never increases |x| anywhere (gates lie in [0, 1])."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    x = subject.kind.inputs(subject.spec, case, torch.float64, device, gen).args[0] * 10
    out = module(x)
    grew = out.abs() > x.abs()
    if grew.any():
        i = tuple(grew.nonzero()[0].tolist())
        raise CheckFailure(
            f"|output| > |x| at {int(grew.sum())} elements; first at {i}: {out[i].item():.6g} from {x[i].item():.6g}"
        )


def check_permutation(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Permuting keys and values together leaves the output unchanged (no positional leak)."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    q, k, v = inputs.args
    dim = k.ndim - 2 if subject.spec.kind == "sdpa" else 1
    perm = torch.randperm(k.shape[dim], generator=gen).to(device)
    permuted = Inputs([q, k.index_select(dim, perm), v.index_select(dim, perm)])
    assert_close(
        _call(module, permuted),
        _call(module, inputs),
        "permutation",
        "output with keys and values permuted",
    )


def check_causal(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Causal: the output at query i does not depend on later queries, nor on keys it may not see."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    dim = inputs.args[0].ndim - 2 if subject.spec.kind == "sdpa" else 1
    lq, lk = inputs.args[0].shape[dim], inputs.args[1].shape[dim]
    cut = max(1, lq // 2)
    key_cut = cut + (lk - lq if subject.spec.causal_alignment == "bottom_right" else 0)
    if not 0 < key_cut < lk:
        raise CheckSkipped(f"case {case.name} leaves no key after query {cut} to change")
    changed = inputs.map(lambda t: t.clone())
    q, k, v = changed.args
    for a, start in ((q, cut), (k, key_cut), (v, key_cut)):
        part = a.narrow(dim, start, a.shape[dim] - start)
        part.copy_(
            torch.randn(part.shape, generator=gen, dtype=torch.float64)
        )  # CPU draw, any device
    before = _call(module, inputs).narrow(dim, 0, cut)
    after = _call(module, changed).narrow(dim, 0, cut)
    assert_close(
        after,
        before,
        "causal",
        f"outputs 0..{cut - 1} when queries >= {cut} and keys >= {key_cut} change",
    )


def _mask_keys(subject: Subject, inputs: Inputs, masked: Tensor, fill: str) -> Inputs:
    """Mask keys where ``masked`` (shape (Lk,)) is True, with a bool or float mask of the kind's API."""
    q, k, _ = inputs.args
    if subject.spec.kind == "sdpa":
        allowed = ~masked.expand(q.shape[-2], -1)
        mask = (
            allowed
            if fill == "bool"
            else torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~allowed, float("-inf")
            )
        )
        return Inputs(list(inputs.args), {"attn_mask": mask})
    pad = masked.expand(k.shape[0], -1)
    mask = (
        pad
        if fill == "bool"
        else torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, float("-inf"))
    )
    return Inputs(list(inputs.args), {"key_padding_mask": mask})


def check_masked_keys(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Masked keys (bool and -inf float masks) have no influence on the output."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    k = inputs.args[1]
    dim = k.ndim - 2 if subject.spec.kind == "sdpa" else 1
    masked = torch.zeros(k.shape[dim], dtype=torch.bool, device=device)
    masked[1::2] = True
    for fill in ("bool", "float"):
        base = _mask_keys(subject, inputs, masked, fill)
        changed = base.map(lambda t: t.clone())
        for a in changed.args[1:]:
            index = masked.nonzero().flatten()
            a.index_copy_(
                dim,
                index,
                torch.randn(
                    a.index_select(dim, index).shape, generator=gen, dtype=torch.float64
                ).to(a)
                * 5,
            )
        assert_close(
            _call(module, changed),
            _call(module, base),
            "masked_keys",
            f"output when masked keys change ({fill} mask)",
        )


def check_masked_row(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """A query whose keys are all masked gets the documented result (zeros before out_proj), never NaN."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = _float_leaves(subject.kind.inputs(subject.spec, case, torch.float64, device, gen))
    k = inputs.args[1]
    every = torch.ones(
        k.shape[-2] if subject.spec.kind == "sdpa" else k.shape[1], dtype=torch.bool, device=device
    )
    for fill in ("bool", "float"):
        masked = _mask_keys(subject, inputs, every, fill)
        out = _call(module, masked)
        if not torch.isfinite(out).all():
            raise CheckFailure(f"fully masked rows ({fill} mask) give non-finite outputs")
        if subject.spec.kind == "mha":  # zeros from attention, then the output projection
            expected = module.out_proj(out.new_zeros(*out.shape[:-1], module.out_proj.in_features))
        else:
            expected = torch.zeros_like(out)
        assert_close(out, expected, "masked_row", f"output of fully masked rows ({fill} mask)")
        grads = torch.autograd.grad(
            out.sum(), [a for a in inputs.args if a.requires_grad], allow_unused=True
        )
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            raise CheckFailure(f"fully masked rows ({fill} mask) give non-finite gradients")


def check_weights(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Returned attention weights (the explicit path) equal the reference's, forward and backward."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    expected = subject.kind.reference_weights  # type: ignore[attr-defined]  # mha only
    _compare_forward_backward(
        module,
        inputs,
        lambda p, x: expected(subject.spec, p, x),
        "weights",
        gen,
        pick=lambda r: r[1],
    )


def check_dropout(subject: Subject, case: Case, device: str, seed: int, **_: Any) -> None:
    """Dropout acts in training only: two training calls differ, eval calls are equal and deterministic."""
    gen = _generator(seed)
    module = subject.build(case, device=device, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, torch.float64, device, gen)
    evaluated = _call(module, inputs)
    assert_close(_call(module, inputs), evaluated, "dropout", "second call in eval mode")
    expected = subject.kind.reference(subject.spec, dict(module.named_parameters()), inputs)
    assert_close(evaluated, expected, "dropout", "eval output vs the dropout-free reference")
    module.train()
    first, second = _call(module, inputs), _call(module, inputs)
    if torch.equal(first, second) or torch.equal(first, evaluated):
        raise CheckFailure("training-mode calls do not differ: dropout is not applied")


def check_parity(
    subject: Subject, case: Case, device: str, seed: int, target: str = "cuda", **_: Any
) -> None:
    """CPU vs CUDA with the same weights and inputs, forward and backward, TF32 off.

    ``case`` names a dtype: float32 is held to the CPU float64 reference; float16 and bfloat16 to
    the FlashAttention rule (error vs float64 at most 2x the plain PyTorch formulation's error in the
    same dtype, plus a small atol).
    """
    if target == "cuda" and not torch.cuda.is_available():
        raise CheckSkipped(
            "no CUDA device: CPU vs CUDA parity needs one (run with --devices cpu,cuda on a GPU machine)"
        )
    dtype = getattr(torch, case.name)
    base = subject.kind.cases(subject.spec)[0]
    gen = _generator(seed)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = subject.build(base, gen=gen)
        inputs = subject.kind.inputs(subject.spec, base, torch.float64, "cpu", gen)
        upstream = torch.randn(
            subject.kind.out_shape(subject.spec, base), generator=gen, dtype=torch.float64
        )
        ref_x = _float_leaves(inputs)
        ref_out = _call(cpu, ref_x)
        ref_grads = _grads(ref_out, [a for a in ref_x.args if a.requires_grad], upstream)
        cuda = subject.build(base, device=target, dtype=dtype)
        cuda.load_state_dict(cpu.state_dict())
        x = _float_leaves(
            inputs.map(lambda t: t.to(target, dtype if t.is_floating_point() else t.dtype))
        )
        out = _call(cuda, x)
        grads = _grads(out, [a for a in x.args if a.requires_grad], upstream.to(out))
        if dtype == torch.float32:
            assert_close(out, ref_out, "parity", "CUDA float32 forward vs CPU float64")
            for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
                assert_close(g, r, "parity", f"CUDA float32 grad of input {i} vs CPU float64")
            return
        # The plain formulation in the same low precision, on CUDA, as the yardstick.
        plain_x = _float_leaves(
            inputs.map(lambda t: t.to(target, dtype if t.is_floating_point() else t.dtype))
        )
        plain_params = {k: v.detach().to(target, dtype) for k, v in cpu.named_parameters()}
        plain = subject.kind.reference(subject.spec, plain_params, plain_x)
        tol = tolerance("parity_lowp", dtype)
        pairs = [("forward", out, plain, ref_out)]
        plain_grads = _grads(
            plain, [a for a in plain_x.args if a.requires_grad], upstream.to(plain)
        )
        pairs += [
            (f"grad of input {i}", g, p, r)
            for i, (g, p, r) in enumerate(zip(grads, plain_grads, ref_grads, strict=True))
        ]
        for what, got, yard, ref in pairs:
            err = (got.double().cpu() - ref).abs().max().item()
            bound = tol.rtol * (yard.double().cpu() - ref).abs().max().item() + tol.atol
            if err > bound:
                raise CheckFailure(
                    f"CUDA {case.name} {what}: max error {err:.3g} vs float64 exceeds {tol.rtol}x the plain formulation's + {tol.atol} = {bound:.3g}"
                )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


# ---------------------------------------------------------------------------------------------------
# Which checks apply to a spec, over which cases.


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[..., None]
    applies: Callable[[Any], bool]
    cases: Callable[[Subject], list[Case]]
    on_devices: bool = True  # False: the check picks its own devices (parity)


def _all(subject: Subject) -> list[Case]:
    return subject.kind.cases(subject.spec)


def _first_case(subject: Subject) -> list[Case]:
    return subject.kind.cases(subject.spec)[:1]


def _unmasked(subject: Subject) -> list[Case]:
    return [c for c in subject.kind.cases(subject.spec) if not c.masks][:1]


def _tiny(subject: Subject) -> list[Case]:
    return [subject.kind.tiny(subject.spec)]


def _anchor_cases(subject: Subject) -> list[Case]:
    return [c for c in _all(subject) if anchor_applies(subject, c)]


def _dtypes(_: Subject) -> list[Case]:
    return [Case(name, (), ()) for name in ("float32", "float16", "bfloat16")]


def _attention(spec: Any) -> bool:
    return KINDS[spec.kind].attention


CHECKS: dict[str, Check] = {
    c.name: c
    for c in (
        Check("construct", check_construct, lambda s: True, _first_case),
        Check("shape", check_shape, lambda s: True, _all),
        Check("reference", check_reference, lambda s: True, _all),
        Check("anchor", check_anchor, _attention, _anchor_cases),
        Check("gradcheck", check_gradcheck, lambda s: True, _tiny),
        Check("layout", check_layout, lambda s: True, _first_case),
        Check("gate_bound", check_gate_bound, lambda s: KINDS[s.kind].gated, _all),
        Check(
            "permutation", check_permutation, lambda s: _attention(s) and not s.causal, _unmasked
        ),
        Check("causal", check_causal, lambda s: _attention(s) and s.causal, _unmasked),
        Check("masked_keys", check_masked_keys, _attention, _unmasked),
        Check("masked_row", check_masked_row, _attention, _unmasked),
        Check(
            "weights", check_weights, lambda s: s.kind == "mha" and s.return_weights != "none", _all
        ),
        Check("dropout", check_dropout, lambda s: _attention(s) and s.dropout > 0, _unmasked),
        Check("parity", check_parity, lambda s: True, _dtypes, on_devices=False),
    )
}


def plan(subject: Subject, devices: list[str]) -> list[tuple[str, str, str]]:
    """Every (check, case, device) that applies to ``subject``, in a stable order."""
    out = []
    for check in CHECKS.values():
        if not check.applies(subject.spec):
            continue
        for case in check.cases(subject):
            for device in devices if check.on_devices else ["cuda"]:
                out.append((check.name, case.name, device))
    return out


def run(
    check: str,
    subject: Subject,
    case: str,
    device: str = "cpu",
    seed: int | None = None,
    **options: Any,
) -> None:
    """Run one check on one case; raises CheckFailure or CheckSkipped."""
    spec = CHECKS[check]
    if device == "cuda" and spec.on_devices and not torch.cuda.is_available():
        raise CheckSkipped("no CUDA device available")
    chosen = next((c for c in spec.cases(subject) if c.name == case), None)
    if chosen is None:
        raise KeyError(f"check {check!r} has no case {case!r} for {subject.spec.name}")
    seed = seed_of(f"{subject.spec.name}-{check}-{case}") if seed is None else seed
    # Inputs and parameters come from explicit generators; the global RNGs only feed dropout.
    # Not torch.manual_seed: without CUDA initialised it queues lazy seeds for every accelerator
    # backend, formatting a stack trace each time (1.5 ms a call, half a sweep's time here).
    torch.default_generator.manual_seed(seed)
    if (device == "cuda" or check == "parity") and torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    spec.fn(subject, chosen, device, seed, **options)
