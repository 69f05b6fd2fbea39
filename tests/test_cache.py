"""attnforge.KVCache: appends in place, refuses what does not fit, resets; importing attnforge
does not import torch until KVCache is used."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attnforge
from attnforge.cache import KVCache


def test_update_appends_along_the_sequence_and_returns_everything():
    cache = KVCache()
    assert len(cache) == 0 and cache.key is None
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 5)
    assert cache.update(k, v, torch.arange(4)[None]) == (k, v, cache.positions)
    k2, v2 = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 5)
    keys, values, positions = cache.update(k2, v2, torch.tensor([[4], [9]]))
    assert torch.equal(keys, torch.cat((k, k2), 2)) and torch.equal(values, torch.cat((v, v2), 2))
    assert positions.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 9]]
    assert len(cache) == 5 and repr(cache) == "KVCache(length=5, key=(2, 3, 5, 8))"
    cache.reset()
    assert len(cache) == 0 and cache.positions is None


def test_update_refuses_what_does_not_fit():
    cache = KVCache()
    cache.update(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"^KVCache: expected keys \(B, kv_heads, L, D\) like"):
        cache.update(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 5))
    with pytest.raises(ValueError, match=r"^KVCache: positions must be given on every update"):
        cache.update(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 5), torch.arange(1)[None])


def test_kvcache_is_exported_lazily():
    assert attnforge.KVCache is KVCache
    code = "import sys, attnforge; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'KVCach'"):
        attnforge.KVCach  # noqa: B018
