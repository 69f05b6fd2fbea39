"""The pytest plugin: deterministic ids, filters, and shards that partition the cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _collect(*args: str) -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_catalogue.py",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_ids_are_deterministic_and_filtered():
    first = _collect("--variants", "sdpa*,cbam_paper")
    assert first == _collect("--variants", "sdpa*,cbam_paper")
    variants = {line.split("[", 1)[1].split("-", 1)[0] for line in first}
    assert variants == {"sdpa", "sdpa_causal", "sdpa_causal_decode", "sdpa_dropout", "cbam_paper"}
    assert (
        "tests/test_catalogue.py::test_catalogue[cbam_paper-reference-b2_c32_7x5-float16]" in first
    )


def test_shards_are_disjoint_and_cover_everything():
    everything = _collect("--variants", "se_*")
    shards = [_collect("--variants", "se_*", f"--shard={i}/3") for i in (1, 2, 3)]
    assert all(shards)
    assert sorted(test for shard in shards for test in shard) == sorted(everything)


def test_bad_options_are_usage_errors():
    for args in (["--shard=4/3"], ["--shard=x"], ["--devices=tpu"]):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/test_catalogue.py",
                "--collect-only",
                "-q",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 4, (args, proc.stderr)
