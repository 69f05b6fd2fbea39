"""``python -m harness``: generate, list, sweep, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .load import Budget, SpecError, display_path
from .spec import KIND_NAMES


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    budget = Budget(variants=args.max_variants)
    result = generate(args.specs, args.out, check=args.check, schema=args.schema, budget=budget)
    if args.check:
        if result.changed:
            print(
                f"{len(result.changed)} generated file(s) differ from what the specs produce:",
                file=sys.stderr,
            )
            for path in result.written:
                print(f"  would write  {display_path(path)}", file=sys.stderr)
            for path in result.removed:
                print(f"  would remove {display_path(path)}", file=sys.stderr)
            print(
                "Run `tox -e generate` (python -m harness generate) and commit the result.",
                file=sys.stderr,
            )
            return 1
        print(f"generated/ is up to date ({result.unchanged} files)")
        return 0
    for path in result.written:
        print(f"wrote   {display_path(path)}")
    for path in result.removed:
        print(f"removed {display_path(path)}")
    print(
        f"{len(result.written)} written, {len(result.removed)} removed, {result.unchanged} unchanged"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from .load import load_specs

    variants = [v for v in load_specs(args.specs) if args.kind is None or v.spec.kind == args.kind]
    width = max((len(v.name) for v in variants), default=0)
    for v in variants:
        print(f"{v.name:<{width}}  {v.spec.kind:<7}  {Path(args.specs).name}/{v.file}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import run

    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run(
        args.specs,
        args.out,
        workers=args.workers,
        shard=args.shard,
        variants=args.variants,
        pytest_args=extra,
    )


def _bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(
        args.out,
        device=args.device,
        repeats=args.repeats,
        scaling=args.scaling,
        generator=args.generator,
    )


def parser() -> argparse.ArgumentParser:
    from .generate import GENERATED_DIR, SPECS_DIR

    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="validate the specs and (re)write the generated package")
    g.add_argument("--specs", type=Path, default=SPECS_DIR, help="spec directory (default: specs/)")
    g.add_argument(
        "--out", type=Path, default=GENERATED_DIR, help="output package (default: generated/)"
    )
    g.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing every file that would change",
    )
    g.add_argument(
        "--schema",
        type=Path,
        default=None,
        help="also write the spec files' JSON Schema to this path (tox -e generate: specs/schema.json)",
    )
    g.add_argument(
        "--max-variants",
        type=int,
        default=Budget.variants,
        help=f"variants the specs may expand to, all files and matrices together (default {Budget.variants})",
    )
    g.set_defaults(func=_generate)
    ls = sub.add_parser("list", help="list the variants, one a line: name, kind, spec file")
    ls.add_argument("--specs", type=Path, default=SPECS_DIR)
    ls.add_argument("--kind", choices=KIND_NAMES)
    ls.set_defaults(func=_list)
    sw = sub.add_parser(
        "sweep", help="generate specs into a scratch catalogue and run every check on it"
    )
    sw.add_argument(
        "--specs",
        type=Path,
        nargs="+",
        default=[SPECS_DIR / "sweeps"],
        help="spec directories (default: specs/sweeps)",
    )
    sw.add_argument(
        "--out",
        type=Path,
        default=Path("sweep-results"),
        help="results: JUnit XML, summary.md, the catalogue",
    )
    sw.add_argument(
        "-n", "--workers", default="auto", help="xdist workers (0: no xdist; default: auto)"
    )
    sw.add_argument("--shard", help="I/N: run shard I of N")
    sw.add_argument("--variants", default="*", help="comma-separated globs of variant names")
    sw.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="after --: more pytest arguments (e.g. --devices cpu,cuda)",
    )
    sw.set_defaults(func=_sweep)
    b = sub.add_parser(
        "bench", help="time generated modules against their anchors, and the generator"
    )
    b.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="where bench.md, bench.json, bench.png go",
    )
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    b.add_argument(
        "--repeats", type=int, default=30, help="timed runs per candidate (medians are reported)"
    )
    b.add_argument(
        "--scaling",
        action="store_true",
        help="also time the catalogue's checks with 1 and 2 workers",
    )
    b.add_argument(
        "--no-generator", dest="generator", action="store_false", help="skip the generator timings"
    )
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from .generate import OutputError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in the specs; nothing was written.", file=sys.stderr)
        return 2
    except OutputError as exc:
        print(exc, file=sys.stderr)
        return 2
