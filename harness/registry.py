"""The registry: variant name -> module class, read from a generated package's static index.

    from harness.registry import names, build, spec_of
    names("mha")                       # ['mha_causal', 'mha_cross', ...]
    block = build("se_resnet", 64)     # SeResnet(64)
    spec_of("se_resnet").reduction     # 16

The default catalogue is the repository's ``generated/`` package; ``Catalogue(path)`` reads another
(a sweep generates into a temporary one). Only the variants you build are imported.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "generated"
ENV_VAR = "ATTNFORGE_CATALOGUE"


class Catalogue:
    """A generated package on disk, imported lazily by its directory name."""

    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self.package = self.path.name

    @cached_property
    def index(self) -> ModuleType:
        parent = str(self.path.parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        module = importlib.import_module(self.package)
        found = Path(module.__file__ or "").resolve().parent
        if found != self.path:
            raise ImportError(
                f"package {self.package!r} is already imported from {found}, not {self.path}"
            )
        return module

    @property
    def variants(self) -> dict[str, tuple[str, str, str]]:
        return self.index.VARIANTS

    def names(self, kind: str | None = None) -> list[str]:
        """Sorted variant names, optionally of one kind."""
        return sorted(n for n, (k, _, _) in self.variants.items() if kind is None or k == kind)

    def _entry(self, name: str) -> tuple[str, str, str]:
        try:
            return self.variants[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.variants, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"unknown variant {name!r}{hint} ({len(self.variants)} known: `python -m harness list`)"
            ) from None

    def kind_of(self, name: str) -> str:
        return self._entry(name)[0]

    def module(self, name: str) -> ModuleType:
        self._entry(name)
        return importlib.import_module(f"{self.package}.{name}")

    def cls(self, name: str) -> type:
        """The module class of variant ``name``."""
        return getattr(self.module(name), self._entry(name)[2])

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``cls(name)(*args, **kwargs)``."""
        return self.cls(name)(*args, **kwargs)

    def spec_of(self, name: str) -> Any:
        """The validated spec the variant was generated from."""
        from .spec import validate

        return validate(self.module(name).SPEC)


default = Catalogue(os.environ.get(ENV_VAR) or DEFAULT_DIR)
names = default.names
build = default.build
spec_of = default.spec_of
