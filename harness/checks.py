"""The checks: plain functions that prove a generated block correct, usable from a notebook.

    from attnforge import checks
    subject = checks.Subject.of("cbam_paper")                       # or Subject(spec, any class)
    checks.run("reference", subject, "b2_c16_7x5", torch.float16)   # raises CheckFailure

Each check takes a ``Subject`` (a spec and the class to build), a case from the kind database
(``attnforge.kinds``), a dtype, a device and a seed, and raises ``CheckFailure`` (an
``AssertionError``) or ``CheckSkipped`` with the reason. ``CHECKS`` says which checks apply to a
spec, over which cases and dtypes; ``plan`` lists every (check, case, dtype, device). Nothing here
knows a kind by name: what differs between kinds is the record's (``attnforge.kinds``).
"""

from __future__ import annotations

import dataclasses
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .compare import (
    CheckFailure,
    CheckSkipped,
    assert_close,
    assert_within_rule,
)
from .kinds import ALL_DTYPES, Case, Inputs, Kind, output, record
from .spec import AnySpec

__all__ = [
    "CHECKS",
    "Check",
    "CheckFailure",
    "CheckSkipped",
    "Subject",
    "dtype_name",
    "plan",
    "run",
    "seed_of",
]


@dataclass(frozen=True)
class Subject:
    """What the checks examine: a validated spec and the class to build (its constructor contract)."""

    spec: AnySpec
    factory: Callable[..., nn.Module]

    @classmethod
    def of(cls, name: str, catalogue: Any = None) -> Subject:
        from . import registry

        catalogue = catalogue or registry.default
        return cls(catalogue.spec_of(name), catalogue.cls(name))

    @property
    def kind(self) -> Kind[Any]:
        return record(self.spec)

    def make(self, case: Case, **factory: Any) -> nn.Module:
        """The module ``case`` constructs (its positional args and keyword options), as created:
        default init, training mode; ``factory`` adds ``device=`` / ``dtype=``."""
        return self.factory(*case.ctor, **case.options, **factory)

    def build(
        self,
        case: Case,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
        gen: torch.Generator | None = None,
    ) -> nn.Module:
        """Build for ``case`` in eval mode and, given ``gen``, draw every parameter afresh.

        Weights from N(0, 1 / fan_in) (the scale PyTorch's default inits keep activations at), vectors
        (biases, norm weights) from N(0, 0.5^2): never the zeros an init may leave, which would hide
        a bias applied twice.
        """
        kwargs = {"device": device, "dtype": dtype} if self.kind.factory_kwargs else {}
        module = self.make(case, **kwargs)
        if not self.kind.factory_kwargs:
            module = module.to(device=device, dtype=dtype)
        if gen is not None:
            init_parameters(module, gen)
        return module.eval()


def init_parameters(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 0
            std = fan_in**-0.5 if fan_in else 0.5
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
        # A norm's running statistics, as a trained one has them (not the init's zeros and ones,
        # which would hide a norm applied with the wrong statistics).
        for name, b in module.named_buffers():
            draw = torch.randn(b.shape, generator=gen, dtype=torch.float64)
            if name.endswith("running_var"):
                b.copy_(draw.abs() * 0.5 + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(draw * 0.5)


def _buffers(
    module: nn.Module, dtype: torch.dtype | None = None, device: str | None = None
) -> dict[str, Tensor]:
    """Copies of the module's buffers (a training-mode reference updates its copies as the module
    updates its own); floating ones in ``dtype``."""
    return {
        n: (
            b.detach().to(device or b.device, dtype or b.dtype)
            if b.is_floating_point()
            else b.detach().to(device or b.device)
        ).clone()
        for n, b in module.named_buffers()
    }


def _compare_buffers(
    module_buffers: dict[str, Tensor], state: dict[str, Tensor], check: str
) -> None:
    """The module's running statistics after a forward equal the reference's."""
    for name, got in module_buffers.items():
        want = state[name]
        if got.is_floating_point():
            assert_close(got, want, check, f"buffer {name} after the forward")
        elif not torch.equal(got.cpu(), want.cpu()):
            raise CheckFailure(
                f"buffer {name} after the forward: {got.tolist()}, expected {want.tolist()}"
            )


def seed_of(test_id: str) -> int:
    """A stable seed from a test id (same on every machine and Python hash seed)."""
    return zlib.crc32(test_id.encode())


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(module: nn.Module | Callable[..., Any], inputs: Inputs) -> Tensor:
    """The module's output (without the weights of modules that also return them)."""
    return output(module(*inputs.args, **inputs.kwargs))


def _float_leaves(inputs: Inputs) -> Inputs:
    """The inputs as fresh leaves; the floating positional ones require grad (masks do not)."""
    return Inputs(
        [a.detach().clone().requires_grad_(a.is_floating_point()) for a in inputs.args],
        {k: v.detach().clone() for k, v in inputs.kwargs.items()},
        inputs.options,
    )


def _functional(module: nn.Module, params: dict[str, Tensor], inputs: Inputs) -> Tensor:
    """``module``'s output with ``params`` in place of its parameters (``params`` may be leaves)."""
    return output(torch.func.functional_call(module, params, tuple(inputs.args), inputs.kwargs))


def _grads(out: Tensor, leaves: Sequence[Tensor], upstream: Tensor) -> list[Tensor | None]:
    return list(torch.autograd.grad(out, leaves, upstream, allow_unused=True))


def _leaves(x: Inputs, params: dict[str, Tensor]) -> tuple[list[Tensor], list[str]]:
    leaves = [a for a in x.args if a.requires_grad] + list(params.values())
    names = [f"grad of input {i}" for i, a in enumerate(x.args) if a.requires_grad]
    return leaves, names + [f"grad of {n}" for n in params]


def _params_as(module: nn.Module, dtype: torch.dtype, device: str = "cpu") -> dict[str, Tensor]:
    """Fresh leaves holding the module's parameter values in ``dtype`` (exact: values only widen)."""
    return {
        n: p.detach().to(device=device, dtype=dtype).clone().requires_grad_()
        for n, p in module.named_parameters()
    }


def _compare_forward_backward(
    module: nn.Module,
    inputs: Inputs,
    expected_fn: Callable[[dict[str, Tensor], Inputs], Tensor],
    check: str,
    gen: torch.Generator,
    *,
    parameters: bool = True,
    pick: Callable[[Any], Tensor] = output,
    ref_dtype: torch.dtype | None = None,
    gradients: bool = True,
) -> None:
    """Forward, input gradients and (with ``parameters``) parameter gradients against ``expected_fn``;
    without ``gradients``, the gradients need only be present and finite.

    ``pick`` selects what is compared from the module's result (the output, or the weights).
    ``ref_dtype``: compute the expectation in this dtype (float64 for a float32 module) from the
    same parameter and input values; default, the module's own.
    """
    params: dict[str, Tensor] = dict(module.named_parameters()) if parameters else {}
    dtype = ref_dtype or next((p.dtype for p in module.parameters()), inputs.args[0].dtype)
    ref_params = {k: v.detach().to(dtype).clone().requires_grad_() for k, v in params.items()}
    state = {**_buffers(module, dtype), **ref_params} if parameters else {}
    x = _float_leaves(inputs)
    out = pick(module(*x.args, **x.kwargs))
    after = _buffers(module)  # before the second, gradient-free call moves them again
    rx = _float_leaves(inputs.map(lambda t: t.to(dtype) if t.is_floating_point() else t))
    expected = expected_fn(state, rx)
    assert_close(out, expected, check, "forward")
    if parameters:
        _compare_buffers(after, state, check)
    with torch.no_grad():  # modules may take a faster path when nothing needs a gradient
        assert_close(
            pick(module(*inputs.args, **inputs.kwargs)), expected, check, "forward without autograd"
        )
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    leaves, names = _leaves(x, params)
    ref_leaves, _ = _leaves(rx, ref_params)
    for got, want, name in zip(
        _grads(out, leaves, upstream.to(out)),
        _grads(expected, ref_leaves, upstream.to(expected)),
        names,
        strict=True,
    ):
        if got is None or want is None:
            if (got is None) != (want is None):
                raise CheckFailure(f"{name}: {'missing' if got is None else 'unexpected'} gradient")
            continue
        if gradients:
            assert_close(got, want, check, name)
        elif not torch.isfinite(got[torch.isfinite(want)]).all():
            raise CheckFailure(f"{name}: inf or NaN where the expected gradient is finite")


def _compare_by_rule(
    run_module: Callable[[Inputs], Tensor],
    run_plain: Callable[[dict[str, Tensor], Inputs], Tensor],
    run_ref64: Callable[[dict[str, Tensor], Inputs], Tensor],
    module_params: dict[str, Tensor],
    inputs: Inputs,
    gen: torch.Generator,
    what: str,
    *,
    rule_dtype: torch.dtype,
    judge_gradients: bool,
    buffers: dict[str, Tensor] | None = None,
) -> None:
    """Low precision by the FlashAttention rule: the forward always, every gradient where
    ``judge_gradients`` (else gradients must be present and finite).

    ``inputs`` are the low-precision inputs (CPU or the device under test); the float64 reference is
    computed on the CPU from the same values, and the yardstick ``run_plain`` from low-precision
    copies of the module's parameters, on the inputs' device.
    """
    buffers = buffers or {}
    x = _float_leaves(inputs)
    out = run_module(x)
    device = out.device.type
    low = {n: p.detach().clone().requires_grad_() for n, p in module_params.items()}
    px = _float_leaves(inputs)
    plain = run_plain({**buffers, **low}, px)
    p64 = {
        n: p.detach().to("cpu", torch.float64).clone().requires_grad_()
        for n, p in module_params.items()
    }
    rx = _float_leaves(
        inputs.map(lambda t: t.to("cpu", torch.float64) if t.is_floating_point() else t.cpu())
    )
    buffers64 = {
        n: (b.to("cpu", torch.float64) if b.is_floating_point() else b.cpu()).clone()
        for n, b in buffers.items()
    }
    ref = run_ref64({**buffers64, **p64}, rx)
    label = f"{what}{'' if device == 'cpu' else ' on ' + device}"
    assert_within_rule(out, plain, ref, f"{label} forward", dtype=rule_dtype)
    # A realistic upstream gradient: a loss averaged over the output's elements, scaled up as
    # mixed-precision loss scaling does (2^10), so gradients are neither all-zero nor overflowing.
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64) * (1024 / ref.numel())
    leaves, names = _leaves(x, module_params)
    plain_leaves, _ = _leaves(px, low)
    ref_leaves, _ = _leaves(rx, p64)
    triples = list(
        zip(
            _grads(out, leaves, upstream.to(out)),
            _grads(plain, plain_leaves, upstream.to(plain)),
            _grads(ref, ref_leaves, upstream),
            names,
            strict=True,
        )
    )
    scale = max(
        [1.0] + [w.abs().max().item() for _, _, w, _ in triples if w is not None and w.numel()]
    )
    for got, yard, want, name in triples:
        if got is None or yard is None or want is None:
            if (got is None) != (want is None):
                raise CheckFailure(
                    f"{label} {name}: {'missing' if got is None else 'unexpected'} gradient"
                )
            continue
        if judge_gradients:
            assert_within_rule(got, yard, want, f"{label} {name}", dtype=rule_dtype, scale=scale)
        elif not torch.isfinite(got.cpu()[torch.isfinite(want)]).all():
            raise CheckFailure(f"{label} {name}: inf or NaN where the float64 gradient is finite")


# ---------------------------------------------------------------------------------------------------
# The checks. Each: (subject, case, dtype, device, seed, options) -> None, raising CheckFailure.


def check_construct(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Parameter names and shapes as the spec says; device/dtype reach every parameter; builds on
    meta; repr; state_dict round-trips exactly."""
    kind = subject.kind
    shapes = {n: tuple(p.shape) for n, p in subject.make(case).named_parameters()}
    expected = kind.param_shapes(subject.spec, case)
    if shapes != expected:
        raise CheckFailure(f"parameters {shapes}, expected from the spec {expected}")
    if kind.factory_kwargs:
        module = subject.make(case, device=device, dtype=dtype)
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if (t.is_floating_point() and t.dtype != dtype) or t.device.type != torch.device(
                device
            ).type:
                raise CheckFailure(
                    f"{name} is {t.dtype} on {t.device}, asked for {dtype} on {device}"
                )
        meta = subject.make(case, device="meta", dtype=dtype)
        if any(p.device.type != "meta" for p in meta.parameters()):
            raise CheckFailure("device='meta' did not reach every parameter")
        out = _call(meta, kind.inputs(subject.spec, case, dtype, "meta", _generator(seed)))
        if tuple(out.shape) != kind.out_shape(subject.spec, case) or out.dtype != dtype:
            raise CheckFailure(
                f"on meta: output {tuple(out.shape)} {out.dtype}, expected {kind.out_shape(subject.spec, case)} {dtype}"
            )
    built = subject.make(case)
    text = repr(built)
    if type(built).__name__ not in text:
        raise CheckFailure(f"repr does not name the class: {text!r}")
    gen = _generator(seed)
    a = subject.build(case, device=device, dtype=dtype, gen=gen)
    b = subject.build(case, device=device, dtype=dtype, gen=gen)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    inputs = kind.inputs(subject.spec, case, dtype, device, gen)
    assert_close(
        _call(b, inputs), _call(a, inputs), "construct", "output after a state_dict round trip"
    )


def check_shape(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Output shape and dtype."""
    gen = _generator(seed)
    expected = subject.kind.out_shape(subject.spec, case)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    out = _call(module, subject.kind.inputs(subject.spec, case, dtype, device, gen))
    if tuple(out.shape) != expected or out.dtype != dtype:
        raise CheckFailure(f"output {tuple(out.shape)} {out.dtype}, expected {expected} {dtype}")


def _judge_gradients(case: Case) -> bool:
    """Whether gradients are compared, or only required present and finite.

    Finite only on realistic-magnitude cases: gates saturate there, and a parameter's gradient is
    a sum of large terms that cancels to a small one, which any two float formulations (float64
    included) round differently. The forward is judged on every case; gradients on the others.
    """
    return not case.realistic


def _against_reference(
    subject: Subject,
    case: Case,
    dtype: torch.dtype,
    device: str,
    gen: torch.Generator,
    *,
    check: str,
    reference: Callable[[dict[str, Tensor], Inputs], Tensor],
    plain: Callable[[dict[str, Tensor], Inputs], Tensor] | None = None,
    pick: Callable[[Any], Tensor] = output,
    training: bool = False,
) -> None:
    """The module in ``dtype`` against ``reference``, forward and every gradient: float64
    elementwise to the table's tolerance; float32, bfloat16 and float16 by the rule (error vs the
    float64 reference at most 2x the plain formulation's in that dtype, plus a small atol), finite."""
    module = subject.build(case, device=device, dtype=dtype, gen=gen).train(training)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    plain = plain or reference
    if dtype == torch.float64:
        _compare_forward_backward(
            module, inputs, reference, check, gen, pick=pick, gradients=_judge_gradients(case)
        )
        return
    _compare_by_rule(
        lambda x: pick(module(*x.args, **x.kwargs)),
        plain,
        reference,
        dict(module.named_parameters()),
        inputs,
        gen,
        f"{dtype_name(dtype)} {'train' if training else 'eval'}",
        rule_dtype=dtype,
        judge_gradients=_judge_gradients(case),
        buffers=_buffers(module),
    )


def check_reference(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Forward and backward (input and parameter gradients) equal the independent reference:
    float64 to ~1e-7; float32, float16 and bfloat16 by the FlashAttention rule, all finite."""
    kind, spec = subject.kind, subject.spec
    _against_reference(
        subject,
        case,
        dtype,
        device,
        _generator(seed),
        check="reference",
        reference=lambda p, x: kind.reference(spec, p, x),
        plain=lambda p, x: kind.plain(spec, p, x),
    )


def check_train(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """In training mode, forward and backward equal the reference's training-mode function."""
    kind, spec = subject.kind, subject.spec
    _against_reference(
        subject,
        case,
        dtype,
        device,
        _generator(seed),
        check="train",
        reference=lambda p, x: kind.reference(spec, p, x, training=True),
        training=True,
    )


def check_anchor(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Equals each of the kind's anchors (F.scaled_dot_product_attention, nn.MultiheadAttention ...)."""
    gen = _generator(seed)
    ran = False
    for anchor in subject.kind.anchors(subject.spec):
        if not anchor.applies(case):
            continue
        base = subject.build(case, device=device, dtype=dtype, gen=gen)
        module, fn = anchor.make(base, case, device, gen)
        inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
        try:
            _compare_forward_backward(
                module,
                inputs,
                fn,
                "anchor",
                gen,
                parameters=anchor.same_parameters,
            )
        except CheckFailure as exc:
            raise CheckFailure(f"against {anchor.name}: {exc}") from None
        ran = True
    if not ran:
        raise CheckSkipped(f"no anchor of {subject.spec.kind} applies to case {case.name}")


def check_gradcheck(
    subject: Subject,
    case: Case,
    dtype: torch.dtype,
    device: str,
    seed: int,
    gradcheck: str = "fast",
    **_: Any,
) -> None:
    """torch.autograd.gradcheck in float64 over the inputs and every parameter (tiny shapes)."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
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


def _sample0(name: str, mask: Tensor) -> Tensor:
    """A mask for sample 0 alone: padding masks and 4-d masks carry a batch dim, (Lq, Lk) ones do not."""
    return mask[:1] if name == "key_padding_mask" or mask.ndim == 4 else mask


def check_layout(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Non-contiguous and channels_last inputs give the same result; batch samples are independent."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    expected = _call(module, inputs)
    assert_close(
        _call(module, inputs.map(_non_contiguous)), expected, "layout", "non-contiguous input"
    )
    x = inputs.args[0]
    if subject.kind.channels_last and x.ndim in (4, 5):
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


def check_gate_bound(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """A gated block never increases |x| anywhere (gates lie in [0, 1])."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    x = subject.kind.inputs(subject.spec, case, dtype, device, gen).args[0] * 10
    out = module(x)
    grew = out.abs() > x.abs()
    if grew.any():
        i = tuple(grew.nonzero()[0].tolist())
        raise CheckFailure(
            f"|output| > |x| at {int(grew.sum())} elements; first at {i}: {out[i].item():.6g} from {x[i].item():.6g}"
        )


def check_permutation(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Permuting keys and values together leaves the output unchanged (no positional leak)."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    q, k, v = inputs.args
    dim = subject.kind.seq_dims(subject.spec, inputs)[1]
    perm = torch.randperm(k.shape[dim], generator=gen).to(device)
    permuted = Inputs([q, k.index_select(dim, perm), v.index_select(dim, perm)])
    assert_close(
        _call(module, permuted),
        _call(module, inputs),
        "permutation",
        "output with keys and values permuted",
    )


def check_causal(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Causal: the output at query i does not depend on later queries, nor on keys it may not see."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    qdim, kdim = subject.kind.seq_dims(subject.spec, inputs)
    lq, lk = inputs.args[0].shape[qdim], inputs.args[1].shape[kdim]
    cut = max(1, lq // 2)
    key_cut = cut + (lk - lq if subject.kind.causal(subject.spec) == "bottom_right" else 0)
    if not 0 < key_cut < lk:
        raise CheckSkipped(f"case {case.name} leaves no key after query {cut} to change")
    changed = inputs.map(lambda t: t.clone())
    q, k, v = changed.args
    for a, dim, start in ((q, qdim, cut), (k, kdim, key_cut), (v, kdim, key_cut)):
        part = a.narrow(dim, start, a.shape[dim] - start)
        part.copy_(torch.randn(part.shape, generator=gen, dtype=torch.float64))  # CPU draw
    before = _call(module, inputs).narrow(qdim, 0, cut)
    after = _call(module, changed).narrow(qdim, 0, cut)
    assert_close(
        after,
        before,
        "causal",
        f"outputs 0..{cut - 1} when queries >= {cut} and keys >= {key_cut} change",
    )


def check_masked_keys(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Masked keys (bool and -inf float masks) have no influence on the output."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    dim = subject.kind.seq_dims(subject.spec, inputs)[1]
    masked = torch.zeros(inputs.args[1].shape[dim], dtype=torch.bool, device=device)
    masked[1::2] = True
    index = masked.nonzero().flatten()
    for fill in ("bool", "float"):
        base = subject.kind.mask_keys(subject.spec, inputs, masked, fill)
        changed = base.map(lambda t: t.clone())
        for a in changed.args[1:]:
            noise = torch.randn(
                a.index_select(dim, index).shape, generator=gen, dtype=torch.float64
            )
            a.index_copy_(dim, index, noise.to(a) * 5)
        assert_close(
            _call(module, changed),
            _call(module, base),
            "masked_keys",
            f"output when masked keys change ({fill} mask)",
        )


def check_masked_row(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """A query whose keys are all masked gets the documented result (zeros before any output
    projection), never NaN; so do its gradients."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = _float_leaves(subject.kind.inputs(subject.spec, case, dtype, device, gen))
    dim = subject.kind.seq_dims(subject.spec, inputs)[1]
    every = torch.ones(inputs.args[1].shape[dim], dtype=torch.bool, device=device)
    for fill in ("bool", "float"):
        masked = subject.kind.mask_keys(subject.spec, inputs, every, fill)
        out = _call(module, masked)
        if not torch.isfinite(out).all():
            raise CheckFailure(f"fully masked rows ({fill} mask) give non-finite outputs")
        expected = subject.kind.masked_row_output(subject.spec, module, out)
        assert_close(out, expected, "masked_row", f"output of fully masked rows ({fill} mask)")
        grads = torch.autograd.grad(
            out.sum(), [a for a in inputs.args if a.requires_grad], allow_unused=True
        )
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            raise CheckFailure(f"fully masked rows ({fill} mask) give non-finite gradients")


def check_weights(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Returned attention weights (the explicit path) equal the reference's, forward and backward."""
    kind, spec = subject.kind, subject.spec

    def expected(p: dict[str, Tensor], x: Inputs) -> Tensor:
        weights = kind.reference_weights(spec, p, x)
        assert weights is not None
        return weights

    _against_reference(
        subject,
        case,
        dtype,
        device,
        _generator(seed),
        check="weights",
        reference=expected,
        pick=lambda r: r[1],
    )


def check_dropout(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Dropout acts in training only: two training calls differ, eval calls are equal and deterministic."""
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    evaluated = _call(module, inputs)
    assert_close(_call(module, inputs), evaluated, "dropout", "second call in eval mode")
    state = {**_buffers(module), **dict(module.named_parameters())}
    expected = subject.kind.reference(subject.spec, state, inputs)
    assert_close(evaluated, expected, "dropout", "eval output vs the dropout-free reference")
    module.train()
    first, second = _call(module, inputs), _call(module, inputs)
    if torch.equal(first, second) or torch.equal(first, evaluated):
        raise CheckFailure("training-mode calls do not differ: dropout is not applied")


def check_compile(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """``torch.compile(fullgraph=True)`` (aot_eager: Dynamo and AOTAutograd, no code generation)
    equals eager, forward and backward; a graph break fails."""
    _compiled(subject, case, dtype, device, seed, backend="aot_eager")


def check_inductor(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """``torch.compile(fullgraph=True)`` with the inductor backend (generated C++/Triton) equals eager."""
    from torch._inductor import cpp_builder

    if device == "cpu" and not cpp_builder.get_cpp_compiler():  # pragma: no cover - depends on host
        raise CheckSkipped("no C++ compiler: inductor cannot build CPU kernels here")
    _compiled(subject, case, dtype, device, seed, backend="inductor")


def _compiled(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, *, backend: str
) -> None:
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = subject.kind.inputs(subject.spec, case, dtype, device, gen)
    # A fresh Dynamo cache: the verdict must not depend on which cases this process compiled before
    # (recompile limits, cached guards), whatever order xdist hands the tests out in.
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    try:
        _compare_forward_backward(
            module, inputs, lambda _, x: _call(compiled, x), "compile", gen, parameters=False
        )
    except CheckFailure as exc:
        raise CheckFailure(f"{backend} vs eager: {exc}") from None
    except Exception as exc:  # Dynamo reports a graph break or an untraceable op this way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckFailure(
            f"torch.compile(fullgraph=True, backend={backend!r}): {type(exc).__name__}: {first}"
        ) from None


def _export_cases(subject: Subject) -> list[Case]:
    """The first unmasked case whose dynamic dims are all at least the kind's ``export_min`` (2:
    0/1 sizes are specialised)."""
    kind, spec = subject.kind, subject.spec
    for case in kind.cases(spec):
        dims = kind.dynamic_dims(spec, case)
        if (
            not case.masks
            and not case.realistic
            and all(
                case.shapes[i][d] >= kind.export_min(spec, n)
                for i, named in enumerate(dims)
                for d, n in named.items()
            )
        ):
            return [case]
    return []


def check_export(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """``torch.export.export`` with every batch, spatial and sequence dim dynamic; the exported
    program equals eager on the traced shape and on a second, different one."""
    kind, spec = subject.kind, subject.spec
    named = kind.dynamic_dims(spec, case)
    names = sorted({n for dims in named for n in dims.values()})
    # The second shape: every dynamic dim grown by a different amount (batch 2 -> 3, ...).
    grow = {n: 1 + i for i, n in enumerate(names)}
    other = dataclasses.replace(
        case,
        name=case.name + "_other",
        masks=(),
        magnitudes=(),
        shapes=tuple(
            tuple(s + grow[named[i][d]] if d in named[i] else s for d, s in enumerate(shape))
            for i, shape in enumerate(case.shapes)
        ),
    )
    gen = _generator(seed)
    module = subject.build(case, device=device, dtype=dtype, gen=gen)
    inputs = kind.inputs(spec, case, dtype, device, gen)
    symbols = {n: torch.export.Dim(n, min=kind.export_min(spec, n), max=4096) for n in names}
    dynamic = [{d: symbols[n] for d, n in dims.items()} for dims in named]
    try:
        program = torch.export.export(module, tuple(inputs.args), dynamic_shapes=dynamic)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckFailure(
            f"torch.export with dynamic dims {names}: {type(exc).__name__}: {first}"
        ) from None
    exported = program.module()
    for c in (case, other):
        x = inputs if c is case else kind.inputs(spec, other, dtype, device, gen)
        with torch.no_grad():
            assert_close(
                _call(exported, x),
                _call(module, x),
                "export",
                f"exported program on {[tuple(a.shape) for a in x.args]}",
            )


def check_autocast(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """Under ``torch.autocast(dtype)`` a float32 module returns the documented dtype (the input's for
    gating blocks, the autocast dtype for attention), within the rule of the plain formulation under
    autocast, forward and input gradients, all finite."""
    gen = _generator(seed)
    kind, spec = subject.kind, subject.spec
    module = subject.build(case, device=device, dtype=torch.float32, gen=gen)
    inputs = kind.inputs(spec, case, torch.float32, device, gen)
    expected_dtype = torch.float32 if kind.autocast_keeps_dtype else dtype

    def under_autocast(fn: Callable[[], Tensor]) -> Tensor:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            return fn()

    out = under_autocast(lambda: _call(module, inputs))
    if out.dtype != expected_dtype:
        raise CheckFailure(
            f"under autocast({dtype_name(dtype)}): output {out.dtype}, expected {expected_dtype} "
            f"({'the input dtype: the block ends in x * gate' if kind.autocast_keeps_dtype else 'the autocast dtype: the block ends in a projection or SDPA'})"
        )
    _compare_by_rule(
        lambda x: under_autocast(lambda: _call(module, x)),
        lambda p, x: under_autocast(lambda: kind.plain(spec, p, x)),
        lambda p, x: kind.reference(spec, p, x),
        {n: p for n, p in module.named_parameters()},
        inputs,
        gen,
        f"autocast({dtype_name(dtype)})",
        rule_dtype=dtype,
        judge_gradients=_judge_gradients(case),
        buffers=_buffers(module),
    )


def check_errors(
    subject: Subject, case: Case, dtype: torch.dtype, device: str, seed: int, **_: Any
) -> None:
    """A bad construction or input from the kind's error-input list raises the documented ValueError."""
    import re

    error = next(e for e in subject.kind.error_inputs(subject.spec) if e.name == case.name)
    cls = subject.factory.__name__ if isinstance(subject.factory, type) else "?"
    pattern = error.match.replace("{cls}", re.escape(cls))
    try:
        error.call(subject.factory, device)
    except ValueError as exc:
        if not re.search(pattern, str(exc)):
            raise CheckFailure(
                f"{case.name}: ValueError {str(exc)!r} does not match {pattern!r}"
            ) from None
        return
    except Exception as exc:
        raise CheckFailure(
            f"{case.name}: raised {type(exc).__name__}: {str(exc)[:200]}, expected a ValueError matching {pattern!r}"
        ) from None
    raise CheckFailure(f"{case.name}: no error raised, expected a ValueError matching {pattern!r}")


def check_parity(
    subject: Subject,
    case: Case,
    dtype: torch.dtype,
    device: str,
    seed: int,
    target: str = "cuda",
    **_: Any,
) -> None:
    """CPU vs CUDA with the same weights and inputs, forward and backward, TF32 off.

    Judged by the FlashAttention rule: the error against the CPU module in float64 at most 2x the
    plain formulation's (the kind's, timm's for gating blocks) in the same dtype on the same device,
    plus a small atol.
    """
    if target == "cuda" and not torch.cuda.is_available():
        raise CheckSkipped(
            "no CUDA device: CPU vs CUDA parity needs one (run with --attnforge-devices cpu,cuda on a GPU machine)"
        )
    kind, spec = subject.kind, subject.spec
    gen = _generator(seed)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = subject.build(case, dtype=torch.float64, gen=gen)
        on_target = subject.build(case, device=target, dtype=dtype)
        on_target.load_state_dict(cpu.state_dict())
        inputs = kind.inputs(spec, case, dtype, target, gen)
        if dtype != torch.float64:
            _compare_by_rule(
                lambda x: _call(on_target, x),
                lambda p, x: kind.plain(spec, p, x),
                lambda p, x: _functional(cpu, p, x),
                dict(on_target.named_parameters()),
                inputs,
                gen,
                f"{target} {dtype_name(dtype)}",
                rule_dtype=dtype,
                judge_gradients=_judge_gradients(case),
                buffers=_buffers(on_target),
            )
            return
        _compare_forward_backward(
            on_target,
            inputs,
            lambda p, x: _functional(cpu, p, x.map(lambda t: t.cpu())),
            "parity",
            gen,
            ref_dtype=torch.float64,
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


# ---------------------------------------------------------------------------------------------------
# Which checks apply to a spec, over which cases and dtypes.

CaseList = Callable[[Subject], list[Case]]
Applies = Callable[[Kind[Any], AnySpec], bool]
F64 = (torch.float64,)
F32 = (torch.float32,)
EXACT = (torch.float64, torch.float32)


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[..., None]
    applies: Applies
    cases: CaseList
    dtypes: tuple[torch.dtype, ...]
    on_devices: bool = True  # False: the check picks its own device (parity: CUDA)
    cuda_dtypes: tuple[torch.dtype, ...] | None = None  # on CUDA, if they differ
    quick_cases: CaseList | None = None  # at depth "quick" (large sweeps), if fewer


def _all(subject: Subject) -> list[Case]:
    return subject.kind.cases(subject.spec)


def _first(subject: Subject) -> list[Case]:
    return subject.kind.cases(subject.spec)[:1]


def _unmasked(subject: Subject) -> list[Case]:
    return [c for c in subject.kind.cases(subject.spec) if not c.masks][:1]


def _tiny(subject: Subject) -> list[Case]:
    return [subject.kind.tiny(subject.spec)]


def _anchored(subject: Subject) -> list[Case]:
    anchors = subject.kind.anchors(subject.spec)
    return [c for c in _all(subject) if any(a.applies(c) for a in anchors)]


def _errors(subject: Subject) -> list[Case]:
    return [Case(e.name, (), ()) for e in subject.kind.error_inputs(subject.spec)]


def _always(kind: Kind[Any], spec: AnySpec) -> bool:
    return True


def _attention(kind: Kind[Any], spec: AnySpec) -> bool:
    return kind.attention


def _deterministic_training(kind: Kind[Any], spec: AnySpec) -> bool:
    return kind.dropout(spec) == 0


CHECKS: dict[str, Check] = {
    c.name: c
    for c in (
        Check("construct", check_construct, _always, _first, ALL_DTYPES),
        Check("shape", check_shape, _always, _all, ALL_DTYPES),
        Check("reference", check_reference, _always, _all, ALL_DTYPES),
        Check("train", check_train, _deterministic_training, _first, F64),
        Check("anchor", check_anchor, lambda k, s: bool(k.anchors(s)), _anchored, F64),
        Check("gradcheck", check_gradcheck, _always, _tiny, F64),
        Check("layout", check_layout, _always, _first, EXACT),
        Check("gate_bound", check_gate_bound, lambda k, s: k.gated(s), _all, ALL_DTYPES),
        Check(
            "permutation",
            check_permutation,
            lambda k, s: k.permutation_invariant(s),
            _unmasked,
            EXACT,
        ),
        Check("causal", check_causal, lambda k, s: k.causal(s) is not None, _unmasked, ALL_DTYPES),
        Check("masked_keys", check_masked_keys, _attention, _unmasked, ALL_DTYPES),
        Check("masked_row", check_masked_row, _attention, _unmasked, ALL_DTYPES),
        Check("weights", check_weights, lambda k, s: k.returns_weights(s), _all, EXACT),
        Check("dropout", check_dropout, lambda k, s: k.dropout(s) > 0, _unmasked, F64),
        # Every case in the catalogue; a large sweep compiles each variant's first case (each
        # compile costs ~0.3 s, Dynamo and AOTAutograd tracing afresh).
        Check("compile", check_compile, _always, _all, F32, quick_cases=_first),
        Check("export", check_export, _always, _export_cases, F32),
        Check(
            "autocast",
            check_autocast,
            _always,
            _all,
            (torch.bfloat16,),
            cuda_dtypes=(torch.float16,),
        ),
        Check("errors", check_errors, _always, _errors, F32),
        Check(
            "parity",
            check_parity,
            _always,
            _first,
            (torch.float32, torch.float16, torch.bfloat16),
            on_devices=False,
        ),
    )
}
# Not in the default plan: the sweep's representative inductor run (``--attnforge-checks inductor``).
EXTRA_CHECKS: dict[str, Check] = {
    "inductor": Check("inductor", check_inductor, _always, _first, F32),
}


DEPTHS = ("full", "quick")


def plan(
    subject: Subject,
    devices: list[str],
    checks: Sequence[str] | None = None,
    depth: str = "full",
) -> list[tuple[str, str, torch.dtype, str]]:
    """Every (check, case, dtype, device) that applies to ``subject``, in a stable order.

    ``depth`` "quick" takes fewer cases where a check says so (``Check.quick_cases``).
    """
    out = []
    table = CHECKS if checks is None else {n: {**CHECKS, **EXTRA_CHECKS}[n] for n in checks}
    for check in table.values():
        if not check.applies(subject.kind, subject.spec):
            continue
        cases = check.quick_cases if depth == "quick" and check.quick_cases else check.cases
        for case in cases(subject):
            for device in devices if check.on_devices else ["cuda"]:
                dtypes = (
                    check.cuda_dtypes if device == "cuda" and check.cuda_dtypes else check.dtypes
                )
                for dtype in dtypes:
                    if dtype in subject.kind.dtypes:
                        out.append((check.name, case.name, dtype, device))
    return out


def find_case(subject: Subject, check: str, case: str) -> Case:
    spec = {**CHECKS, **EXTRA_CHECKS}[check]
    chosen = next((c for c in spec.cases(subject) if c.name == case), None)
    if chosen is None:
        raise KeyError(f"check {check!r} has no case {case!r} for {subject.spec.name}")
    return chosen


def run(
    check: str,
    subject: Subject,
    case: str,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int | None = None,
    **options: Any,
) -> None:
    """Run one check on one case; raises CheckFailure or CheckSkipped."""
    spec = {**CHECKS, **EXTRA_CHECKS}[check]
    if device == "cuda" and spec.on_devices and not torch.cuda.is_available():
        raise CheckSkipped("no CUDA device available")
    chosen = find_case(subject, check, case)
    if seed is None:
        seed = seed_of(f"{subject.spec.name}-{check}-{case}-{dtype_name(dtype)}")
    # Inputs and parameters come from explicit generators; the global RNGs only feed dropout.
    # Not torch.manual_seed: without CUDA initialised it queues lazy seeds for every accelerator
    # backend, formatting a stack trace each time (1.5 ms a call, half a sweep's time here).
    torch.default_generator.manual_seed(seed)
    if (device == "cuda" or check == "parity") and torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    spec.fn(subject, chosen, dtype, device, seed, **options)
