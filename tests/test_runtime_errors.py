"""Bad input at run time: a ValueError naming the module, the expected and the received shape."""

from __future__ import annotations

import pytest
import torch

from harness import registry

IMAGE = [
    n
    for n in registry.names()
    if registry.default.kind_of(n) in ("channel", "spatial", "cbam", "eca")
]
SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


@pytest.mark.parametrize("name", IMAGE)
@pytest.mark.parametrize("why", ["wrong rank", "wrong channel count"])
def test_image_blocks_reject_bad_input(name, why):
    dims = registry.spec_of(name).dims
    block = registry.build(name, 8)
    cls = type(block).__name__
    shape = (2, 8, *[5] * (dims + 1)) if why == "wrong rank" else (2, 6, *[5] * dims)
    expected = rf"\(B, 8, {SPATIAL_NAMES[dims]}\)"
    with pytest.raises(
        ValueError,
        match=rf"^{cls}: expected input of shape {expected}, got \({', '.join(map(str, shape))}\)$",
    ):
        block(torch.randn(shape))


@pytest.mark.parametrize("name", IMAGE)
def test_image_blocks_reject_zero_channels(name):
    with pytest.raises(ValueError, match="channels must be >= 1, got 0"):
        registry.build(name, 0)


SDPA_BAD = [
    ({"q": (2, 4, 8), "k": (2, 6, 7), "v": (2, 6, 5)}, "expected q"),  # q/k widths differ
    ({"q": (2, 4, 8), "k": (2, 6, 8), "v": (2, 5, 5)}, "expected q"),  # k/v lengths differ
    ({"q": (2, 4, 8), "k": (6, 8), "v": (6, 5)}, "expected q"),  # ranks differ
    ({"q": (8,), "k": (8,), "v": (8,)}, "expected q"),  # rank 1
    (
        {
            "q": (2, 4, 8),
            "k": (2, 6, 8),
            "v": (2, 6, 5),
            "attn_mask": torch.ones(4, 5, dtype=torch.bool),
        },
        r"expected attn_mask broadcastable to \(\.\.\., 4, 6\), got \(4, 5\)",
    ),
    (
        {
            "q": (2, 4, 8),
            "k": (2, 6, 8),
            "v": (2, 6, 5),
            "attn_mask": torch.ones(4, 6, dtype=torch.int64),
        },
        "attn_mask must be bool or floating point, got torch.int64",
    ),
]


@pytest.mark.parametrize("name", registry.names("sdpa"))
@pytest.mark.parametrize(("inputs", "message"), SDPA_BAD)
def test_sdpa_rejects_bad_input(name, inputs, message):
    block = registry.build(name)
    args = [torch.randn(inputs[k]) for k in ("q", "k", "v")]
    with pytest.raises(ValueError, match=f"^{type(block).__name__}: {message}"):
        block(*args, attn_mask=inputs.get("attn_mask"))


@pytest.mark.parametrize("name", registry.names("mha"))
def test_mha_rejects_bad_input(name):
    heads = registry.spec_of(name).heads
    e = heads * 2
    block = registry.build(name, e, e + 1, e + 2)
    cls = type(block).__name__
    q, k, v = torch.randn(2, 3, e), torch.randn(2, 5, e + 1), torch.randn(2, 5, e + 2)
    for args, _what in [
        ((q, v, v), "key width"),
        ((q, k, k), "value width"),
        ((q[0], k[0], v[0]), "unbatched"),
        ((q, k, v[:, :4]), "key/value lengths"),
        ((q[:1], k, v), "batch sizes"),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"^{cls}: expected query \(B, Lq, {e}\), key \(B, Lk, {e + 1}\) and value \(B, Lk, {e + 2}\), got ",
        ):
            block(*args)
    with pytest.raises(
        ValueError, match=rf"^{cls}: expected key_padding_mask of shape \(2, 5\), got \(2, 4\)"
    ):
        block(q, k, v, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=rf"^{cls}: expected attn_mask of shape \(3, 5\) or \(B or 1, {heads} or 1, 3, 5\), got \(2, 3, 5\)",
    ):
        block(q, k, v, attn_mask=torch.ones(2, 3, 5, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=rf"^{cls}: key_padding_mask must be bool or floating point, got torch.int32",
    ):
        block(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.int32))
    if registry.spec_of(name).head_dim is None:
        with pytest.raises(
            ValueError, match=rf"^{cls}: embed_dim must be divisible by {heads} heads, got {e + 1}"
        ):
            registry.build(name, e + 1)


def test_from_torch_rejects_another_configuration():
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with pytest.raises(
        ValueError,
        match=r"^MhaTorch.from_torch: expected num_heads=8, .*; got num_heads=4, bias=True",
    ):
        registry.default.cls("mha_torch").from_torch(mha)  # 4 heads, not 8
