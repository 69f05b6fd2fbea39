"""Load spec files: YAML with positions, then pydantic, with every problem pointing at its line.

Specs arrive in other people's pull requests, so this is a trust boundary. Nothing in a spec is
executed: YAML is composed with PyYAML's safe loader into nodes, and the nodes are turned into plain
values here, by the YAML 1.2 core schema and nothing else (no sexagesimal ``1:00``, no ``yes``/``on``
booleans, no leading-zero octal). Duplicate keys, tags other than the core ones, merge keys, alias
bombs, deep nesting, oversized files, numbers of absurd size, unsafe file names and over-budget
matrices are errors. Every problem of a run is collected and reported together as

    specs/<file>.yaml:<line>:<col>: <variant>: <field>: <message>

with long values truncated and at most ``Budget.problems_shown`` problems printed.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from . import spec as specs
from .errors import Budget, Problem, SpecError, clip

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # after alias expansion: a "billion laughs" document stops here
MAX_DEPTH = 32  # of the document's values
MAX_SCAN_DEPTH = 64  # of the raw YAML, checked before composing (the composer recurses)
MAX_INT_DIGITS = 18  # every integer field is far below 10**18
MAX_NAME_PART = 64  # a matrix value's part of a variant name
MAX_NAME_PATTERN = 256
# A spec file's name reaches messages and the generated headers: letters, digits, _ . - only.
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.ya?ml$")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Variant:
    """A validated variant and where it came from."""

    spec: specs.AnySpec
    file: str  # the spec file's name, relative to its specs directory: what generated headers name
    line: int
    display: str = ""  # the spec file as problems name it (relative to the working directory)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class _Document:
    """A YAML document turned into plain values, with the position of every node."""

    display: str
    value: Any = None
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path``, or of its nearest ancestor that has one."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def problem(
        self, path: Path_, variant: str, fld: str, message: str, *, key: bool = False
    ) -> None:
        line, col = self.where(path, key=key)
        self.problems.append(Problem(self.display, line, col, variant, fld, message))


class _Loader(yaml.SafeLoader):
    """The safe loader with no implicit resolution: plain scalars are resolved by the YAML 1.2
    core schema in ``_scalar``, not by PyYAML's YAML 1.1 rules. Explicitly tagged scalars are
    marked, so ``!!str 12`` stays a string."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level table

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        node = super().compose_scalar_node(anchor)
        node.explicit = event.tag not in (None, "!")  # type: ignore[attr-defined]
        return node


# The YAML 1.2 core schema, strictly: these spellings, nothing else.
_NULL = re.compile(r"^(~|null|Null|NULL|)$")
_TRUE = re.compile(r"^(true|True|TRUE)$")
_FALSE = re.compile(r"^(false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
_NAN = re.compile(r"^\.(nan|NaN|NAN)$")
_TAGS = {
    "tag:yaml.org,2002:str": "str",
    "tag:yaml.org,2002:int": "int",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "bool",
    "tag:yaml.org,2002:null": "null",
}


def _int(text: str) -> int:
    digits = text.lstrip("+-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits is out of range")
    if len(digits) > 1 and digits[0] == "0":
        raise ValueError(
            f"{text} has a leading zero, which YAML 1.1 reads as octal and YAML 1.2 as decimal; "
            f"write {int(digits)} (or 0o{digits.lstrip('0')} for octal)"
        )
    return int(text)


def _scalar(value: str, kind: str | None) -> Any:
    """A plain scalar (``kind`` None) or an explicitly tagged one, by the YAML 1.2 core schema."""
    if kind == "str":
        return value
    if kind in (None, "null") and _NULL.match(value):
        return None
    if kind in (None, "bool"):
        if _TRUE.match(value):
            return True
        if _FALSE.match(value):
            return False
    if kind in (None, "int"):
        if _INT.match(value):
            return _int(value)
        if _OCT.match(value) or _HEX.match(value):
            if len(value) > MAX_INT_DIGITS + 2:
                raise ValueError(f"an integer of {len(value) - 2} digits is out of range")
            return int(value, 0)
    if kind in (None, "float"):
        if _FLOAT.match(value) or (kind == "float" and _INT.match(value)):
            return float(value)
        if _INF.match(value):
            return -math.inf if value.startswith("-") else math.inf
        if _NAN.match(value):
            return math.nan
    if kind is None:
        return value
    raise ValueError(f"!!{kind} {clip(value, 40)!r} is not a YAML 1.2 {kind}")


class _Converter:
    def __init__(self, doc: _Document):
        self.doc = doc
        self.count = 0

    def convert(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _BadNode(node, f"more than {MAX_NODES} nodes after expanding aliases")
        if depth > MAX_DEPTH:
            raise _BadNode(node, f"nested deeper than {MAX_DEPTH} levels")
        self.doc.marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise _BadNode(node, f"tag {clip(node.tag, 60)!r} is not allowed")
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<":
                    raise _BadNode(key_node, "merge keys (<<) are not supported")
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag != "tag:yaml.org,2002:str"
                ):
                    raise _BadNode(key_node, "mapping keys must be plain strings")
                key = key_node.value
                if key in result:
                    first = self.doc.key_marks[(*path, key)]
                    raise _BadNode(
                        key_node, f"duplicate key {clip(key, 60)!r} (first at line {first[0]})"
                    )
                self.doc.key_marks[(*path, key)] = _mark(key_node)
                result[key] = self.convert(value_node, (*path, key), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise _BadNode(node, f"tag {clip(node.tag, 60)!r} is not allowed")
            return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        explicit = getattr(node, "explicit", False)
        if explicit and node.tag not in _TAGS:
            raise _BadNode(
                node, f"tag {clip(node.tag, 60)!r} is not allowed (only plain YAML values)"
            )
        if node.style is not None and not explicit:  # quoted or block scalar: a string
            return node.value
        try:
            return _scalar(node.value, _TAGS[node.tag] if explicit else None)
        except ValueError as exc:
            raise _BadNode(node, str(exc)) from None


class _BadNode(Exception):
    def __init__(self, node: yaml.Node | yaml.Token, message: str):
        super().__init__(message)
        self.node = node
        self.message = message


def _mark(node: yaml.Node | yaml.Token) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_nesting(text: str) -> None:
    """Reject deep nesting from the token stream (the scanner iterates; the composer recurses, and
    500 nested ``[`` would exhaust Python's stack)."""
    depth = 0
    for token in yaml.scan(text, Loader=_Loader):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_SCAN_DEPTH:
                raise _BadNode(token, f"nested deeper than {MAX_SCAN_DEPTH} levels")
        elif isinstance(token, _CLOSE):
            depth -= 1


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given; a name
    that is not plain printable text is shown as its Python literal."""
    try:
        text = str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        text = str(path)
    try:
        text.encode("utf-8")  # a name that was not UTF-8 holds lone surrogates
    except UnicodeEncodeError:
        return ascii(text)
    return text if text.isprintable() else ascii(text)


def parse_file(path: Path, display: str | None = None) -> _Document:
    """Read one spec file into plain values and positions; problems are recorded, not raised."""
    doc = _Document(display or display_path(path))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            doc.problem((), "", "", f"file is {size} bytes, more than the {MAX_FILE_BYTES} allowed")
            return doc
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        doc.problem((), "", "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")
        return doc
    except OSError as exc:
        doc.problem((), "", "", f"cannot read: {exc.strerror or exc}")
        return doc
    try:
        _check_nesting(text)
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, found before parsing
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        doc.problems.append(
            Problem(
                doc.display, line, col, "", "", f"YAML: character {exc.character!r} is not allowed"
            )
        )
        return doc
    except yaml.MarkedYAMLError as exc:
        _syntax_problem(doc, exc)
        return doc
    except _BadNode as exc:
        line, col = _mark(exc.node)
        doc.problems.append(Problem(doc.display, line, col, "", "", exc.message))
        return doc
    try:
        node = loader.get_single_node()
        if node is None:
            doc.problem((), "", "", "empty file: expected a mapping with a 'variants' list")
            return doc
        doc.value = _Converter(doc).convert(node, ())
    except yaml.MarkedYAMLError as exc:
        _syntax_problem(doc, exc)
    except yaml.YAMLError as exc:
        doc.problem((), "", "", "YAML: " + clip(" ".join(str(exc).split()), 200))
    except _BadNode as exc:
        line, col = _mark(exc.node)
        doc.problems.append(Problem(doc.display, line, col, "", "", exc.message))
    finally:
        loader.dispose()
    return doc


def _syntax_problem(doc: _Document, exc: yaml.MarkedYAMLError) -> None:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
    doc.problems.append(Problem(doc.display, line, col, "", "", f"YAML syntax: {message}"))


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")


def _name_part(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "_".join(_name_part(v) for v in value)
    if isinstance(value, float):
        return repr(value).replace(".", "p").replace("-", "m")
    return str(value)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        child = data.get(part)
        data[part] = child = dict(child) if isinstance(child, dict) else {}
        data = child
    data[last] = value


def _label(entry: dict[str, Any], index: str | int) -> str:
    """How problems name a variant: its name, or its place when it has none."""
    name = entry.get("name")
    return name if isinstance(name, str) else f"variants[{index}]"


@dataclass
class _Count:
    """Variants counted so far, against the budget, before any matrix is expanded."""

    budget: Budget
    run: int = 0
    file: int = 0


def _matrix_axes(
    doc: _Document, index: int, entry: dict[str, Any]
) -> list[tuple[str, list[Any]]] | None:
    """A matrix entry's axes, or None after recording why it cannot expand."""
    base_path: Path_ = ("variants", index)
    label = _label(entry, index)
    matrix = entry["matrix"]
    if not isinstance(matrix, dict) or not matrix:
        doc.problem(
            (*base_path, "matrix"), label, "matrix", "must be a mapping of field -> list of values"
        )
        return None
    axes: list[tuple[str, list[Any]]] = []
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            doc.problem(
                (*base_path, "matrix", key), label, f"matrix.{key}", "must be a non-empty list"
            )
            return None
        axes.append((key, values))
    name = entry.get("name")
    if not isinstance(name, str):
        doc.problem(
            base_path, label, "name", "a matrix entry needs a name pattern such as se_r{reduction}"
        )
        return None
    if len(name) > MAX_NAME_PATTERN:
        doc.problem(
            (*base_path, "name"),
            "",
            "name",
            f"a name pattern of {len(name)} characters; at most {MAX_NAME_PATTERN}",
        )
        return None
    unknown = sorted(set(_PLACEHOLDER.findall(name)) - {key for key, _ in axes})
    if unknown:
        doc.problem(
            (*base_path, "name"),
            label,
            "name",
            f"placeholder {{{unknown[0]}}} is not a matrix field",
        )
        return None
    used = set(_PLACEHOLDER.findall(name))
    bad = False
    for key, values in axes:
        if key not in used:
            continue
        for i, value in enumerate(values):
            part = _name_part(value)
            if len(part) > MAX_NAME_PART:
                doc.problem(
                    (*base_path, "matrix", key, i),
                    label,
                    f"matrix.{key}",
                    f"this value names variants with {len(part)} characters; at most "
                    f"{MAX_NAME_PART} (leave {{{key}}} out of the name pattern)",
                )
                bad = True
    return None if bad else axes


def _expand(
    doc: _Document, index: int, entry: dict[str, Any], count: _Count
) -> list[tuple[dict[str, Any], dict[str, Path_]]]:
    """A variant, or a matrix entry's combinations; each with the source path of its matrix fields.

    Matrices are counted against the budget before they are expanded, so a small file cannot ask
    for millions of variants.
    """
    base_path: Path_ = ("variants", index)
    if "matrix" not in entry:
        total = 1
        axes: list[tuple[str, list[Any]]] = []
    else:
        found = _matrix_axes(doc, index, entry)
        if found is None:
            return []
        axes = found
        total = math.prod(len(values) for _, values in axes)
    budget = count.budget
    if count.file + total > budget.variants_per_file:
        doc.problem(
            (*base_path, "matrix") if axes else base_path,
            _label(entry, index),
            "matrix" if axes else "",
            f"the file expands to more than {budget.variants_per_file} variants "
            f"({count.file} before this entry, {total} here)",
        )
        return []
    if count.run + total > budget.variants:
        doc.problem(
            (*base_path, "matrix") if axes else base_path,
            _label(entry, index),
            "matrix" if axes else "",
            f"the specs expand to more than {budget.variants} variants ({count.run} before this "
            f"entry, {total} here); raise the budget with --max-variants",
        )
        return []
    count.file += total
    count.run += total
    if not axes:
        return [(entry, {})]
    name = entry["name"]
    base = {k: v for k, v in entry.items() if k != "matrix"}
    out = []
    for combo in itertools.product(*(range(len(values)) for _, values in axes)):
        data = dict(base)
        sources: dict[str, Path_] = {}
        for (key, values), i in zip(axes, combo, strict=True):
            _set_path(data, key, values[i])
            sources[key] = (*base_path, "matrix", key, i)
        chosen = {key: values[i] for (key, values), i in zip(axes, combo, strict=True)}
        data["name"] = _PLACEHOLDER.sub(lambda m: _name_part(chosen[m.group(1)]), name)  # noqa: B023
        out.append((data, sources))
    return out


def _close(word: str, options: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word[:100], sorted(options), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def _fields_at(kind: str, loc: tuple[str | int, ...]) -> set[str]:
    """The field names allowed in the mapping at ``loc`` of a variant of ``kind``."""
    model: Any = specs.MODELS.get(kind)
    for part in loc:
        info = model.model_fields.get(part) if model is not None else None
        model = info.annotation if info is not None else None
    return (
        set(model.model_fields)
        if isinstance(model, type) and hasattr(model, "model_fields")
        else set()
    )


_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "Yes", "No", "On", "Off", "YES", "NO"}


def _message(error: ErrorDetails, kind: str, loc: tuple[str | int, ...]) -> str:
    etype = error["type"]
    if etype == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", ""))
        return (
            f"unknown kind {clip(tag, 60)!r}{_close(tag, specs.KIND_NAMES)} "
            f"(kinds: {', '.join(specs.KIND_NAMES)})"
        )
    if etype == "union_tag_not_found":
        return f"missing required field (one of: {', '.join(specs.KIND_NAMES)})"
    if etype == "extra_forbidden":
        allowed = _fields_at(kind, loc[:-1])
        return f"unknown field {clip(str(loc[-1]), 60)!r}{_close(str(loc[-1]), allowed)}"
    if etype == "missing":
        return "missing required field"
    given = error.get("input")
    if etype == "bool_type" and isinstance(given, str) and given in _YAML11_BOOLS:
        return f"{given!r} is a string in YAML 1.2; write true or false"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _validate_entry(
    doc: _Document, path: Path_, data: dict[str, Any], sources: dict[str, Path_]
) -> specs.AnySpec | None:
    label = _label(data, path[-1])
    try:
        return specs.validate(data)
    except ValidationError as exc:
        kind = data["kind"] if isinstance(data.get("kind"), str) else ""
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            if loc and loc[0] == kind:  # the discriminated union puts the tag first
                loc = loc[1:]
            if error["type"].startswith("union_tag"):
                loc = ("kind",)
            fld = ".".join(str(p) for p in loc)
            source = next(
                (sources[k] for k in sources if fld == k or fld.startswith(k + ".")), None
            )
            target = source if source is not None else (*path, *loc)
            doc.problem(
                target,
                label,
                fld,
                _message(error, kind, loc),
                key=error["type"] == "extra_forbidden",
            )
        return None


def load_file(
    path: Path, count: _Count | None = None, display: str | None = None
) -> tuple[list[Variant], list[Problem]]:
    """Validate one spec file; returns its variants and every problem found in it."""
    count = count or _Count(Budget())
    count.file = 0
    doc = parse_file(path, display)
    variants: list[Variant] = []
    if doc.problems:
        return variants, doc.problems
    top = doc.value
    if not isinstance(top, dict):
        doc.problem(
            (),
            "",
            "",
            f"the top level must be a mapping with a 'variants' list, not a {type(top).__name__}",
        )
        return variants, doc.problems
    for key in top:
        if key != "variants":
            doc.problem(
                (key,),
                "",
                key,
                f"unknown top-level key{_close(key, ['variants'])} (only 'variants' is allowed)",
                key=True,
            )
    entries = top.get("variants")
    if not isinstance(entries, list):
        what = "missing" if entries is None else f"a {type(entries).__name__}"
        doc.problem(("variants",), "", "variants", f"must be a list of variants, got {what}")
        return variants, doc.problems
    for index, entry in enumerate(entries):
        where: Path_ = ("variants", index)
        if not isinstance(entry, dict):
            doc.problem(
                where,
                f"variants[{index}]",
                "",
                f"each variant must be a mapping, got {type(entry).__name__}",
            )
            continue
        for data, sources in _expand(doc, index, entry, count):
            model = _validate_entry(doc, where, data, sources)
            if model is not None:
                line, _ = doc.where(where)
                variants.append(Variant(model, path.name, line, doc.display))
    return variants, doc.problems


def spec_files(specs_dir: Path) -> tuple[list[Path], list[Problem]]:
    """The spec files of a directory (``*.yaml`` and ``*.yml`` directly in it, sorted by name), and
    the problems of entries that look like spec files but cannot be (unsafe names, directories,
    dangling links, unreadable files)."""
    display = display_path(specs_dir)
    try:
        entries = sorted(specs_dir.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return [], [Problem(display, 1, 1, "", "", f"cannot read the directory: {exc.strerror}")]
    files, problems = [], []
    for path in entries:
        if not path.name.endswith((".yaml", ".yml")):
            continue
        where = display_path(path)
        if not SAFE_FILE_NAME.match(path.name):
            problems.append(
                Problem(
                    where,
                    1,
                    1,
                    "",
                    "",
                    "a spec file's name may hold letters, digits, '_', '.' and '-' only "
                    "(it is named in generated code); rename it",
                )
            )
        elif path.is_symlink() and not path.exists():
            problems.append(Problem(where, 1, 1, "", "", "a dangling symbolic link"))
        elif not path.is_file():
            problems.append(Problem(where, 1, 1, "", "", "not a regular file"))
        else:
            files.append(path)
    return files, problems


def load_specs(*specs_dirs: Path | str, budget: Budget | None = None) -> list[Variant]:
    """Validate every spec file in the directories; raises ``SpecError`` listing every problem.

    Names must be unique across all of them; a run with no spec file at all is an error (it would
    otherwise remove every generated module).
    """
    budget = budget or Budget()
    files: list[Path] = []
    problems: list[Problem] = []
    for directory in map(Path, specs_dirs):
        if not directory.is_dir():
            problems.append(Problem(display_path(directory), 1, 1, "", "", "no such directory"))
            continue
        found, bad = spec_files(directory)
        files.extend(found)
        problems.extend(bad)
        if not found and not bad:
            problems.append(
                Problem(display_path(directory), 1, 1, "", "", "no spec files (*.yaml, *.yml) here")
            )
    count = _Count(budget)
    seen: dict[str, tuple[str, int]] = {}
    variants: list[Variant] = []
    for path in files:
        found_variants, file_problems = load_file(path, count)
        problems.extend(file_problems)
        for variant in found_variants:
            display = variant.display
            if variant.name in seen:
                other_file, other_line = seen[variant.name]
                if (other_file, other_line) == (display, variant.line):
                    message = "the matrix expands to this name more than once; add its fields to the name pattern"
                else:
                    message = f"duplicate variant name (also at {other_file}:{other_line})"
                problems.append(Problem(display, variant.line, 1, variant.name, "name", message))
                continue
            seen[variant.name] = (display, variant.line)
            variants.append(variant)
    if problems:
        raise SpecError(problems, budget.problems_shown)
    return sorted(variants, key=lambda v: v.name)


__all__ = [
    "Budget",
    "Problem",
    "SpecError",
    "Variant",
    "display_path",
    "load_file",
    "load_specs",
    "parse_file",
    "spec_files",
]
