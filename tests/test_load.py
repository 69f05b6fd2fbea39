"""Spec errors point at the file and line, all at once, exit 2, no traceback, nothing written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnforge import cli
from attnforge.load import SpecError, load_specs

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))
EXPECT = re.compile(r"# expect: (\d+): (.*)")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A copy of the committed generated/ package to (not) write into."""
    out = tmp_path / "generated"
    shutil.copytree(ROOT / "generated", out, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def test_the_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_reports_file_and_line(path: Path, tmp_path: Path, out_dir: Path, capsys):
    line, fragment = EXPECT.match(path.read_text().splitlines()[0]).groups()
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(path, specs / path.name)
    before = _snapshot(out_dir)

    assert cli.main(["generate", "--specs", str(specs), "--out", str(out_dir)]) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert re.match(rf"^\S*{re.escape(path.name)}:{line}:\d+: ", first), first
    assert fragment in err, err
    assert _snapshot(out_dir) == before  # nothing written
    assert not (specs / "schema.json").exists()


def test_exit_status_and_no_traceback_from_a_real_process(tmp_path: Path, out_dir: Path):
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("unknown_field.yaml", "python_tag.yaml"):
        shutil.copy(Path(__file__).parent / "bad_specs" / name, specs / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnforge",
            "generate",
            "--specs",
            str(specs),
            "--out",
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    # Every problem of a run, from every file, together.
    assert "python_tag.yaml:4:" in proc.stderr and "unknown_field.yaml:5:" in proc.stderr
    assert "2 problem(s)" in proc.stderr


def test_a_python_tag_is_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "evil.yaml").write_text(
        f"variants:\n  - name: se\n    kind: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(SpecError):
        load_specs(specs)
    assert not marker.exists()


def test_duplicate_names_across_files_name_both_places(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("variants:\n  - name: se\n    kind: channel\n")
    (tmp_path / "b.yaml").write_text("variants:\n\n  - name: se\n    kind: channel\n")
    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)
    (problem,) = info.value.problems
    assert problem.file.endswith("b.yaml") and problem.line == 3
    assert "a.yaml:2" in problem.message


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(
        "variants:\n"
        "  - {name: a, kind: channel, reduction: 0}\n"
        "  - {name: b, kind: spatial, kernel_size: 2}\n"
        "  - {name: c, kind: mha, heads: -1, dropout: 2}\n"
    )
    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)
    assert [(p.line, p.variant, p.field) for p in info.value.problems] == [
        (2, "a", "reduction"),
        (3, "b", "kernel_size"),
        (4, "c", "heads"),
        (4, "c", "dropout"),
    ]


def test_matrix_expands_every_combination(tmp_path: Path):
    (tmp_path / "m.yaml").write_text(
        "variants:\n"
        "  - name: se_r{reduction}_{gate}_{pooling}\n"
        "    kind: channel\n"
        "    matrix:\n"
        "      reduction: [4, 16]\n"
        "      gate: [sigmoid, hard_sigmoid]\n"
        "      pooling: [[avg], [avg, max]]\n"
    )
    variants = load_specs(tmp_path)
    assert len(variants) == 8
    assert "se_r16_hard_sigmoid_avg_max" in [v.name for v in variants]
    v = next(v for v in variants if v.name == "se_r4_sigmoid_avg")
    assert (v.spec.reduction, v.spec.gate, v.spec.pooling) == (4, "sigmoid", ("avg",))


def test_matrix_over_nested_fields(tmp_path: Path):
    (tmp_path / "m.yaml").write_text(
        "variants:\n"
        "  - name: cbam_k{spatial.kernel_size}\n"
        "    kind: cbam\n"
        "    spatial: {pooling: [max, mean]}\n"
        "    matrix:\n"
        "      spatial.kernel_size: [3, 7]\n"
    )
    variants = load_specs(tmp_path)
    assert [(v.name, v.spec.spatial.kernel_size, v.spec.spatial.pooling) for v in variants] == [
        ("cbam_k3", 3, ("max", "mean")),
        ("cbam_k7", 7, ("max", "mean")),
    ]


def test_oversized_file_is_refused_fast(tmp_path: Path):
    (tmp_path / "big.yaml").write_text("variants: []\n" + "#" * (1 << 20))
    with pytest.raises(SpecError, match="more than the 1048576 allowed"):
        load_specs(tmp_path)
