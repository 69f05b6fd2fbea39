"""The registry and the CLI's list: names, build, spec_of, close-match errors, a lazy index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import cli, registry
from harness.load import load_specs
from harness.spec import KIND_NAMES

ROOT = Path(__file__).resolve().parent.parent


def test_names_are_sorted_and_filter_by_kind():
    names = registry.names()
    assert names == sorted(names) and len(names) >= 30
    assert set(registry.names("mha")) == {n for n in names if registry.default.kind_of(n) == "mha"}
    assert {registry.default.kind_of(n) for n in names} == set(KIND_NAMES)


def test_build_and_spec_of_match_the_specs():
    loaded = {v.name: v.spec for v in load_specs(ROOT / "specs")}
    assert set(loaded) == set(registry.names())
    for name, spec in loaded.items():
        assert registry.spec_of(name) == spec
    block = registry.build("se_resnet", 64, dtype=torch.float64)
    assert type(block).__name__ == "SeResnet" and block.fc1.out_channels == 4
    assert block(torch.randn(2, 64, 3, 3, dtype=torch.float64)).shape == (2, 64, 3, 3)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="did you mean 'se_resnet'"):
        registry.build("se_resnt", 8)
    with pytest.raises(KeyError, match="unknown variant 'zzz'"):
        registry.spec_of("zzz")


def test_importing_the_index_imports_no_variant():
    code = "import sys, generated, harness.registry as r; r.names(); print(sorted(m for m in sys.modules if m.startswith('generated.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_list_prints_name_kind_and_spec_file(capsys):
    assert cli.main(["list", "--kind", "sdpa"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        [n, "sdpa", "specs/attention.yaml"] for n in registry.names("sdpa")
    ]
