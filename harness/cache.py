"""A key/value cache for incremental decoding with the causal ``mha`` variants (torch only).

    from attnforge import KVCache
    attn = attnforge.build("mha_llama", 512)
    cache = KVCache()
    out = attn(prompt, prompt, prompt, cache=cache)          # (B, L, 512); the cache holds L tokens
    step = attn(token, token, token, cache=cache)            # (B, 1, 512): token attends to L + 1 keys

Like transformers' ``DynamicCache`` for one layer: the module appends each call's keys and values
(after RoPE, with kv_heads heads under grouped-query attention) and their positions, in place, and
attends over everything cached. Positions continue from the cache's length unless given. One cache
serves one module (one layer) and one batch of sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """The keys and values one attention module has seen, grown by ``update`` along the sequence.

    Attributes:
        key: (B, kv_heads, L, head_dim) or None while empty.
        value: (B, kv_heads, L, value_head_dim) or None while empty.
        positions: (B or 1, L) integer positions of the cached keys, or None (modules without RoPE
            or ALiBi do not record them).
    """

    def __init__(self) -> None:
        self.key: Tensor | None = None
        self.value: Tensor | None = None
        self.positions: Tensor | None = None

    @property
    def length(self) -> int:
        """How many tokens are cached."""
        return 0 if self.key is None else self.key.shape[2]

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        shape = None if self.key is None else tuple(self.key.shape)
        return f"KVCache(length={self.length}, key={shape})"

    def update(
        self, key: Tensor, value: Tensor, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append ``key`` (B, kv_heads, L, D), ``value`` (B, kv_heads, L, Dv) and their
        ``positions`` (B or 1, L); return everything cached, the new tokens last."""
        if self.key is None or self.value is None:
            self.key, self.value, self.positions = key, value, positions
            return key, value, positions
        old_k, old_v = self.key, self.value
        if (
            key.shape[:2] != old_k.shape[:2]
            or key.shape[3:] != old_k.shape[3:]
            or value.shape[:2] != old_v.shape[:2]
            or value.shape[3:] != old_v.shape[3:]
        ):
            raise ValueError(
                f"KVCache: expected keys (B, kv_heads, L, D) like the cached {tuple(old_k.shape)} "
                f"and values like {tuple(old_v.shape)}, got {tuple(key.shape)} and "
                f"{tuple(value.shape)}"
            )
        if (positions is None) != (self.positions is None):
            raise ValueError("KVCache: positions must be given on every update or on none")
        self.key = torch.cat((old_k, key), dim=2)
        self.value = torch.cat((old_v, value), dim=2)
        if positions is not None and self.positions is not None:
            b = max(positions.shape[0], self.positions.shape[0])
            self.positions = torch.cat(
                (self.positions.expand(b, -1), positions.expand(b, -1)), dim=1
            )
        return self.key, self.value, self.positions

    def reset(self) -> None:
        """Forget every cached token (a new batch of sequences)."""
        self.key = self.value = self.positions = None
