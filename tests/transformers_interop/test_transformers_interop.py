"""Real transformers: spec_from_transformers -> generate -> from_transformers equals the attention
module of Llama (RoPE, grouped-query), Mistral and Qwen 2 (sliding window), Gemma 2 (soft-capping,
its query_pre_attn_scalar scale, alternating sliding layers) and BLOOM (ALiBi, fused projection),
in float64, forward and backward, eval and train. The transformers side runs as its model runs it:
rotary embeddings from the family's own RotaryEmbedding, masks from transformers.masking_utils,
ALiBi from BLOOM's build_alibi_tensor.

Tolerances: every family's RotaryEmbedding computes its angles in float32 (``.float()``, autocast
off) and the eager paths cast the scores to float32 for their softmax (``softmax(...,
dtype=torch.float32)``), so the transformers side carries float32 rounding (~1e-7 relative) even on
float64 inputs; BLOOM computes its ALiBi slopes in float32 too. The bound is 1e-6 (float32's
epsilon is 1.2e-7); a wrong rotation, window or slope order errs by 1e-2 or more (the mismatch
tests below, and tests/test_teeth.py for the harness's own checks). A bias's gradient is measured
on the scale of its layer's weight gradient: k_proj.bias's is zero in exact arithmetic without
rotary embeddings (softmax ignores a shift shared by every key), so its own scale is rounding noise.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import attnforge
from attnforge import Catalogue
from attnforge.generate import generate
from attnforge.transformers_interop import layout

transformers = pytest.importorskip(
    "transformers",
    reason="transformers is not installed: `tox -e transformers` runs these (a test dependency only)",
)
from transformers import masking_utils  # noqa: E402
from transformers.models.bloom import modeling_bloom  # noqa: E402
from transformers.models.gemma2 import modeling_gemma2  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.mistral import modeling_mistral  # noqa: E402
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402

FAMILIES: dict[str, tuple[Any, Any, Any, Any]] = {
    # family: (config class, attention class, rotary embedding class, module of the family)
    "llama": (
        transformers.LlamaConfig,
        modeling_llama.LlamaAttention,
        modeling_llama.LlamaRotaryEmbedding,
        modeling_llama,
    ),
    "mistral": (
        transformers.MistralConfig,
        modeling_mistral.MistralAttention,
        modeling_mistral.MistralRotaryEmbedding,
        modeling_mistral,
    ),
    "qwen2": (
        transformers.Qwen2Config,
        modeling_qwen2.Qwen2Attention,
        modeling_qwen2.Qwen2RotaryEmbedding,
        modeling_qwen2,
    ),
    "gemma2": (
        transformers.Gemma2Config,
        modeling_gemma2.Gemma2Attention,
        modeling_gemma2.Gemma2RotaryEmbedding,
        modeling_gemma2,
    ),
    "bloom": (transformers.BloomConfig, modeling_bloom.BloomAttention, None, modeling_bloom),
}
_SMALL = {"vocab_size": 32, "intermediate_size": 32, "num_hidden_layers": 2}
# Gemma 2: sliding layers (even) and full ones (odd), a soft-cap of 5, a scale of 24 ** -0.5.
_GEMMA2 = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "sliding_window": 4,
    "attn_logit_softcapping": 5.0,
    "query_pre_attn_scalar": 24,
}
# (family, config kwargs, layer index). Sequences are 11 long: windows of 3 and 4 cut them.
CONFIGS: list[tuple[str, dict[str, Any], int]] = [
    ("llama", {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4}, 0),
    ("llama", {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2}, 0),
    ("llama", {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1}, 1),
    (
        "llama",
        {
            "hidden_size": 48,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "attention_bias": True,
            "rope_theta": 500000.0,
        },
        0,
    ),
    (
        "mistral",
        {
            "hidden_size": 64,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "sliding_window": 4,
        },
        0,
    ),
    (
        "mistral",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "sliding_window": 3,
            "head_dim": 8,
        },
        1,
    ),
    (
        "mistral",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "sliding_window": None,
        },
        0,
    ),
    # Qwen 2: q/k/v biases, none on o_proj; layer_types choose sliding or full per layer.
    (
        "qwen2",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "use_sliding_window": True,
            "sliding_window": 4,
            "layer_types": ["full_attention", "sliding_attention"],
        },
        0,
    ),
    (
        "qwen2",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "use_sliding_window": True,
            "sliding_window": 4,
            "layer_types": ["full_attention", "sliding_attention"],
        },
        1,
    ),
    (
        "qwen2",
        {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3, "rope_theta": 1e6},
        1,
    ),
    # Gemma 2: layer 0 slides, layer 1 attends fully; scale query_pre_attn_scalar ** -0.5.
    ("gemma2", _GEMMA2, 0),
    ("gemma2", _GEMMA2, 1),
    (
        "gemma2",
        {
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "sliding_window": 3,
            "attn_logit_softcapping": 2.0,
            "attention_bias": True,
        },
        0,
    ),
    # BLOOM: ALiBi slopes for 4 and 8 heads (powers of two) and 6 and 12 (interleaved extras).
    ("bloom", {"hidden_size": 32, "n_head": 4}, 0),
    ("bloom", {"hidden_size": 48, "n_head": 6}, 0),
    ("bloom", {"hidden_size": 64, "n_head": 8}, 0),
    ("bloom", {"hidden_size": 96, "n_head": 12}, 0),
]
LENGTH = 11


def _config(family: str, kwargs: dict[str, Any], implementation: str) -> Any:
    config_cls = FAMILIES[family][0]
    extra = {} if family == "bloom" else _SMALL
    config = config_cls(**extra, **kwargs, attn_implementation=implementation)
    return config


def _module(i: int, implementation: str = "eager") -> nn.Module:
    return _built(i, implementation)[0]


def _built(i: int, implementation: str = "eager") -> tuple[nn.Module, Any]:
    """Configuration ``i``'s attention module with random float64 weights, and its config."""
    family, kwargs, layer = CONFIGS[i]
    attention_cls = FAMILIES[family][1]
    config = _config(family, kwargs, implementation)
    module = attention_cls(config, layer_idx=layer)
    module = module.to(torch.float64)
    gen = torch.Generator().manual_seed(i)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.ndim > 1 else 4
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 2 * fan_in**-0.5)
    return module, config


def _name(i: int) -> str:
    return f"hf{i}_{CONFIGS[i][0]}"


@functools.cache
def _catalogue(tmp: Path) -> Catalogue:
    variants = [attnforge.spec_from_transformers(_module(i), _name(i)) for i in range(len(CONFIGS))]
    variants += _rotary_specs() + _teeth_specs()
    specs = tmp / "specs"
    specs.mkdir()
    (specs / "hf.yaml").write_text(yaml.safe_dump({"variants": variants}, sort_keys=False))
    package = tmp / "hf_catalogue"
    generate(specs, package)
    return Catalogue.at(package)


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return _catalogue(tmp_path_factory.mktemp("hf"))


def _theirs(module: nn.Module, config: Any, x: torch.Tensor) -> torch.Tensor:
    """The transformers module on hidden states ``x`` at positions 0..L-1, as its model calls it."""
    b, length, _ = x.shape
    positions = torch.arange(length)
    if type(module).__name__ == "BloomAttention":
        ones = torch.ones(b, length, dtype=torch.long)
        alibi = modeling_bloom.build_alibi_tensor(ones, module.num_heads, x.dtype)
        mask = masking_utils.create_causal_mask(config, x, ones, positions, None)
        return module(x, torch.zeros_like(x), alibi, mask)[0]
    rotary = FAMILIES[_family(module)][2](config).to(torch.float64)
    cos, sin = rotary(x, positions[None].expand(b, length))
    sliding = getattr(module, "sliding_window", None) or (
        _family(module) == "mistral" and config.sliding_window is not None
    )
    make = (
        masking_utils.create_sliding_window_causal_mask
        if sliding
        else masking_utils.create_causal_mask
    )
    mask = make(config, x, None, positions, None)
    return module(x, (cos, sin), mask)[0]


def _family(module: nn.Module) -> str:
    return next(f for f, (_, cls, _, _) in FAMILIES.items() if isinstance(module, cls))


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


# Every family through its eager path, and through SDPA where the family has one that keeps its
# semantics (BLOOM has none; Gemma 2's SDPA path drops the soft-capping, so its model uses eager).
RUNS = [
    (i, implementation)
    for i, (family, _, _) in enumerate(CONFIGS)
    for implementation in ("eager", "sdpa")
    if implementation == "eager" or family not in ("gemma2", "bloom")
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    ("i", "implementation"), RUNS, ids=[f"{_name(i)}-{impl}" for i, impl in RUNS]
)
def test_equals_transformers(
    catalogue: Catalogue, i: int, implementation: str, training: bool, errors
) -> None:
    theirs, config = _built(i, implementation)
    theirs.train(training)
    ours = attnforge.from_transformers(_name(i), theirs, catalogue=catalogue)
    assert ours.training == training
    gen = torch.Generator().manual_seed(100 + i)
    x = torch.randn(2, LENGTH, layout(theirs).embed_dim, generator=gen, dtype=torch.float64)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours, x_ours, x_ours), _theirs(theirs, config, x_theirs)
    grad = torch.randn(out_ours.shape, generator=gen, dtype=torch.float64)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    mapped = {key: get(_grads(theirs)) for key, get in layout(theirs).weights.items()}
    pairs = [("output", out_ours, out_theirs), ("input grad", x_ours.grad, x_theirs.grad)]
    pairs += [(f"{key} grad", g, mapped[key]) for key, g in _grads(ours).items()]
    scales = {what: b.abs().max() for what, _, b in pairs}
    for what, a, b in pairs:
        scale = max(scales[what], scales.get(what.replace(".bias", ".weight"), 0.0))
        err = ((a - b).abs().max() / scale).item()
        errors.append((f"{_name(i)} {implementation} {what}", err))
        assert err <= 1e-6, (
            f"{_name(i)} ({implementation}, {'train' if training else 'eval'}): {what} differs by {err:.3g}"
        )


# The comparison's teeth: each configuration's weights in a variant one option away (loaded past
# from_transformers, which would refuse it) must differ from the module by far more than the bound.
TEETH = [
    (1, "rope", "interleaved"),  # GPT-J pairs where Llama rotates halves
    (1, "rope_base", 1000.0),
    (4, "window", 5),  # Mistral's window one key too wide
    (10, "softcap", 6.0),
    (10, "scale", None),  # head_dim ** -0.5 where Gemma 2 uses query_pre_attn_scalar ** -0.5
]


def _teeth_specs() -> list[dict[str, Any]]:
    return [
        {**attnforge.spec_from_transformers(_module(i), f"teeth{n}"), field: value}
        for n, (i, field, value) in enumerate(TEETH)
    ]


@pytest.mark.parametrize("n", range(len(TEETH)), ids=[f"{_name(t[0])}-{t[1]}" for t in TEETH])
def test_a_variant_one_option_away_differs(catalogue: Catalogue, n: int) -> None:
    i = TEETH[n][0]
    theirs, config = _built(i)
    found = layout(theirs)
    ours = catalogue.build(f"teeth{n}", found.embed_dim, dtype=torch.float64)
    ours.load_state_dict({key: get(theirs.state_dict()) for key, get in found.weights.items()})
    x = torch.randn(
        2, LENGTH, found.embed_dim, generator=torch.Generator().manual_seed(n), dtype=torch.float64
    )
    with torch.no_grad():
        a, b = ours(x, x, x), _theirs(theirs, config, x)
    assert ((a - b).abs().max() / b.abs().max()).item() > 1e-3


def test_a_variant_that_differs_is_named(catalogue: Catalogue) -> None:
    """A Mistral layer does not load into a variant without its window, nor a Gemma 2 full layer
    into its sliding sibling: the error names each differing option."""
    mistral = next(i for i, c in enumerate(CONFIGS) if c[0] == "mistral")
    llama = next(
        i for i, c in enumerate(CONFIGS) if c[0] == "llama" and c[1]["num_attention_heads"] == 8
    )
    with pytest.raises(
        ValueError,
        match=r"^hf\d+_llama does not match MistralAttention: .*window: None here, 4 in the module",
    ):
        attnforge.from_transformers(_name(llama), _module(mistral), catalogue=catalogue)
    sliding, full = (
        i for i, c in enumerate(CONFIGS) if c[0] == "gemma2" and c[1]["sliding_window"] == 4
    )
    with pytest.raises(ValueError, match=r"window: 4 here, None in the module"):
        attnforge.from_transformers(_name(sliding), _module(full), catalogue=catalogue)


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        (
            "llama",
            {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
            r"rope_scaling 'linear' is not supported",
        ),
        ("llama", {"partial_rotary_factor": 0.5}, r"partial_rotary_factor 0.5 is not supported"),
        ("llama", {"pretraining_tp": 2}, r"pretraining_tp 2 is not supported"),
    ],
)
def test_what_the_spec_cannot_carry_is_an_error(
    family: str, kwargs: dict[str, Any], message: str
) -> None:
    config = _config(family, {"hidden_size": 32, "num_attention_heads": 4, **kwargs}, "eager")
    module = FAMILIES[family][1](config, layer_idx=0)
    with pytest.raises(ValueError, match=rf"^LlamaAttention: {message}"):
        attnforge.spec_from_transformers(module, "x")


def test_a_module_from_elsewhere_is_an_error() -> None:
    with pytest.raises(
        ValueError,
        match=r"torch.nn.modules.activation.MultiheadAttention is not a transformers attention module attnforge reads \(supported: BloomAttention, Gemma2Attention, LlamaAttention, MistralAttention, Qwen2Attention\)",
    ):
        attnforge.spec_from_transformers(nn.MultiheadAttention(8, 2), "x")


# --- rotary-embedding-torch, a second anchor for RoPE ------------------------------------------
# Its GPT-J layout (adjacent pairs rotated) over the first ``dim`` features of each head is our
# ``rope: interleaved`` with ``rope_fraction``. Our module is compared with its own projections
# rotated by ``RotaryEmbedding.rotate_queries_or_keys`` (positions 0..L-1, or shifted by
# ``offset``) and causal SDPA, in float64, forward and input gradient. rotary-embedding-torch
# computes its frequencies in float32 (``.float()``): they are recomputed in float64 by its own
# formula, so the comparison judges layout, width and offsets at 1e-10.
EMBED, HEADS, LENGTH = 48, 4, 13  # head_dim 12
# (variant, rotated features of each head, theta)
VARIANTS = [("rot_full", 12, 10000.0), ("rot_half", 6, 10000.0), ("rot_third", 4, 500.0)]


def _rotary_specs() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "kind": "mha",
            "heads": HEADS,
            "causal": True,
            "rope": "interleaved",
            "rope_base": theta,
            "rope_fraction": dim / (EMBED // HEADS),
        }
        for name, dim, theta in VARIANTS
    ]


@pytest.mark.parametrize("offset", [0, 5, 1000])
@pytest.mark.parametrize(("name", "dim", "theta"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_equals_rotary_embedding_torch(
    catalogue: Catalogue, name: str, dim: int, theta: float, offset: int, errors
) -> None:
    rotary = pytest.importorskip(
        "rotary_embedding_torch",
        reason="rotary-embedding-torch is not installed: `tox -e transformers` runs these",
    )
    gen = torch.Generator().manual_seed(dim + offset)
    ours = catalogue.build(name, EMBED, dtype=torch.float64)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen, dtype=torch.float64) * p.shape[-1] ** -0.5 * 2
            )
    x = torch.randn(2, LENGTH, EMBED, generator=gen, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(LENGTH) + offset
    mine = ours(x, x, x, positions=positions, key_positions=positions)

    rope = rotary.RotaryEmbedding(dim=dim, theta=theta, cache_if_possible=False).double()
    with torch.no_grad():
        rope.freqs.copy_(1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (HEADS, -1)).transpose(1, 2)

    q, k, v = heads(ours.q_proj(x)), heads(ours.k_proj(x)), heads(ours.v_proj(x))
    q = rope.rotate_queries_or_keys(q, offset=offset)
    k = rope.rotate_queries_or_keys(k, offset=offset)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
    theirs = ours.out_proj(out)
    upstream = torch.randn(mine.shape, generator=gen, dtype=torch.float64)
    (g_mine,) = torch.autograd.grad(mine, x, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, x, upstream)
    for what, a, b in (("output", mine, theirs), ("input grad", g_mine, g_theirs)):
        err = ((a - b).abs().max() / b.abs().max()).item()
        errors.append((f"rotary-embedding-torch {name} offset {offset} {what}", err))
        assert err <= 1e-10, f"{name} at offset {offset}: {what} differs by {err:.3g}"
