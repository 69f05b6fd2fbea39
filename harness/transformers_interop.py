"""Weight compatibility with Hugging Face transformers: describe a decoder model's attention module as
an ``mha`` spec, and load its weights into the generated variant that computes the same function.

    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention
    import attnforge
    attn = LlamaAttention(LlamaConfig(hidden_size=256, num_attention_heads=8,
                                      num_key_value_heads=2), layer_idx=0)
    attnforge.spec_from_transformers(attn, "my_llama")   # {'kind': 'mha', 'rope': 'half', ...}
    mine = attnforge.from_transformers("my_llama", attn)  # ours(x, x, x) == attn on hidden states x

The transformers module takes hidden states, rotary ``position_embeddings`` (or BLOOM's ``alibi``)
and a mask its model builds; ours takes ``(query, key, value)`` and builds the same from the spec.
For self-attention at positions 0..L-1, ``mine(x, x, x)`` equals the module run on ``x`` with
its model's causal (and sliding-window) mask. The configuration is read from the module and its
``config``; what the spec cannot carry (rotary scaling, a partial rotary factor where the family
rotates the whole head, tensor-parallel slices) is a ``ValueError`` naming it. transformers is not a
dependency: this module only reads attributes of what it is given.

Semantics follow each family's eager implementation (Gemma 2's soft-capping exists only there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from . import registry


@dataclass(frozen=True)
class Layout:
    """A transformers attention module in our vocabulary: spec fields, the embedding width, and
    where each of our parameters comes from (a state_dict key and a function of the tensor)."""

    fields: dict[str, Any]
    embed_dim: int
    weights: dict[str, Callable[[dict[str, Tensor]], Tensor]]


def _name(module: Any) -> str:
    return type(module).__name__


def _take(key: str) -> Callable[[dict[str, Tensor]], Tensor]:
    return lambda state: state[key]


def _rope(config: Any, where: str) -> dict[str, Any]:
    """RoPE with the default frequencies (theta = rope_theta) over the whole head."""
    scaling = getattr(config, "rope_scaling", None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"{where}: rope_scaling {kind!r} is not supported (the default frequencies are)"
            )
    fraction = getattr(config, "partial_rotary_factor", 1.0)
    if fraction != 1.0:
        raise ValueError(
            f"{where}: partial_rotary_factor {fraction} is not supported: this family rotates the "
            "whole head"
        )
    return {"rope": "half", "rope_base": float(config.rope_theta), "rope_fraction": 1.0}


def _projections(m: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields every Llama-style module has: q/k/v/o projections, (grouped) heads, scale."""
    config = m.config
    heads, kv_heads, head_dim = (
        config.num_attention_heads,
        config.num_key_value_heads,
        m.head_dim,
    )
    embed_dim = m.q_proj.in_features
    if getattr(config, "pretraining_tp", 1) > 1:
        raise ValueError(f"{where}: pretraining_tp {config.pretraining_tp} is not supported")
    biases = [p.bias is not None for p in (m.q_proj, m.k_proj, m.v_proj)]
    if len(set(biases)) > 1:
        raise ValueError(f"{where}: q/k/v biases differ ({biases}); the spec has one qkv_bias")
    fields: dict[str, Any] = {
        "heads": heads,
        "kv_heads": None if kv_heads == heads else kv_heads,
        "head_dim": None if head_dim * heads == embed_dim else head_dim,
        "qkv_bias": biases[0],
        "out_bias": m.o_proj.bias is not None,
        "causal": True,
        "scale": None if math.isclose(m.scaling, head_dim**-0.5, rel_tol=1e-15) else m.scaling,
        "dropout": float(config.attention_dropout),
        **_rope(config, where),
    }
    weights = {
        f"{ours}.{p}": _take(f"{theirs}.{p}")
        for ours, theirs in [
            ("q_proj", "q_proj"),
            ("k_proj", "k_proj"),
            ("v_proj", "v_proj"),
            ("out_proj", "o_proj"),
        ]
        for p in ("weight", "bias")
        if getattr(m, theirs).bias is not None or p == "weight"
    }
    return fields, weights


#: The options no transformers family here uses: a variant must leave them at these values.
_PLAIN = {
    "value_head_dim": None,
    "qk_norm": "none",
    "return_weights": "none",
    "rope": "none",
    "alibi": False,
    "window": None,
    "softcap": None,
}


def _llama_like(m: Any, window: int | None, softcap: float | None) -> Layout:
    fields, weights = _projections(m, _name(m))
    fields = (
        _PLAIN | fields | {"window": window, "softcap": None if softcap is None else float(softcap)}
    )
    return Layout(fields, m.q_proj.in_features, weights)


def _bloom(m: Any) -> Layout:
    """BLOOM: one fused query_key_value projection laid out per head as (q, k, v), ALiBi, causal."""
    if m.pretraining_tp > 1 and m.slow_but_exact:
        raise ValueError(f"{_name(m)}: pretraining_tp with slow_but_exact is not supported")
    heads, head_dim, width = m.num_heads, m.head_dim, m.hidden_size

    def part(i: int, p: str) -> Callable[[dict[str, Tensor]], Tensor]:
        def get(state: dict[str, Tensor]) -> Tensor:
            t = state[f"query_key_value.{p}"]
            return t.reshape(heads, 3, head_dim, *t.shape[1:])[:, i].flatten(0, 1)

        return get

    weights = {
        f"{name}.{p}": part(i, p)
        for i, name in enumerate(("q_proj", "k_proj", "v_proj"))
        for p in ("weight", "bias")
    }
    weights |= {"out_proj.weight": _take("dense.weight"), "out_proj.bias": _take("dense.bias")}
    fields = _PLAIN | {
        "heads": heads,
        "kv_heads": None,
        "head_dim": None,
        "qkv_bias": True,
        "out_bias": True,
        "alibi": True,
        "causal": True,
        "scale": None,
        "dropout": float(m.attention_dropout.p),
    }
    return Layout(fields, width, weights)


#: Class name -> reader. Mistral reads its window from the config (every layer slides); Qwen 2 and
#: Gemma 2 from the module (their configs alternate sliding and full layers).
CONVERTERS: dict[str, Callable[[Any], Layout]] = {
    "LlamaAttention": lambda m: _llama_like(m, None, None),
    "MistralAttention": lambda m: _llama_like(m, getattr(m.config, "sliding_window", None), None),
    "Qwen2Attention": lambda m: _llama_like(m, m.sliding_window, None),
    "Gemma2Attention": lambda m: _llama_like(m, m.sliding_window, m.attn_logit_softcapping),
    "BloomAttention": _bloom,
}


def layout(module: nn.Module) -> Layout:
    """``module`` in our vocabulary; ``ValueError`` naming what is not supported."""
    cls = type(module)
    if not cls.__module__.startswith("transformers.") or cls.__name__ not in CONVERTERS:
        supported = ", ".join(sorted(CONVERTERS))
        raise ValueError(
            f"{cls.__module__}.{cls.__name__} is not a transformers attention module attnforge "
            f"reads (supported: {supported})"
        )
    return CONVERTERS[cls.__name__](module)


def spec_from_transformers(module: nn.Module, name: str) -> dict[str, Any]:
    """The ``mha`` spec (a plain, YAML-serialisable mapping that validates) describing ``module``.

    Generating it gives a variant that ``from_transformers(name, module)`` loads the weights into.
    """
    fields = {k: v for k, v in layout(module).fields.items() if v is not None}
    spec = {"name": name, "kind": "mha", **fields}
    try:
        from .spec import validate
    except ImportError:  # pydantic absent: the mapping is still right, just not checked here
        return spec
    validate(spec)
    return spec


def from_transformers(
    name: str, module: nn.Module, catalogue: registry.Catalogue | None = None
) -> nn.Module:
    """An instance of variant ``name`` holding ``module``'s weights, in its mode.

    ``ValueError`` names every option where the variant's spec and the module differ, options the
    module does not have included (a variant with a window does not load a full-attention layer).
    """
    catalogue = catalogue or registry.default
    found = layout(module)
    ours = catalogue.spec_dict(name)
    if ours["kind"] != "mha":
        raise ValueError(f"{name} is a {ours['kind']} variant; the module is mha")
    differ = [
        f"{field}: {ours.get(field)!r} here, {value!r} in the module"
        for field, value in found.fields.items()
        if ours.get(field) != value
    ]
    if differ:
        raise ValueError(f"{name} does not match {_name(module)}: " + "; ".join(differ))
    state = module.state_dict()
    weight = state[next(iter(state))]
    block = catalogue.build(name, found.embed_dim, device=weight.device, dtype=weight.dtype)
    mine = block.state_dict()
    loaded = {key: get(state) for key, get in found.weights.items()}
    for key, tensor in loaded.items():
        if key not in mine or mine[key].shape != tensor.shape:
            have = tuple(mine[key].shape) if key in mine else "absent"
            raise ValueError(
                f"{name} at embed_dim {found.embed_dim}: {key} is {have}, {tuple(tensor.shape)} "
                f"from {_name(module)}"
            )
    block.load_state_dict(loaded, strict=True)
    return block.train(module.training)
