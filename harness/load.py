"""Load spec files: YAML with positions, then pydantic, with every problem pointing at its line.

Nothing in a spec is executed: YAML is composed with PyYAML's safe loader into nodes, and the nodes
are turned into plain values here (only the YAML core types: mappings, sequences, strings, numbers,
booleans, null). Duplicate keys, unknown tags, alias bombs and oversized files are errors. Every
problem of a run is collected and reported together as

    specs/<file>.yaml:<line>:<col>: <variant>: <field>: <message>
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from . import spec as specs

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # after alias expansion: a "billion laughs" document stops here
MAX_DEPTH = 32
MAX_VARIANTS_PER_FILE = 10_000

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    variant: str = ""
    field: str = ""
    message: str = ""

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}:{self.col}"]
        if self.variant:
            parts.append(self.variant)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class SpecError(Exception):
    """One or more problems in the spec files; ``str()`` lists them, one a line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(map(str, self.problems)))


@dataclass(frozen=True)
class Variant:
    """A validated variant and where it came from."""

    spec: Any  # one of harness.spec's models
    file: str  # the spec file's name, relative to its specs directory
    line: int
    source: str = ""  # "<specs dir name>/<file>": what generated headers name (no absolute paths)

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


_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


class _Converter:
    def __init__(self, doc: _Document, loader: yaml.SafeLoader):
        self.doc = doc
        self.loader = loader
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
                raise _BadNode(node, f"tag {node.tag!r} is not allowed")
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
                    raise _BadNode(key_node, f"duplicate key {key!r} (first at line {first[0]})")
                self.doc.key_marks[(*path, key)] = _mark(key_node)
                result[key] = self.convert(value_node, (*path, key), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise _BadNode(node, f"tag {node.tag!r} is not allowed")
            return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if node.tag not in _SCALAR_TAGS:
            raise _BadNode(node, f"tag {node.tag!r} is not allowed (only plain YAML values)")
        return self.loader.construct_object(node)


class _BadNode(Exception):
    def __init__(self, node: yaml.Node, message: str):
        super().__init__(message)
        self.node = node
        self.message = message


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_file(path: Path) -> _Document:
    """Read one spec file into plain values and positions; problems are recorded, not raised."""
    doc = _Document(display_path(path))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            doc.problem((), "", "", f"file is {size} bytes, more than the {MAX_FILE_BYTES} allowed")
            return doc
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        doc.problem((), "", "", f"cannot read: {exc}")
        return doc
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, found before parsing
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        doc.problems.append(
            Problem(
                doc.display, line, col, "", "", f"YAML: character {exc.character!r} is not allowed"
            )
        )
        return doc
    try:
        node = loader.get_single_node()
        if node is None:
            doc.problem((), "", "", "empty file: expected a mapping with a 'variants' list")
            return doc
        doc.value = _Converter(doc, loader).convert(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        doc.problems.append(Problem(doc.display, line, col, "", "", f"YAML syntax: {message}"))
    except yaml.YAMLError as exc:
        doc.problem((), "", "", "YAML: " + " ".join(str(exc).split()))
    except _BadNode as exc:
        line, col = _mark(exc.node)
        doc.problems.append(Problem(doc.display, line, col, "", "", exc.message))
    finally:
        loader.dispose()
    return doc


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


def _expand(
    doc: _Document, index: int, entry: dict[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Path_]]]:
    """A variant, or a matrix entry's combinations; each with the source path of its matrix fields."""
    if "matrix" not in entry:
        return [(entry, {})]
    base_path: Path_ = ("variants", index)
    label = _label(entry, index)
    matrix = entry["matrix"]
    if not isinstance(matrix, dict) or not matrix:
        doc.problem(
            (*base_path, "matrix"), label, "matrix", "must be a mapping of field -> list of values"
        )
        return []
    axes: list[tuple[str, list[Any]]] = []
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            doc.problem(
                (*base_path, "matrix", key), label, f"matrix.{key}", "must be a non-empty list"
            )
            return []
        axes.append((key, values))
    total = 1
    for _, values in axes:
        total *= len(values)
    if total > MAX_VARIANTS_PER_FILE:
        doc.problem(
            (*base_path, "matrix"),
            label,
            "matrix",
            f"expands to {total} variants, more than {MAX_VARIANTS_PER_FILE}",
        )
        return []
    name = entry.get("name")
    if not isinstance(name, str):
        doc.problem(
            base_path, label, "name", "a matrix entry needs a name pattern such as se_r{reduction}"
        )
        return []
    unknown = sorted(set(_PLACEHOLDER.findall(name)) - {key for key, _ in axes})
    if unknown:
        doc.problem(
            (*base_path, "name"),
            label,
            "name",
            f"placeholder {{{unknown[0]}}} is not a matrix field",
        )
        return []
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
    matches = difflib.get_close_matches(word, sorted(options), n=3, cutoff=0.6)
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


def _message(error: ErrorDetails, kind: str, loc: tuple[str | int, ...]) -> str:
    etype = error["type"]
    if etype == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", ""))
        return f"unknown kind {tag!r}{_close(tag, specs.KIND_NAMES)} (kinds: {', '.join(specs.KIND_NAMES)})"
    if etype == "union_tag_not_found":
        return f"missing required field (one of: {', '.join(specs.KIND_NAMES)})"
    if etype == "extra_forbidden":
        allowed = _fields_at(kind, loc[:-1])
        return f"unknown field {loc[-1]!r}{_close(str(loc[-1]), allowed)}"
    if etype == "missing":
        return "missing required field"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _validate_entry(
    doc: _Document, path: Path_, data: dict[str, Any], sources: dict[str, Path_]
) -> Any | None:
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


def load_file(path: Path) -> tuple[list[Variant], list[Problem]]:
    """Validate one spec file; returns its variants and every problem found in it."""
    doc = parse_file(path)
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
        for data, sources in _expand(doc, index, entry):
            model = _validate_entry(doc, where, data, sources)
            if model is not None:
                line, _ = doc.where(where)
                variants.append(Variant(model, path.name, line, f"{path.parent.name}/{path.name}"))
    return variants, doc.problems


def spec_files(specs_dir: Path) -> list[Path]:
    """The spec files of a directory: ``*.yaml`` and ``*.yml`` directly in it, sorted by name."""
    return sorted(p for p in specs_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_specs(*specs_dirs: Path | str) -> list[Variant]:
    """Validate every spec file in the directories; raises ``SpecError`` listing every problem.

    Names must be unique across all of them.
    """
    files: list[Path] = []
    for directory in map(Path, specs_dirs):
        if not directory.is_dir():
            raise SpecError([Problem(display_path(directory), 1, 1, "", "", "no such directory")])
        files.extend(spec_files(directory))
    problems: list[Problem] = []
    seen: dict[str, tuple[str, int]] = {}
    variants: list[Variant] = []
    for path in files:
        found, file_problems = load_file(path)
        problems.extend(file_problems)
        display = display_path(path)
        for variant in found:
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
        raise SpecError(problems)
    return sorted(variants, key=lambda v: v.name)


__all__ = [
    "Problem",
    "SpecError",
    "Variant",
    "display_path",
    "load_file",
    "load_specs",
    "parse_file",
    "spec_files",
]
