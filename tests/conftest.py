"""Shared fixtures: the reference data beside the checkout, free ports, the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.stack import free_port  # (tests import it from here: a loopback port free a moment ago)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (present for developers and CI, absent in a user's clone)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"reference data not available: {SHARED_DIR} is absent (it exists only beside the team's checkout)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def rle_lab_csv(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "rle-lab" / "rle_20251028_08.csv"
    if not path.is_file():
        pytest.skip(f"reference trace not available: {path} is absent")
    return path




@pytest.fixture
def port() -> int:
    return free_port()


# make test's parallel pass (scripts/test.sh: pytest -n): each test module goes to one worker whole, so a
# module-scoped fixture (a running Prometheus, VictoriaMetrics, a training job) starts once, except the modules
# below, whose many independent simulations are spread test by test (they are most of the pass's CPU time).
SPREAD_MODULES = ("tests/test_analysis_zoo.py", "tests/test_analysis_spikes.py")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in SPREAD_MODULES else module

    return ModulesWhole(config, log)
