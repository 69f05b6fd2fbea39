"""The pytest plugin: registered by the entry point, collects a catalogue with no test file,
deterministic ids, filters, shards of whole variants, prefixed options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attnforge

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "generated"


def _pytest(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def _collect(*args: str, cwd: Path = ROOT) -> list[str]:
    proc = _pytest(f"--attnforge-catalogue={CATALOGUE}", "--collect-only", "-q", *args, cwd=cwd)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    return [line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line]


def test_a_catalogue_is_collected_from_any_directory_with_no_test_file(tmp_path: Path):
    ids = _collect("--attnforge-variants", "sdpa*,cbam_paper", cwd=tmp_path)
    assert ids == _collect("--attnforge-variants", "sdpa*,cbam_paper", cwd=tmp_path)
    assert {i.split("-", 1)[0] for i in ids} == {
        *(n for n in attnforge.names() if n.startswith("sdpa")),
        "cbam_paper",
    }
    assert {"sdpa", "sdpa_causal", "sdpa_gemma2"} <= {i.split("-", 1)[0] for i in ids}
    assert "cbam_paper-reference-b2_c32_7x5-float16" in ids
    assert not (tmp_path / ".pytest_cache").exists()


def test_shards_hold_whole_variants_are_disjoint_and_cover_everything():
    everything = _collect("--attnforge-variants", "se_*,eca*")
    shards = [
        _collect("--attnforge-variants", "se_*,eca*", f"--attnforge-shard={i}/3") for i in (1, 2, 3)
    ]
    assert all(shards)
    assert sorted(i for shard in shards for i in shard) == sorted(everything)
    variants = [{i.split("-", 1)[0] for i in shard} for shard in shards]
    assert not (variants[0] & variants[1] or variants[1] & variants[2] or variants[0] & variants[2])


def test_the_checks_run_and_a_failure_says_how_to_reproduce(tmp_path: Path):
    proc = _pytest(
        f"--attnforge-catalogue={CATALOGUE}",
        "--attnforge-variants=se_resnet",
        "--attnforge-checks=shape,errors",
        "-q",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert " passed" in proc.stdout


def test_bad_options_are_usage_errors(tmp_path: Path):
    for args in (
        ["--attnforge-shard=4/3"],
        ["--attnforge-shard=x"],
        ["--attnforge-devices=tpu"],
        ["--attnforge-checks=nonsense"],
    ):
        proc = _pytest(f"--attnforge-catalogue={CATALOGUE}", "--collect-only", "-q", *args)
        assert proc.returncode == 4, (args, proc.stderr)
    proc = _pytest(f"--attnforge-catalogue={tmp_path}", "--collect-only")
    assert proc.returncode == 4 and "not a package made by `attnforge generate`" in proc.stderr


def test_the_plugin_costs_nothing_where_it_is_not_asked_for(tmp_path: Path):
    (tmp_path / "test_x.py").write_text(
        "import sys\n\ndef test_x():\n"
        "    assert 'torch' not in sys.modules and 'attnforge.checks' not in sys.modules\n"
    )
    proc = _pytest("-q", str(tmp_path / "test_x.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
