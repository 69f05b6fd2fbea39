"""A second RoPE anchor: lucidrains' rotary-embedding-torch rotates q and k in GPT-J's interleaved
layout, over the first ``dim`` features, at positions shifted by ``offset``. The generated
``mha_gptj`` (interleaved, partial) must equal SDPA over q and k rotated by it, in float64, forward
and input gradients. The tox env ``timm`` installs it beside timm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnforge

rotary_embedding_torch = pytest.importorskip(
    "rotary_embedding_torch",
    reason="rotary-embedding-torch is not installed: `tox -e timm` runs this anchor",
)


@pytest.mark.parametrize("offset", [0, 5, 1000])
# 4: the variant's rotary width; 16: the whole head (R = 2 divides by zero in its constructor).
@pytest.mark.parametrize("rotary_dim", [4, 8, 16])
def test_interleaved_rope_equals_rotary_embedding_torch(rotary_dim, offset, errors):
    gen = torch.Generator().manual_seed(rotary_dim * 7919 + offset)
    module = attnforge.build("mha_gptj", 12, dtype=torch.float64).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
    module.rotary_dim = rotary_dim  # _rotate reads it: the same code at another rotary width
    rotary = rotary_embedding_torch.RotaryEmbedding(
        dim=rotary_dim, theta=10000, cache_if_possible=False
    ).double()
    # Its frequencies are computed in float32 (then widened): recompute them in float64 by its own
    # formula, so that the comparison judges the layout, offsets and partial width at 1e-10.
    with torch.no_grad():
        exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
        rotary.freqs.copy_(1.0 / (10000.0**exponent))
    b, length, heads, head_dim = 2, 7, 4, 16
    x = torch.randn(b, length, 12, generator=gen, dtype=torch.float64, requires_grad=True)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, length, heads, head_dim).transpose(1, 2)

    q = rotary.rotate_queries_or_keys(split(module.q_proj(x)), offset=offset)
    k = rotary.rotate_queries_or_keys(split(module.k_proj(x)), offset=offset)
    attended = F.scaled_dot_product_attention(q, k, split(module.v_proj(x)), is_causal=True)
    theirs = module.out_proj(attended.transpose(1, 2).reshape(b, length, heads * head_dim))
    ours = module(x, x, x, positions=torch.arange(offset, offset + length))
    upstream = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, x, upstream)
    for what, a, e in (("forward", ours, theirs), ("input gradient", g_ours, g_theirs)):
        err = ((a - e).abs().max() / e.abs().max()).item()
        errors.append((f"rotary-embedding-torch R={rotary_dim} offset={offset} {what}", err))
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
