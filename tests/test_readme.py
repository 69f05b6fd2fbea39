"""The README stays true: its spec reference is the models' own, and every example output it shows
is what the code prints today."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import attnforge
from attnforge import cli
from attnforge.spec import reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(after: str, fence: str = "text") -> str:
    """The first fenced block of kind ``fence`` after the text ``after``."""
    start = README.index(f"```{fence}\n", README.index(after)) + len(f"```{fence}\n")
    return README[start : README.index("```", start)]


def test_spec_reference_matches_the_models():
    start = README.index("<!-- spec-reference:start")
    start = README.index("\n", start) + 1
    end = README.index("<!-- spec-reference:end -->")
    assert README[start:end] == reference_markdown(), (
        "regenerate the README's spec reference from attnforge.spec.reference_markdown()"
    )


def test_quick_start_is_two_commands():
    assert "pip install tox && tox -e generate" in README
    assert "\ntox       " in README


def test_the_quick_start_block_prints_what_it_says():
    block = _block("Use a block in your own environment", "bash")
    code = re.search(r'python -c "(.*)"', block).group(1)  # type: ignore[union-attr]
    expected = re.search(r"# (torch\.Size\(.*\))", block).group(1)  # type: ignore[union-attr]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_the_use_a_block_comments_are_true():
    block = _block("## Use a block", "python")
    names = re.search(r'attnforge.names\("cbam"\)\s+# (\[.*\])', block).group(1)  # type: ignore[union-attr]
    assert names == repr(attnforge.names("cbam"))
    assert 'attnforge.spec_of("cbam_paper").spatial.kernel_size   # 7' in block
    assert attnforge.spec_of("cbam_paper").spatial.kernel_size == 7  # type: ignore[union-attr]


def test_the_sample_spec_errors_are_real_output(tmp_path: Path, monkeypatch, capsys):
    """The four mistakes of "When a spec is wrong", made in a copy of specs/, print that block."""
    specs = tmp_path / "specs"
    shutil.copytree(ROOT / "specs", specs, ignore=shutil.ignore_patterns("sweeps", "__*"))
    cbam = (specs / "cbam.yaml").read_text()
    tutorial = cbam.index("name: cbam_tutorial")
    tail = cbam[tutorial:].replace("kernel_size: 3", "kernel_size: 4", 1)
    tail = tail.replace("pooling: [mean, max]", "pooling: [mean, mean]", 1)
    (specs / "cbam.yaml").write_text(cbam[:tutorial] + tail)
    se = (specs / "se.yaml").read_text().replace("reduction: 16", "reductoin: 16", 1)
    se = se.replace(
        "  - name: se_hard_sigmoid\n    kind: channel",
        "  - name: se_hard_sigmoid\n    kind: chanel",
        1,
    )
    (specs / "se.yaml").write_text(se)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate"]) == 2
    expected = _block("## When a spec is wrong").split("\n", 1)[1]  # after the $ line
    assert capsys.readouterr().err == expected


def test_the_cli_summary_names_every_command():
    for command in ("generate", "list", "show", "check", "sweep", "bench"):
        assert f"attnforge {command}" in cli.DESCRIPTION
        assert f"attnforge {command}" in README
    assert "attnforge sweep merge" in README


def test_no_path_outside_the_repository():
    """Every parent-relative path written in the repository's text (README, code, templates, specs,
    docs, CI) resolves inside the repository: a user of the repository has nothing above it."""
    parent_relative = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]*)")
    kinds = ("*.md", "*.py", "*.j2", "*.yaml", "*.toml", "*.ini", "run")
    skip = {".git", ".tox", ".venv", "generated", "build", "dist"}
    checked = 0
    for pattern in kinds:
        for path in ROOT.rglob(pattern):
            if skip & set(path.relative_to(ROOT).parts) or not path.is_file():
                continue
            for target in parent_relative.findall(path.read_text(errors="replace")):
                checked += 1
                resolved = (path.parent / target).resolve()
                assert resolved.is_relative_to(ROOT), f"{path.relative_to(ROOT)} points at {target}"
    assert checked  # the spec files' schema lines are parent-relative: the scan saw them
