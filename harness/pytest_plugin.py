"""pytest plugin: every check on every variant of a catalogue, as ``<variant>-<check>-<case>`` tests.

Enabled by ``tests/conftest.py`` (or ``-p harness.pytest_plugin``). A test function that takes the
``attnforge_case`` fixture is parametrized over the catalogue; each case seeds torch from its id.

Options:
  --variants GLOB[,GLOB]   only variants matching one of the globs (default: all)
  --devices cpu[,cuda]     devices for the checks (default: cpu, plus cuda when available);
                           CUDA cases on a machine without CUDA are skipped with the reason
  --shard I/N              keep the tests whose stable id hash falls in shard I of N (1-based)
  --gradcheck fast|full    torch.autograd.gradcheck mode (default: fast)
  --depth full|quick       every case of every check, or fewer where a check says so (sweeps)
  --checks NAME[,NAME]     only these checks (default: every check of the plan; ``inductor`` is
                           available on request)
  --catalogue DIR          the generated package to check (default: generated/, or $ATTNFORGE_CATALOGUE)
"""

from __future__ import annotations

import fnmatch
import os
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness import checks, registry


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnforge", "attnforge harness")
    group.addoption(
        "--variants", default="*", help="comma-separated globs of variant names to check"
    )
    group.addoption(
        "--devices",
        default=None,
        help="comma-separated devices: cpu, cuda (default: cpu, plus cuda when available)",
    )
    group.addoption(
        "--shard",
        default=None,
        help="I/N: run shard I of N (1-based), split by a stable hash of the test id",
    )
    group.addoption(
        "--gradcheck",
        choices=("fast", "full"),
        default="fast",
        help="gradcheck mode (default: fast)",
    )
    group.addoption(
        "--catalogue", default=None, help="generated package directory (default: generated/)"
    )
    group.addoption(
        "--depth",
        choices=("full", "quick"),
        default="full",
        help="full: every case of every check; quick: fewer cases where a check says so (sweeps)",
    )
    group.addoption(
        "--checks",
        default=None,
        help="comma-separated checks to run (default: the whole plan; inductor on request)",
    )


def _shard(config: pytest.Config) -> tuple[int, int] | None:
    value = config.getoption("--shard")
    if value is None:
        return None
    try:
        i, n = (int(p) for p in value.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard must be I/N with 1 <= I <= N, got {value!r}") from None
    if not 1 <= i <= n:
        raise pytest.UsageError(f"--shard must be I/N with 1 <= I <= N, got {value!r}")
    return i, n


def _checks(config: pytest.Config) -> list[str] | None:
    value = config.getoption("--checks")
    if value is None:
        return None
    from harness.checks import CHECKS, EXTRA_CHECKS

    names = [c.strip() for c in value.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CHECKS) - set(EXTRA_CHECKS))
    if unknown or not names:
        known = ", ".join([*CHECKS, *EXTRA_CHECKS])
        raise pytest.UsageError(f"--checks takes names among {known}; got {value!r}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    _shard(config)  # fail fast on a malformed --shard, --devices or --checks
    _checks(config)
    if config.getoption("--devices") is not None:
        _devices(config)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)  # one thread per xdist worker: no oversubscription


@cache
def _catalogue(path: str | None) -> registry.Catalogue:
    from harness import registry

    return registry.Catalogue(path) if path else registry.default


@cache
def _subject(path: str | None, name: str) -> checks.Subject:
    from harness.checks import Subject

    return Subject.of(name, _catalogue(path))


def _devices(config: pytest.Config) -> list[str]:
    value = config.getoption("--devices")
    if value is None:
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    devices = [d.strip() for d in value.split(",") if d.strip()]
    unknown = sorted(set(devices) - {"cpu", "cuda"})
    if unknown or not devices:
        raise pytest.UsageError(f"--devices takes cpu and/or cuda, got {value!r}")
    return devices


@dataclass(frozen=True)
class HarnessCase:
    catalogue: str | None
    variant: str
    check: str
    case: str
    dtype: str
    device: str

    @property
    def id(self) -> str:
        suffix = "" if self.device == "cpu" or self.check == "parity" else f"-{self.device}"
        return f"{self.variant}-{self.check}-{self.case}-{self.dtype}{suffix}"

    def run(self, gradcheck: str = "fast") -> None:
        import torch

        from harness import checks

        try:
            checks.run(
                self.check,
                _subject(self.catalogue, self.variant),
                self.case,
                getattr(torch, self.dtype),
                self.device,
                checks.seed_of(self.id),
                gradcheck=gradcheck,
            )
        except checks.CheckSkipped as exc:
            pytest.skip(str(exc))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "attnforge_case" not in metafunc.fixturenames:
        return
    from harness import checks

    config = metafunc.config
    path = config.getoption("--catalogue") or os.environ.get("ATTNFORGE_CATALOGUE")
    path = str(Path(path).resolve()) if path else None
    patterns = [p.strip() for p in config.getoption("--variants").split(",") if p.strip()]
    devices = _devices(config)
    selected = _checks(config)
    cases = []
    for name in _catalogue(path).names():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        planned = checks.plan(_subject(path, name), devices, selected, config.getoption("--depth"))
        for check, case, dtype, device in planned:
            cases.append(HarnessCase(path, name, check, case, checks.dtype_name(dtype), device))
    metafunc.parametrize("attnforge_case", cases, ids=[c.id for c in cases])


@pytest.fixture
def attnforge_options(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"gradcheck": request.config.getoption("--gradcheck")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = _shard(config)
    if shard is None:
        return
    i, n = shard
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if zlib.crc32(item.nodeid.encode()) % n == i - 1 else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
