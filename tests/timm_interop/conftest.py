"""The timm tests run where timm imports (tox -e timm: torch 2.14.1 with torchvision and timm).

Each comparison records its worst error; under xdist the workers hand theirs to the controller,
which prints one summary line for the whole run.
"""

from __future__ import annotations

import json

import pytest

ERRORS: list[tuple[str, float]] = []


@pytest.fixture
def errors() -> list[tuple[str, float]]:
    """Where a test records (what, max relative error) for the summary line."""
    return ERRORS


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: send the records to the controller
        workeroutput["attnforge_timm_errors"] = json.dumps(ERRORS)


def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
    ERRORS.extend(
        tuple(e) for e in json.loads(node.workeroutput.get("attnforge_timm_errors", "[]"))
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ERRORS:
        worst = max(ERRORS, key=lambda e: e[1])
        terminalreporter.write_line(
            f"attnforge vs timm: {len(ERRORS)} comparisons, max error {worst[1]:.3g} relative "
            f"to each tensor's scale ({worst[0]})"
        )
