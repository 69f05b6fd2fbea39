"""The registry: variant name -> module class, read from a generated package's static index.

    import attnforge
    attnforge.names("mha")                   # ['mha_causal', 'mha_cross', ...]
    block = attnforge.build("se_resnet", 64)   # SeResnet(64)
    attnforge.spec_of("se_resnet").reduction   # 16 (needs pydantic: pip install 'attnforge[generate]')

The default catalogue is the installed ``attnforge.generated``; ``Catalogue.at(path)`` reads a
package generated anywhere else (``attnforge generate --out mypkg``). Importing a catalogue imports
its index only; a variant's module is imported when it is built. Nothing here needs more than the
standard library until a block is built (torch) or a spec validated (pydantic).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import AnySpec

DEFAULT_PACKAGE = "attnforge.generated"


class Catalogue:
    """A generated package, imported lazily: by its import name, or from a directory on disk."""

    def __init__(self, package: str = DEFAULT_PACKAGE, path: Path | None = None):
        self.package = package
        self.path = path

    @classmethod
    def at(cls, path: Path | str) -> Catalogue:
        """The package generated in directory ``path`` (imported by the directory's name)."""
        resolved = Path(path).resolve()
        return cls(resolved.name, resolved)

    @cached_property
    def index(self) -> ModuleType:
        if self.path is not None:
            parent = str(self.path.parent)
            if parent not in sys.path:
                sys.path.insert(0, parent)
        module = importlib.import_module(self.package)
        if self.path is not None:
            found = Path(module.__file__ or "").resolve().parent
            if found != self.path:
                raise ImportError(
                    f"package {self.package!r} is already imported from {found}, not {self.path}"
                )
        return module

    @property
    def directory(self) -> Path:
        """Where the package's files are."""
        return self.path or Path(self.index.__file__ or "").resolve().parent

    @property
    def variants(self) -> dict[str, tuple[str, str, str, str]]:
        """name -> (kind, spec file, class name, one-line description)."""
        variants: dict[str, tuple[str, str, str, str]] = self.index.VARIANTS
        return variants

    def names(self, kind: str | None = None) -> list[str]:
        """Sorted variant names, optionally of one kind."""
        return sorted(n for n, entry in self.variants.items() if kind is None or entry[0] == kind)

    def _entry(self, name: str) -> tuple[str, str, str, str]:
        try:
            return self.variants[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.variants, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"unknown variant {name!r}{hint} ({len(self.variants)} known: `attnforge list`)"
            ) from None

    def kind_of(self, name: str) -> str:
        return self._entry(name)[0]

    def module(self, name: str) -> ModuleType:
        self._entry(name)
        return importlib.import_module(f"{self.package}.{name}")

    def cls(self, name: str) -> type:
        """The module class of variant ``name``."""
        found: type = getattr(self.module(name), self._entry(name)[2])
        return found

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``cls(name)(*args, **kwargs)``."""
        return self.cls(name)(*args, **kwargs)

    def spec_dict(self, name: str) -> dict[str, Any]:
        """The spec the variant was generated from, as the plain mapping its module holds."""
        spec: dict[str, Any] = self.module(name).SPEC
        return spec

    def spec_of(self, name: str) -> AnySpec:
        """The validated spec the variant was generated from (a pydantic model)."""
        try:
            from .spec import validate
        except ImportError as exc:  # pydantic absent: the torch-only runtime
            raise ImportError(
                f"spec_of needs pydantic ({exc.name} is not installed): pip install "
                f"'attnforge[generate]'; spec_dict({name!r}) gives the plain mapping without it"
            ) from exc
        return validate(self.spec_dict(name))


default = Catalogue()
names = default.names
build = default.build
spec_of = default.spec_of
spec_dict = default.spec_dict
