"""``python -m harness sweep``: generate specs into a scratch catalogue and run every check on it.

The committed ``generated/`` is never touched: the sweep's package is written under ``--out``
(default ``sweep-results/``) next to the JUnit XML and the Markdown summary, so each failure's
one-line reproduction command still works after the sweep ends.

    python -m harness sweep --specs specs/sweeps -n 2                 # all of it, 2 xdist workers
    python -m harness sweep --shard 1/4                               # a quarter, e.g. one CI job
    python -m harness sweep --variants 'sw_mha_*' -- --devices cpu,cuda   # extra args go to pytest
"""

from __future__ import annotations

import fnmatch
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .generate import ROOT, generate
from .load import display_path

PACKAGE = "sweep_catalogue"


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str  # passed, failed, skipped
    seconds: float
    message: str

    @property
    def variant(self) -> str:
        return self.id.split("-", 2)[0]

    @property
    def check(self) -> str:
        return self.id.split("-", 2)[1]


def build_catalogue(specs_dirs: list[Path], out: Path) -> Path:
    """Generate every variant of ``specs_dirs`` into ``out/sweep_catalogue``; returns the package dir."""
    package = out / PACKAGE
    generate(specs_dirs, package)
    return package


def read_junit(path: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:
            continue
        test_id = name[name.index("[") + 1 : -1]
        status, message = "passed", ""
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                text = node.get("message") or tag
                status, message = "failed", text.splitlines()[0][:300]
        skipped = case.find("skipped")
        if skipped is not None:
            status, message = "skipped", skipped.get("message", "")
        outcomes.append(Outcome(test_id, status, float(case.get("time", 0)), message))
    return outcomes


def summary(
    outcomes: list[Outcome], *, specs: str, catalogue: Path, wall: float, workers: str
) -> str:
    checks = sorted({o.check for o in outcomes})
    cells: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for o in outcomes:
        cells[o.variant][o.check][o.status] += 1
    totals = Counter(o.status for o in outcomes)
    lines = [
        "# attnforge sweep",
        "",
        f"- specs: `{specs}`; {len(cells)} variants, {len(outcomes)} cases, {workers} worker(s), {wall:.1f} s wall",
        f"- **{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped**",
        "",
        "## By check",
        "",
        "| check | passed | failed | skipped |",
        "|---|---:|---:|---:|",
    ]
    for check in checks:
        c = Counter(o.status for o in outcomes if o.check == check)
        lines.append(f"| {check} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    failures = [o for o in outcomes if o.status == "failed"]
    lines += ["", f"## Failures ({len(failures)})", ""]
    catalogue_arg = shlex.quote(display_path(catalogue))
    for o in failures:
        lines += [
            f"- `{o.id}`: {o.message}",
            f"  - reproduce: `python -m pytest tests/test_catalogue.py --catalogue {catalogue_arg} -k {shlex.quote(o.id)}`",
        ]
    if not failures:
        lines.append("None.")
    slow = sorted(outcomes, key=lambda o: o.seconds, reverse=True)[:10]
    lines += ["", "## Slowest cases", "", "| case | seconds |", "|---|---:|"]
    lines += [f"| `{o.id}` | {o.seconds:.3f} |" for o in slow]
    lines += [
        "",
        "## Variants x checks",
        "",
        "Passed/total per cell; `FAIL` marks a cell with a failure, `-` a check that does not apply.",
        "",
    ]
    lines += ["| variant | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
    for variant in sorted(cells):
        row = []
        for check in checks:
            c = cells[variant][check]
            n = sum(c.values())
            row.append("-" if n == 0 else ("FAIL " if c["failed"] else "") + f"{c['passed']}/{n}")
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


NO_CASES = 5  # exit status when nothing matches (pytest's own for "no tests collected")


def run(
    specs_dirs: list[Path],
    out: Path,
    *,
    workers: str,
    shard: str | None,
    variants: str,
    pytest_args: list[str],
) -> int:
    """Generate, check, summarise. Exit status: pytest's (0 all passed, 1 some failed), 2 for a spec
    or output problem, ``NO_CASES`` (5) when no variant matches ``variants``."""
    # Paths are the caller's: resolve them against the directory the sweep was started from
    # (pytest runs from the repository root).
    out = out if out.is_absolute() else Path.cwd() / out
    specs_dirs = [d if d.is_absolute() else Path.cwd() / d for d in specs_dirs]
    if out.exists() and not out.is_dir():
        print(f"sweep: --out {display_path(out)} exists and is not a directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    catalogue = build_catalogue(specs_dirs, out)
    patterns = [p.strip() for p in variants.split(",") if p.strip()]
    names = registry.Catalogue(catalogue).names()
    if not any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
        print(
            f"sweep: no variant matches --variants {variants!r} ({len(names)} variants in "
            f"{', '.join(display_path(d) for d in specs_dirs)}); nothing was checked",
            file=sys.stderr,
        )
        return NO_CASES
    junit = out / "sweep.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "test_catalogue.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        "-rN",
        f"--catalogue={catalogue}",
        f"--variants={variants}",
        "--depth=quick",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    if workers != "0":
        cmd += ["-n", workers, "--dist", "worksteal"]
    if shard:
        cmd += [f"--shard={shard}"]
    cmd += pytest_args
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    wall = time.perf_counter() - start
    if code == NO_CASES:
        print("sweep: no case matches the selection; nothing was checked", file=sys.stderr)
        return NO_CASES
    if code not in (0, 1):
        print(f"sweep: pytest exited with {code}", file=sys.stderr)
        return code
    outcomes = read_junit(junit)
    text = summary(
        outcomes,
        specs=", ".join(display_path(d) for d in specs_dirs),
        catalogue=catalogue,
        wall=wall,
        workers=workers,
    )
    (out / "summary.md").write_text(text, encoding="utf-8")
    totals = Counter(o.status for o in outcomes)
    print(
        f"sweep: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped in {wall:.1f} s; summary: {display_path(out / 'summary.md')}, JUnit: {display_path(junit)}"
    )
    return code
