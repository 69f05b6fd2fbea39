"""The registry and the CLI's list: names, build, spec_of, close-match errors, a lazy index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnforge import cli, registry
from attnforge.load import load_specs
from attnforge.spec import KIND_NAMES

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
    code = "import sys, attnforge; attnforge.names(); print(sorted(m for m in sys.modules if m.startswith('attnforge.generated.') or m in ('torch', 'pydantic', 'jinja2', 'yaml')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_list_prints_name_kind_spec_file_and_description(capsys):
    assert cli.main(["list", "--kind", "sdpa"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = {
        "sdpa": "attention.yaml",
        "sdpa_causal": "attention.yaml",
        "sdpa_gemma2": "modern.yaml",
    }
    rows = [line.split()[:3] for line in lines]
    assert [row[:2] for row in rows] == [[n, "sdpa"] for n in registry.names("sdpa")]
    assert {row[0]: row[2] for row in rows}.items() >= files.items()
    assert "The tutorial's ScaledDotProductAttention" in lines[0]


def test_list_of_an_unknown_kind_says_which_kinds_exist(capsys):
    assert cli.main(["list", "--kind", "nope"]) == 5
    kinds = ", ".join(sorted({registry.spec_of(n).kind for n in registry.names()}))
    assert f"(kinds here: {kinds})" in capsys.readouterr().err


def test_show_prints_the_spec_the_file_and_the_parameter_count(capsys):
    assert cli.main(["show", "se_resnet", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert "se_resnet: channel, class SeResnet in " in out and "from se.yaml" in out
    # fc1 64 -> 4 and fc2 4 -> 64, with biases: 64 * 4 + 4 + 4 * 64 + 64
    assert "parameters at width 64: 580" in out
    assert '  - {"name": "se_resnet", "kind": "channel"' in out


def test_show_an_unknown_name_suggests_close_ones(capsys):
    assert cli.main(["show", "se_resnt"]) == 2
    assert "did you mean 'se_resnet'" in capsys.readouterr().err


def test_version(capsys):
    import attnforge

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"attnforge {attnforge.__version__}"
