"""Sweeps: a scratch catalogue, the committed one untouched, a summary that names failures, and
shards that merge into one report equal to an unsharded run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from attnforge import sweep
from attnforge.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent
SMALL = (
    "variants:\n"
    "  - name: tiny_k{kernel_size}_{gate}\n"
    "    kind: spatial\n"
    "    matrix: {kernel_size: [1, 3], gate: [sigmoid, hard_sigmoid]}\n"
    "  - {name: tiny_sdpa, kind: sdpa, causal: true}\n"
)
QUICK = ["--attnforge-checks", "shape,reference,errors"]


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.py"))}


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    specs = tmp_path / "mine"
    specs.mkdir()
    (specs / "s.yaml").write_text(SMALL)
    return specs


def test_a_small_sweep_end_to_end(specs: Path, tmp_path: Path):
    committed = _tree(ROOT / "generated")
    out = tmp_path / "results"
    assert sweep.run([specs], out, workers="0", shard=None, variants="*", pytest_args=QUICK) == 0
    assert _tree(ROOT / "generated") == committed
    text = (out / "summary.md").read_text()
    assert "- specs: " in text and "5 variants" in text and "0 failed" in text
    assert "| tiny_k3_sigmoid |" in text
    assert (out / "sweep_catalogue" / "tiny_k1_sigmoid.py").exists()
    outcomes = sweep.read_junit(out / "sweep.xml")
    assert {o.variant for o in outcomes} == {
        "tiny_k1_sigmoid",
        "tiny_k1_hard_sigmoid",
        "tiny_k3_sigmoid",
        "tiny_k3_hard_sigmoid",
        "tiny_sdpa",
    }
    assert {o.status for o in outcomes} == {"passed"}
    assert "tiny_k1_sigmoid-reference-b2_c32_7x5-float16" in {o.id for o in outcomes}


def test_shards_merge_into_the_unsharded_report(specs: Path, tmp_path: Path):
    whole = tmp_path / "whole"
    assert sweep.run([specs], whole, workers="0", shard=None, variants="*", pytest_args=QUICK) == 0
    shards = [tmp_path / f"shard{i}" for i in (1, 2, 3)]
    for i, out in enumerate(shards, 1):
        assert (
            sweep.run([specs], out, workers="0", shard=f"{i}/3", variants="*", pytest_args=QUICK)
            == 0
        )
    merged = tmp_path / "merged"
    assert sweep.merge(shards, merged) == 0
    full = sweep.read_junit(whole / "sweep.xml")
    joined = sweep.read_junit(merged / "sweep.xml")
    assert sorted(o.id for o in joined) == sorted(o.id for o in full)
    assert Counter(o.status for o in joined) == Counter(o.status for o in full)
    assert all(sweep.read_junit(s / "sweep.xml") for s in shards)  # no shard empty here
    summary = (merged / "summary.md").read_text()
    assert f"{len(full)} cases" in summary and "3 shards" in summary


def test_merge_refuses_shards_that_do_not_make_one_sweep(specs: Path, tmp_path: Path):
    run = lambda out, shard, variants="*": sweep.run(  # noqa: E731
        [specs], tmp_path / out, workers="0", shard=shard, variants=variants, pytest_args=QUICK
    )
    run("a1", "1/2"), run("a2", "2/2"), run("b1", "1/3"), run("other", "2/2", variants="tiny_k*")
    with pytest.raises(sweep.MergeError, match=r"shard\(s\) 2/2 missing"):
        sweep.merge([tmp_path / "a1"], tmp_path / "m")
    with pytest.raises(sweep.MergeError, match="given more than once"):
        sweep.merge([tmp_path / "a1", tmp_path / "a1", tmp_path / "a2"], tmp_path / "m")
    with pytest.raises(sweep.MergeError, match="different splits"):
        sweep.merge([tmp_path / "a1", tmp_path / "b1"], tmp_path / "m")
    with pytest.raises(sweep.MergeError, match="a different plan"):
        sweep.merge([tmp_path / "a1", tmp_path / "other"], tmp_path / "m")
    (specs / "s.yaml").write_text(SMALL.replace("causal: true", "causal: false"))
    run("c2", "2/2")
    with pytest.raises(sweep.MergeError, match="a different catalogue"):
        sweep.merge([tmp_path / "a1", tmp_path / "c2"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_summary_lists_each_failure_with_its_reproduction(tmp_path: Path):
    outcomes = [
        sweep.Outcome(
            "se_a-reference-b2-float64", "failed", 0.5, "forward: 3 of 9 elements differ"
        ),
        sweep.Outcome("se_a-shape-b2-float64", "passed", 0.1, ""),
        sweep.Outcome("se_a-parity-b2-float16", "skipped", 0.0, "no CUDA device"),
    ]
    text = sweep.summary(
        outcomes, specs="specs/sweeps", catalogue=tmp_path / "cat", wall=1.0, workers="2"
    )
    assert "**1 passed, 1 failed, 1 skipped**" in text
    assert "- `se_a-reference-b2-float64`: forward: 3 of 9 elements differ" in text
    assert "--attnforge-catalogue" in text and "-k se_a-reference-b2-float64`" in text
    assert "| se_a | 0/1 | FAIL 0/1 | 1/1 |" in text  # columns sorted: parity, reference, shape


def test_rebuilding_a_sweep_catalogue_rewrites_nothing_and_refuses_foreign_files(tmp_path: Path):
    specs = tmp_path / "mine"
    specs.mkdir()
    (specs / "s.yaml").write_text("variants:\n  - {name: tiny_se, kind: channel}\n")
    package = sweep.build_catalogue([specs], tmp_path / "out")
    mtimes = {p: p.stat().st_mtime_ns for p in package.glob("*.py")}
    assert sweep.build_catalogue([specs], tmp_path / "out") == package
    assert {p: p.stat().st_mtime_ns for p in package.glob("*.py")} == mtimes
    assert not (specs / "schema.json").exists()
    mine = package / "notes.py"
    mine.write_text("# not generated\n")
    with pytest.raises(OutputError, match=r"notes\.py"):
        sweep.build_catalogue([specs], tmp_path / "out")
    assert mine.read_text() == "# not generated\n"
