"""Comparison and tolerances: the one table, and the two ways a result is judged.

- ``assert_close``: elementwise against an expected tensor, with the tolerance of the check and of the
  dtype under test (``TOLERANCES``). float64 results are held to the references almost exactly.
- ``assert_within_rule``: float32 and half precision by the FlashAttention rule. The error of the result against
  a float64 reference may be at most ``FACTOR`` times the error of the plain formulation computed in
  the same low precision (the yardstick), plus a small atol from the table. The result must be finite
  wherever the float64 reference is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class CheckFailure(AssertionError):
    """A check found the module wrong; the message says what, where and by how much."""


class CheckSkipped(Exception):
    """A check cannot run here (no CUDA device, say); the message is the reason."""


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float


# The one tolerance table: (check, dtype) -> Tol, with per-dtype defaults under check "*".
# float64 comparisons differ only by summation order; float32 by kernel choice (TF32 off);
# float16 / bfloat16 defaults are torch.testing's (rtol 1e-3 / 1.6e-2) for comparisons of two
# computations in the same low precision (layout, properties, compile against eager).
TOLERANCES: dict[tuple[str, torch.dtype], Tol] = {
    ("*", torch.float64): Tol(rtol=1e-7, atol=1e-10),
    ("*", torch.float32): Tol(rtol=1e-5, atol=1e-6),
    ("*", torch.float16): Tol(rtol=1e-3, atol=1e-3),
    ("*", torch.bfloat16): Tol(rtol=1.6e-2, atol=1e-2),
    ("construct", torch.float64): Tol(rtol=0.0, atol=0.0),  # a state_dict round trip is exact
    ("construct", torch.float32): Tol(rtol=0.0, atol=0.0),
    ("construct", torch.float16): Tol(rtol=0.0, atol=0.0),
    ("construct", torch.bfloat16): Tol(rtol=0.0, atol=0.0),
    # The FlashAttention rule: |low - ref64| <= rtol * |plain_low - ref64| + atol * scale * sqrt(n),
    # in L2 norms; rtol is the factor, atol an error per element in units of the result's scale.
    ("rule", torch.float32): Tol(rtol=2.0, atol=1e-6),
    ("rule", torch.float16): Tol(rtol=2.0, atol=1e-3),
    ("rule", torch.bfloat16): Tol(rtol=2.0, atol=1e-2),
}


def tolerance(check: str, dtype: torch.dtype) -> Tol:
    return TOLERANCES.get((check, dtype)) or TOLERANCES[("*", dtype)]


def assert_close(actual: Tensor, expected: Tensor, check: str, what: str) -> None:
    """Elementwise ``|a - e| <= atol * scale + rtol * |e|``, the tolerance of ``check`` at ``actual``'s
    dtype. ``scale`` is the expected tensor's largest magnitude (at least 1): an absolute tolerance
    in the tensor's own units, so that elements that cancel to near zero in a tensor of large values
    (gradients on realistic-magnitude inputs) are held to the precision the others carry."""
    if actual.shape != expected.shape:
        raise CheckFailure(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    tol = tolerance(check, actual.dtype)  # the precision under test decides
    a, e = actual.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu()
    if not torch.equal(a.isnan(), e.isnan()):
        raise CheckFailure(f"{what}: NaN where the expected value has none (or the reverse)")
    finite = e[torch.isfinite(e)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    bad = (a - e).abs() > tol.atol * scale + tol.rtol * e.abs()
    bad &= ~(a.isinf() & (a == e))  # equal infinities (masked scores) agree
    if bad.any():
        err = (a - e).abs().nan_to_num(0).max().item()
        i = tuple(bad.nonzero()[0].tolist())
        raise CheckFailure(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond rtol={tol.rtol}, atol={tol.atol} x {scale:.3g}; "
            f"max abs error {err:.3g}; first at {i}: {a[i].item():.6g} vs expected {e[i].item():.6g}"
        )


def assert_within_rule(
    got: Tensor,
    plain: Tensor,
    ref64: Tensor,
    what: str,
    *,
    dtype: torch.dtype,
    scale: float | None = None,
) -> None:
    """The FlashAttention rule for a low-precision ``got`` (module) and ``plain`` (the yardstick):
    ``|got - ref64| <= FACTOR * |plain - ref64| + atol * scale * sqrt(n)``, and ``got`` finite
    wherever ``ref64`` is.

    Errors are L2 norms over the tensor, not the largest element: at realistic magnitudes a gate's
    sigmoid or a softmax saturates, and the few elements on its steep part, or a max whose winner
    rounding flips (its gradient then moves to another element), differ by chance between two
    correct formulations; a missing term, a wrong precision or an overflow moves the whole norm.
    ``dtype`` is the precision at work (under autocast the output may be wider); ``scale`` is the
    per-element unit of the atol (default: the largest |ref64|, at least 1; gradients pass the
    largest gradient of the whole backward pass, since a parameter's gradient that cancels to near
    zero is as precise as the terms it sums).
    """
    if got.shape != ref64.shape:
        raise CheckFailure(f"{what}: shape {tuple(got.shape)}, expected {tuple(ref64.shape)}")
    g, p, r = (t.detach().to(torch.float64).cpu() for t in (got, plain, ref64))
    finite = torch.isfinite(r)
    if not torch.isfinite(g[finite]).all():
        n = int((~torch.isfinite(g) & finite).sum())
        raise CheckFailure(
            f"{what}: {n} of {g.numel()} {_dtype_name(dtype)} values are inf or NaN where the "
            "float64 reference is finite (an overflow?)"
        )
    if not torch.isfinite(p[finite]).all():
        # The yardstick itself overflowed: the rule would accept anything. A harness bug.
        raise CheckFailure(
            f"{what}: the plain reference overflows in {_dtype_name(dtype)}; the rule has no yardstick"
        )
    if not finite.any():
        return
    tol = tolerance("rule", dtype)
    g, p, r = g[finite], p[finite], r[finite]
    unit = max(1.0, r.abs().max().item()) if scale is None else scale
    err, yard = (g - r).norm().item(), (p - r).norm().item()
    bound = tol.rtol * yard + tol.atol * unit * r.numel() ** 0.5
    if err > bound:
        raise CheckFailure(
            f"{what}: {_dtype_name(dtype)} error {err:.3g} (L2) vs float64 exceeds {tol.rtol}x the "
            f"plain formulation's ({yard:.3g}) + atol = {bound:.3g}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
