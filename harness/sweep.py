"""``attnforge sweep``: generate specs into a scratch catalogue, run every check on it, and merge
the shards of a sweep spread over machines into one report.

The catalogue is written under ``--out`` (default ``sweep-results/``) next to the JUnit XML, the
Markdown summary and ``shard.json`` (what was run, on which catalogue), so each failure's one-line
reproduction command still works after the sweep ends.

    attnforge sweep -n 2                                  # the shipped sweep specs, 2 xdist workers
    attnforge sweep --shard 1/4 --out shard-1             # a quarter (whole variants), e.g. a CI job
    attnforge sweep merge shard-1 shard-2 shard-3 shard-4 --out all
    attnforge sweep --variants 'sw_mha_*' -- --attnforge-devices cpu,cuda   # more pytest args
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from .generate import generate, owned
from .load import display_path

PACKAGE = "sweep_catalogue"
NO_CASES = 5  # exit status when nothing matches (pytest's own for "no tests collected")
MANIFEST = "shard.json"


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


@dataclass(frozen=True)
class Manifest:
    """What one sweep run checked: the merge refuses shards that do not belong together."""

    catalogue: str  # sha256 of the generated package's files
    variants: int  # in the whole catalogue
    shard: str | None  # "I/N", or None for a whole sweep
    plan: str  # the options that decide which cases exist (variants, depth, checks, devices)
    wall: float
    workers: str

    def write(self, out: Path) -> None:
        (out / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, out: Path) -> Manifest:
        return cls(**json.loads((out / MANIFEST).read_text(encoding="utf-8")))


def build_catalogue(specs_dirs: list[Path], out: Path) -> Path:
    """Generate every variant of ``specs_dirs`` into ``out/sweep_catalogue``; returns the package dir."""
    package = out / PACKAGE
    generate(specs_dirs, package)
    return package


def fingerprint(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_junit(path: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = case.get("name", "")
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


def write_junit(outcomes: list[Outcome], path: Path, wall: float) -> None:
    totals = Counter(o.status for o in outcomes)
    suite = ET.Element(
        "testsuite",
        name="attnforge sweep",
        tests=str(len(outcomes)),
        failures=str(totals["failed"]),
        skipped=str(totals["skipped"]),
        errors="0",
        time=f"{wall:.3f}",
    )
    for o in sorted(outcomes, key=lambda o: o.id):
        case = ET.SubElement(
            suite, "testcase", classname=PACKAGE, name=o.id, time=f"{o.seconds:.3f}"
        )
        if o.status == "failed":
            ET.SubElement(case, "failure", message=o.message)
        elif o.status == "skipped":
            ET.SubElement(case, "skipped", message=o.message)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


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
            f"  - reproduce: `pytest --attnforge-catalogue {catalogue_arg} -k {shlex.quote(o.id)}`",
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


def _plan_key(variants: str, pytest_args: list[str]) -> str:
    """The options that decide which cases a run has: shards must agree on them."""
    keep = [
        a
        for a in pytest_args
        if a.startswith(("--attnforge-devices", "--attnforge-checks", "--attnforge-depth"))
    ]
    return " ".join([f"--attnforge-variants={variants}", *keep])


def run(
    specs_dirs: list[Path],
    out: Path,
    *,
    workers: str,
    shard: str | None,
    variants: str,
    pytest_args: list[str],
    progress: float = 30.0,
) -> int:
    """Generate, check, summarise. Exit status: pytest's (0 all passed, 1 some failed), 2 for a spec
    or output problem, ``NO_CASES`` (5) when no variant matches ``variants``."""
    # Paths are the caller's: resolve them against the directory the sweep was started from.
    out = out if out.is_absolute() else Path.cwd() / out
    specs_dirs = [d if d.is_absolute() else Path.cwd() / d for d in specs_dirs]
    if out.exists() and not out.is_dir():
        print(f"sweep: --out {display_path(out)} exists and is not a directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    catalogue = build_catalogue(specs_dirs, out)
    patterns = [p.strip() for p in variants.split(",") if p.strip()]
    # The names from the index as text: importing the package here would pin its name to this
    # directory for the rest of the process.
    names = sorted(f.removesuffix(".py") for f in owned(catalogue) if f != "__init__.py")
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
        f"--attnforge-catalogue={catalogue}",
        f"--attnforge-variants={variants}",
        "--attnforge-depth=quick",
        f"--attnforge-progress={progress}",
        f"--rootdir={out}",
        # A surrounding project's pytest configuration (addopts, testpaths, filters) is not the
        # sweep's: an empty one instead.
        "-c",
        os.devnull,
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        "-rN",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    if workers != "0":
        cmd += ["-n", workers, "--dist", "worksteal"]
    if shard:
        cmd += [f"--attnforge-shard={shard}"]
    cmd += pytest_args
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=out)
    wall = time.perf_counter() - start
    if code == NO_CASES:
        print("sweep: no case matches the selection; nothing was checked", file=sys.stderr)
        return NO_CASES
    if code not in (0, 1):
        print(f"sweep: pytest exited with {code}", file=sys.stderr)
        return code
    outcomes = read_junit(junit)
    write_junit(outcomes, junit, wall)  # one suite, sorted: the same file however xdist ran
    Manifest(
        fingerprint(catalogue), len(names), shard, _plan_key(variants, pytest_args), wall, workers
    ).write(out)
    _report(
        out,
        outcomes,
        specs=", ".join(display_path(d) for d in specs_dirs),
        catalogue=catalogue,
        wall=wall,
        workers=workers,
    )
    return code


def _report(
    out: Path, outcomes: list[Outcome], *, specs: str, catalogue: Path, wall: float, workers: str
) -> None:
    text = summary(outcomes, specs=specs, catalogue=catalogue, wall=wall, workers=workers)
    (out / "summary.md").write_text(text, encoding="utf-8")
    totals = Counter(o.status for o in outcomes)
    print(
        f"sweep: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped "
        f"in {wall:.1f} s; summary: {display_path(out / 'summary.md')}, "
        f"JUnit: {display_path(out / 'sweep.xml')}"
    )


class MergeError(Exception):
    """Shards that do not make one sweep; ``str()`` says why."""


def merge(shard_dirs: list[Path], out: Path) -> int:
    """One JUnit XML and one summary over every shard of a sweep; exit 1 if any case failed.

    Refuses shards of different catalogues or plans, a shard given twice or overlapping another,
    and a missing shard (every I of 1..N exactly once).
    """
    manifests = []
    for d in shard_dirs:
        try:
            manifests.append(Manifest.read(d))
        except FileNotFoundError:
            raise MergeError(
                f"{display_path(d)}: no {MANIFEST}; not the output of a sweep"
            ) from None
    first = manifests[0]
    for d, m in zip(shard_dirs, manifests, strict=True):
        if m.catalogue != first.catalogue:
            raise MergeError(
                f"{display_path(d)}: a different catalogue ({m.catalogue[:12]} vs {first.catalogue[:12]})"
            )
        if m.plan != first.plan:
            raise MergeError(f"{display_path(d)}: a different plan ({m.plan!r} vs {first.plan!r})")
        if m.shard is None:
            raise MergeError(f"{display_path(d)}: a whole sweep, not a shard")
    counts = {int(m.shard.split("/")[1]) for m in manifests if m.shard}
    if len(counts) != 1:
        raise MergeError(f"shards of different splits: {sorted(counts)}")
    n = counts.pop()
    seen = Counter(int(m.shard.split("/")[0]) for m in manifests if m.shard)
    twice = sorted(i for i, c in seen.items() if c > 1)
    missing = sorted(set(range(1, n + 1)) - set(seen))
    if twice:
        raise MergeError(f"shard(s) {', '.join(f'{i}/{n}' for i in twice)} given more than once")
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
    outcomes: list[Outcome] = []
    ids: set[str] = set()
    for d in shard_dirs:
        found = read_junit(d / "sweep.xml")
        overlap = ids & {o.id for o in found}
        if overlap:
            raise MergeError(
                f"{display_path(d)}: overlaps another shard ({sorted(overlap)[0]} ...)"
            )
        ids |= {o.id for o in found}
        outcomes += found
    out.mkdir(parents=True, exist_ok=True)
    wall = max(m.wall for m in manifests)
    write_junit(outcomes, out / "sweep.xml", wall)
    Manifest(first.catalogue, first.variants, None, first.plan, wall, f"{n} shards").write(out)
    _report(
        out,
        outcomes,
        specs=f"{n} shards: " + ", ".join(display_path(d) for d in shard_dirs),
        catalogue=shard_dirs[0] / PACKAGE,
        wall=wall,
        workers=f"{n} shards of {', '.join(sorted({m.workers for m in manifests}))}",
    )
    return 1 if any(o.status == "failed" for o in outcomes) else 0
