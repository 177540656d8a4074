"""Shared fixtures: the reference data beside the checkout, free ports, the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.stacklib import free_port  # (tests import it from here: a loopback port free a moment ago)

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


# make test's parallel pass (scripts/test.sh: pytest -n --dist loadgroup) spreads the tests over the workers one by
# one; a test that uses a module-scoped fixture (a running Prometheus, VictoriaMetrics, a training job) stays on
# one worker with its module's others, so that fixture starts once.
SHARED_SCOPES = ("module", "class", "package")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):  # -p no:xdist: no groups to keep (nor their marker)
        return
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and any(d.scope in SHARED_SCOPES for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
