from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, settings

# CI runs the fuzz tests derandomized so every run tries the same examples.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# --- comparisons with real anchors (tests/timm_interop, tests/transformers_interop) ----------------
# Each comparison records its worst error; under xdist the workers hand theirs to the controller,
# which prints one summary line per anchor for the whole run.
ERRORS: list[tuple[str, str, float]] = []


@pytest.fixture
def errors(request: pytest.FixtureRequest) -> _Recorder:
    """Where a test records (what, max relative error) for the summary line of its anchor (the
    test's directory: timm_interop -> timm)."""
    return _Recorder(request.node.path.parent.name.removesuffix("_interop"))


class _Recorder:
    def __init__(self, anchor: str) -> None:
        self.anchor = anchor

    def append(self, record: tuple[str, float]) -> None:
        ERRORS.append((self.anchor, *record))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: send the records to the controller
        workeroutput["attnforge_anchor_errors"] = json.dumps(ERRORS)


def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
    ERRORS.extend(
        tuple(e) for e in json.loads(node.workeroutput.get("attnforge_anchor_errors", "[]"))
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for anchor in sorted({e[0] for e in ERRORS}):
        mine = [e for e in ERRORS if e[0] == anchor]
        worst = max(mine, key=lambda e: e[2])
        terminalreporter.write_line(
            f"attnforge vs {anchor}: {len(mine)} comparisons, max error {worst[2]:.3g} relative "
            f"to each tensor's scale ({worst[1]})"
        )
