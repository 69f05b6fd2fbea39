"""The sweep: a scratch catalogue, the committed one untouched, a summary that names failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import sweep
from harness.generate import ROOT, OutputError


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.py"))}


def test_a_small_sweep_end_to_end(tmp_path: Path):
    specs = tmp_path / "mine"
    specs.mkdir()
    (specs / "s.yaml").write_text(
        "variants:\n"
        "  - name: tiny_k{kernel_size}\n"
        "    kind: spatial\n"
        "    matrix: {kernel_size: [1, 3]}\n"
    )
    committed = _tree(ROOT / "generated")
    out = tmp_path / "results"
    assert sweep.run([specs], out, workers="0", shard=None, variants="*", pytest_args=[]) == 0
    assert _tree(ROOT / "generated") == committed
    text = (out / "summary.md").read_text()
    assert "- specs: " in text and "2 variants" in text and "0 failed" in text
    assert "| tiny_k3 |" in text
    assert (out / "sweep_catalogue" / "tiny_k1.py").exists()
    outcomes = sweep.read_junit(out / "sweep.xml")
    assert {o.variant for o in outcomes} == {"tiny_k1", "tiny_k3"}
    assert {o.status for o in outcomes} <= {"passed", "skipped"}


def test_summary_lists_each_failure_with_its_reproduction(tmp_path: Path):
    outcomes = [
        sweep.Outcome("se_a-reference-b2", "failed", 0.5, "forward: 3 of 9 elements differ"),
        sweep.Outcome("se_a-shape-b2", "passed", 0.1, ""),
        sweep.Outcome("se_a-parity-float16", "skipped", 0.0, "no CUDA device"),
    ]
    text = sweep.summary(
        outcomes, specs="specs/sweeps", catalogue=tmp_path / "cat", wall=1.0, workers="2"
    )
    assert "**1 passed, 1 failed, 1 skipped**" in text
    assert "- `se_a-reference-b2`: forward: 3 of 9 elements differ" in text
    assert "-k se_a-reference-b2`" in text and "--catalogue" in text
    assert (
        "| se_a | - | FAIL 0/1 | 1/1 |" not in text
    )  # columns are sorted: parity, reference, shape
    assert "| se_a | 0/1 | FAIL 0/1 | 1/1 |" in text


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
