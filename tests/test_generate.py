"""The generator: deterministic, minimal writes, drift detection, all-or-nothing, injection-proof."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnforge import cli
from attnforge import generate as gen
from attnforge.load import load_specs

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.py"))}


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out, ignore=shutil.ignore_patterns("sweeps"))
    return out


def test_committed_catalogue_has_headers_and_no_absolute_paths():
    for path in sorted((ROOT / "generated").glob("*.py")):
        text = path.read_text()
        assert text.startswith(gen.MARKER), path
        assert "DO NOT EDIT" in text.splitlines()[0]
        assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text
    for path in gen.TEMPLATES_DIR.glob("*.j2"):
        assert path.read_text().isascii()


def test_every_spec_file_points_editors_at_the_schema():
    for path in sorted(SPECS.glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=schema.json\n"), path


def test_two_runs_are_byte_identical_under_any_hash_seed(specs: Path, tmp_path: Path):
    outs = []
    for seed in ("0", "12345"):
        out = tmp_path / f"out{seed}" / "generated"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "attnforge",
                "generate",
                "--specs",
                str(specs),
                "--out",
                str(out),
            ],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
        )
        outs.append(_tree(out))
    assert outs[0] == outs[1]
    assert outs[0] == _tree(ROOT / "generated")  # and equal to the committed catalogue


def test_no_op_regeneration_writes_nothing(specs: Path, tmp_path: Path):
    out = tmp_path / "generated"
    first = gen.generate(specs, out)
    assert first.written and not first.removed
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = gen.generate(specs, out)
    assert again.written == [] and again.removed == []
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_check_detects_a_hand_edit_and_a_stale_module(specs: Path, tmp_path: Path, capsys):
    out = tmp_path / "generated"
    (specs / "extra.yaml").write_text("variants:\n  - {name: old_variant, kind: sdpa}\n")
    gen.generate(specs, out)
    (specs / "extra.yaml").unlink()  # old_variant.py is now stale
    edited = out / "se_resnet.py"
    edited.write_text(edited.read_text().replace("// 16", "// 8"))
    before = _tree(out)

    assert cli.main(["generate", "--specs", str(specs), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "would write  " in err and "se_resnet.py" in err
    assert "would remove " in err and "old_variant.py" in err
    assert _tree(out) == before  # --check writes nothing

    result = gen.generate(specs, out)
    assert [p.name for p in result.written] == ["__init__.py", "se_resnet.py"]
    assert [p.name for p in result.removed] == ["old_variant.py"]
    assert cli.main(["generate", "--specs", str(specs), "--out", str(out), "--check"]) == 0


def test_a_run_killed_mid_write_leaves_old_or_new_files_and_the_next_run_repairs(
    specs: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "generated"
    gen.generate(specs, out)
    old = _tree(out)
    (specs / "se.yaml").write_text(
        (specs / "se.yaml").read_text().replace("reduction: 16", "reduction: 32")
    )
    real, calls = os.replace, []

    def dying(src, dst) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two files
        calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(gen.os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(specs, out)
    monkeypatch.setattr(gen.os, "replace", real)
    half = _tree(out)
    assert set(half) == set(old)
    assert sum(half[n] != old[n] for n in old) == 2  # each file is old or new, never a mix
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    gen.generate(specs, out)
    assert gen.generate(specs, out, check=True).changed == []
    assert "// 32" in (out / "se_resnet.py").read_text()


def test_a_template_bug_is_caught_before_anything_is_written(specs: Path, tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(gen.TEMPLATES_DIR, templates)
    (templates / "sdpa.py.j2").write_text(
        (templates / "sdpa.py.j2").read_text().replace("def forward(", "def forward((")
    )
    out = tmp_path / "generated"
    with pytest.raises(RuntimeError, match="invalid Python"):
        gen.generate(specs, out, templates_dir=templates)
    assert not out.exists()


NASTY = 'Quotes " \' """ and \'\'\' ; a backslash \\ and \\n; {{ 7 * 7 }} {% if true %}x{% endif %} {# c #}\n""" + __import__("os").system("touch PWNED") + """\nends with a quote"'


def test_description_is_a_docstring_whatever_it_holds(tmp_path: Path):
    specs = tmp_path / "specs"
    specs.mkdir()
    import yaml

    (specs / "x.yaml").write_text(
        yaml.safe_dump({"variants": [{"name": "nasty", "kind": "sdpa", "description": NASTY}]})
    )
    out = tmp_path / "pkg_nasty"
    gen.generate(specs, out)
    source = (out / "nasty.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert load_specs(specs)[0].spec.description in ast.get_docstring(cls)
    # Only the docstring, constants, imports, a function and a class: nothing that runs on import.
    assert all(
        isinstance(
            n, ast.Expr | ast.Import | ast.ImportFrom | ast.Assign | ast.ClassDef | ast.FunctionDef
        )
        for n in tree.body
    )
    sys.path.insert(0, str(tmp_path))
    try:
        cwd = os.getcwd()
        os.chdir(tmp_path)
        __import__("pkg_nasty.nasty")
    finally:
        os.chdir(cwd)
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "PWNED").exists()
    assert (
        sys.modules["pkg_nasty.nasty"].Nasty.__doc__.count("{{ 7 * 7 }}") == 1
    )  # never rendered by Jinja


def _ruff() -> str:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed: tox installs the pinned one (the generator needs none)")
    return ruff


def _is_ruff_formatted(sources: dict[str, str], tmp_path: Path) -> list[str]:
    """The files the pinned ruff would reformat (our pyproject's line length and target)."""
    out = tmp_path / "fmt"
    out.mkdir()
    for name, text in sources.items():
        (out / name).write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [
            _ruff(),
            "format",
            "--check",
            "--no-cache",
            "--isolated",
            "--line-length=100",
            "--target-version=py310",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line for line in proc.stdout.splitlines() if line.startswith("Would reformat")]


def test_templates_emit_what_the_formatter_would_write(tmp_path: Path):
    """No formatter runs at generation: the templates lay code out as ruff does, for the committed
    catalogue and for every sweep variant (hundreds of option combinations)."""
    variants = load_specs(SPECS, SPECS / "sweeps")
    sources = gen.render(variants, "pkg")
    assert len(sources) > 400
    assert _is_ruff_formatted(sources, tmp_path) == []
