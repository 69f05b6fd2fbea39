"""SimAM, SGE, BAM: what the catalogue's checks do not see.

The checks draw every parameter afresh and feed inputs of random values, so they see neither the
initial values a block starts training from, nor the degenerate maps real networks produce: a
constant channel, a group of dead (all-zero) channels.
"""

from __future__ import annotations

import torch

from attnforge import registry

F64 = torch.float64


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_sge_starts_where_the_official_code_does():
    block = registry.build("sge", 128, dtype=F64)
    assert torch.equal(block.weight, torch.zeros(1, 64, 1, 1, dtype=F64))
    assert torch.equal(block.bias, torch.ones(1, 64, 1, 1, dtype=F64))
    # weight 0: every gate is sigmoid(1), whatever the input.
    x = torch.randn(2, 128, 5, 4, generator=_gen(), dtype=F64)
    torch.testing.assert_close(block(x), x * torch.sigmoid(torch.tensor(1.0, dtype=F64)))


def test_sge_dead_group_keeps_finite_gradients():
    """A group of all-zero channels (dead ReLUs) has a constant similarity map, std 0: its gate is
    sigmoid(bias), and the backward must not turn NaN (torch.std's backward is 0 where std is 0;
    a hand-written sqrt(var) would give 0 / 0)."""
    block = registry.build("sge_g8", 32, dtype=F64)
    with torch.no_grad():
        block.weight.copy_(torch.randn(block.weight.shape, generator=_gen(), dtype=F64))
        block.bias.copy_(torch.randn(block.bias.shape, generator=_gen(), dtype=F64))
    x = torch.randn(2, 32, 5, 4, generator=_gen(), dtype=F64)
    x[:, :4] = 0  # group 0: channels 0-3
    x.requires_grad_()
    out = block(x)
    torch.testing.assert_close(out[:, :4], torch.zeros_like(out[:, :4]))
    out.backward(torch.randn(out.shape, generator=_gen(), dtype=F64))
    for name, grad in (("x", x.grad), ("weight", block.weight.grad), ("bias", block.bias.grad)):
        assert grad is not None and torch.isfinite(grad).all(), f"non-finite gradient of {name}"
    # The dead group passes gradient on as x * gate would: sigmoid(bias) of group 0.
    assert x.grad[:, :4].abs().sum() > 0


def test_simam_constant_channel_gets_sigmoid_half():
    """A constant channel has no deviation and no variance: lambda keeps 0 / (4 lambda) defined, the
    gate is sigmoid(1/2) and the gradient finite."""
    block = registry.build("simam", 3, dtype=F64)
    x = torch.full((1, 3, 4, 4), 2.5, dtype=F64, requires_grad=True)
    out = block(x)
    torch.testing.assert_close(out, x.detach() * torch.sigmoid(torch.tensor(0.5, dtype=F64)))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bam_scales_x_between_one_and_two():
    """BAM returns x * (1 + sigmoid(s)), not a gate in [0, 1] (its record is not ``gated``, so the
    gate_bound check skips it): |x| <= |output| <= 2 |x| everywhere, at realistic magnitudes where
    the sigmoid saturates at both ends too."""
    for name in ("bam", "bam_product"):
        block = registry.build(name, 64, dtype=F64).eval()
        with torch.no_grad():
            for p in block.parameters():
                p.copy_(torch.randn(p.shape, generator=_gen(), dtype=F64))
        x = torch.randn(2, 64, 11, 10, generator=_gen(), dtype=F64) * 100
        ratio = block(x).detach().abs() / x.abs()
        assert ratio.min() >= 1 and ratio.max() <= 2, (name, ratio.min(), ratio.max())
        assert ratio.min() < 1.01 and ratio.max() > 1.99, "the gate never reached its ends"
