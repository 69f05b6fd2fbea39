"""The ``attnforge`` command (also ``python -m attnforge``)."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

from . import __version__, registry
from .errors import Budget, OutputError, SpecError

DESCRIPTION = """\
attnforge: YAML specs in, readable PyTorch attention blocks out, each proven correct.

  attnforge generate                 validate ./specs, (re)write the package ./generated
  attnforge list [--kind K]          the variants of a catalogue, with their descriptions
  attnforge show NAME                one variant: spec, file, class, parameter count
  attnforge check                    run every check on every variant of a catalogue
  attnforge sweep                    generate specs into a scratch catalogue and check it all
  attnforge sweep merge DIR...       one report over the shards of a sweep
  attnforge bench                    time generated blocks against their anchors

Exit status: 0 fine, 1 checks failed or files would change (generate --check), 2 bad specs or
an output that cannot be written, 5 nothing matched.
"""


def _catalogue(value: Path | None) -> registry.Catalogue:
    return registry.Catalogue.at(value) if value is not None else registry.default


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate
    from .load import display_path

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
                "Run `tox -e generate` (attnforge generate) and commit the result.", file=sys.stderr
            )
            return 1
        print(f"{display_path(Path(args.out))} is up to date ({result.unchanged} files)")
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
    catalogue = _catalogue(args.catalogue)
    names = catalogue.names(args.kind)
    if not names:
        kinds = sorted({entry[0] for entry in catalogue.variants.values()})
        print(
            f"attnforge list: no variant of kind {args.kind!r} (kinds here: {', '.join(kinds)})",
            file=sys.stderr,
        )
        return 5
    width = max((len(n) for n in names), default=0)
    for name in names:
        kind, spec_file, _, summary = catalogue.variants[name]
        print(f"{name:<{width}}  {kind:<8} {spec_file:<16} {summary}".rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args.catalogue)
    try:
        kind, spec_file, cls_name, _ = catalogue.variants[args.name]
    except KeyError:
        catalogue.kind_of(args.name)  # raises the KeyError with close matches
        raise
    cls = catalogue.cls(args.name)
    module = catalogue.module(args.name)
    takes_width = any(
        p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        for p in list(inspect.signature(cls).parameters.values())
    )
    block = cls(args.width, device="meta") if takes_width else cls()
    params = sum(p.numel() for p in block.parameters())
    print(f"{args.name}: {kind}, class {cls_name} in {module.__file__}, from {spec_file}")
    if takes_width:
        print(f"parameters at width {args.width}: {params:,}")
    else:
        print(f"parameters: {params:,}")
    doc = (cls.__doc__ or "").strip().split("\n\n")
    print("\n".join(line.strip() for line in "\n\n".join(doc[:3]).splitlines()))
    print("spec (YAML, paste into a spec file's variants list):")
    print(f"  - {json.dumps(catalogue.spec_dict(args.name))}")
    return 0


def _check(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args.catalogue)
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        f"--attnforge-catalogue={catalogue.directory}",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
    ]
    if args.workers != "0":
        cmd += ["-n", args.workers, "--dist", "worksteal"]
    return subprocess.call([*cmd, *extra])


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
        progress=args.progress,
    )


def _merge(args: argparse.Namespace) -> int:
    from .sweep import MergeError, merge

    try:
        return merge(args.shards, args.out)
    except MergeError as exc:
        print(f"sweep merge: {exc}; nothing was written", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(
        args.out,
        device=args.device,
        repeats=args.repeats,
        scaling=args.scaling,
        generator=args.generator,
        variants=args.variants,
    )


def _sweep_specs() -> Path:
    """The sweep specs shipped with attnforge (specs/sweeps in the repository)."""
    from importlib.resources import files

    return Path(str(files("attnforge.specs"))) / "sweeps"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnforge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"attnforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="validate the specs and (re)write the generated package")
    g.add_argument(
        "--specs", type=Path, default=Path("specs"), help="spec directory (default: ./specs)"
    )
    g.add_argument(
        "--out", type=Path, default=Path("generated"), help="output package (default: ./generated)"
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
        help="also write the spec files' JSON Schema here (this repository: specs/schema.json)",
    )
    g.add_argument(
        "--max-variants",
        type=int,
        default=Budget.variants,
        help=f"variants the specs may expand to, all files and matrices together (default {Budget.variants})",
    )
    g.set_defaults(func=_generate)

    catalogue_help = "a generated package directory (default: the catalogue shipped with attnforge)"
    ls = sub.add_parser("list", help="list the variants: name, kind, spec file, description")
    ls.add_argument("--kind", help="only variants of this kind")
    ls.add_argument("--catalogue", type=Path, default=None, help=catalogue_help)
    ls.set_defaults(func=_list)

    sh = sub.add_parser("show", help="one variant: its spec, file, class and parameter count")
    sh.add_argument("name")
    sh.add_argument(
        "--width", type=int, default=256, help="channels or embed_dim to count parameters at"
    )
    sh.add_argument("--catalogue", type=Path, default=None, help=catalogue_help)
    sh.set_defaults(func=_show)

    ck = sub.add_parser("check", help="run every check on every variant of a catalogue (pytest)")
    ck.add_argument("--catalogue", type=Path, default=None, help=catalogue_help)
    ck.add_argument(
        "-n", "--workers", default="auto", help="xdist workers (0: none; default: auto)"
    )
    ck.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments")
    ck.set_defaults(func=_check)

    sw = sub.add_parser(
        "sweep", help="generate specs into a scratch catalogue and run every check on it"
    )
    sw.add_argument(
        "--specs",
        type=Path,
        nargs="+",
        default=[_sweep_specs()],
        help="spec directories (default: the sweep specs shipped with attnforge)",
    )
    sw.add_argument(
        "--out",
        type=Path,
        default=Path("sweep-results"),
        help="JUnit XML, summary.md, the catalogue",
    )
    sw.add_argument(
        "-n", "--workers", default="auto", help="xdist workers (0: none; default: auto)"
    )
    sw.add_argument("--shard", help="I/N: run shard I of N (whole variants)")
    sw.add_argument("--variants", default="*", help="comma-separated globs of variant names")
    sw.add_argument(
        "--progress", type=float, default=30.0, help="seconds between progress lines (0: none)"
    )
    sw.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments")
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
    b.add_argument("--repeats", type=int, default=30, help="timed runs per candidate")
    b.add_argument(
        "--variants", default="*", help="comma-separated globs: only the rows of these variants"
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


def merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnforge sweep merge",
        description="One JUnit XML and one summary over the shards of a sweep (every I of 1..N once).",
    )
    p.add_argument("shards", type=Path, nargs="+", help="the --out directories of the shards")
    p.add_argument(
        "--out", type=Path, default=Path("sweep-results"), help="where the merged report goes"
    )
    p.set_defaults(func=_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["sweep", "merge"]:
        args = merge_parser().parse_args(argv[2:])
    else:
        args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ImportError as exc:
        missing = exc.name or ""
        if missing.split(".")[0] in ("jinja2", "pydantic", "yaml", "pydantic_core"):
            extra = "check" if args.func in (_check, _sweep, _merge) else "generate"
            print(
                f"attnforge {args.command if hasattr(args, 'command') else 'sweep merge'}: needs "
                f"{missing.split('.')[0]}: pip install 'attnforge[{extra}]'",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyError as exc:  # an unknown variant name, with close matches
        print(f"attnforge: {exc.args[0]}", file=sys.stderr)
        return 2
    except SpecError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in the specs; nothing was written.", file=sys.stderr)
        return 2
    except OutputError as exc:
        print(exc, file=sys.stderr)
        return 2
