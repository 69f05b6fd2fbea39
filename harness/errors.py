"""What a run may do (``Budget``) and how it says what went wrong instead of a traceback.

Importing this needs the standard library only (the CLI reads it before any extra is imported).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PROBLEMS_SHOWN = 50  # printed; every problem is still collected


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
            parts.append(clip(self.variant, 80))
        if self.field:
            parts.append(clip(self.field, 80))
        parts.append(clip(self.message, 400))
        return ": ".join(parts)


class SpecError(Exception):
    """One or more problems in the spec files; ``str()`` lists them, one a line (at most
    ``shown``, then how many more)."""

    def __init__(self, problems: Iterable[Problem], shown: int = PROBLEMS_SHOWN):
        self.problems = sorted(problems)
        lines = [str(p) for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more problem(s)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Budget:
    """What one run may expand to; ``attnforge generate --max-variants N`` raises the run's cap."""

    variants: int = 20_000  # per run, matrices expanded, all files together
    variants_per_file: int = 10_000
    problems_shown: int = PROBLEMS_SHOWN


class OutputError(Exception):
    """The output directory cannot be written safely; ``str()`` says why. Nothing was written."""
