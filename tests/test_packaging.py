"""One import namespace (issue 11 §3): the repository's exporter/, trainer/ and analysis/ install as
thermograd.exporter, thermograd.trainer and thermograd.analysis; a wheel holds no other top-level package,
and a training repository's own `trainer.py` is neither shadowed by ours nor shadows ours."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"exporter", "trainer", "analysis"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The venv's own setuptools, offline: what `pip install .` builds in a Dockerfile, without fetching.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("thermograd-*.whl")
    return path


def test_a_wheel_holds_only_the_thermograd_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"thermograd"}
    for sub in SUBPACKAGES:
        assert f"thermograd/{sub}/__init__.py" in names
        assert f"thermograd/{sub}/__main__.py" in names
    assert "thermograd/analysis/series.csv" in names and "thermograd/analysis/stats/lagged.py" in names
    assert "thermograd/exporter/backends/nvml.py" in names
    # every package folder of the repository is in the wheel (a new subpackage must be listed in pyproject)
    for sub in SUBPACKAGES:
        for init in (ROOT / sub).rglob("__init__.py"):
            rel = init.relative_to(ROOT / sub).as_posix()
            assert f"thermograd/{sub}/{rel}" in names, f"{sub}/{rel} missing from the wheel: list it in pyproject"
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for tool in SUBPACKAGES:
        assert f"thermograd-{tool} = thermograd.{tool}.__main__:main" in entry_points
    assert "thermograd = thermograd.cli:main" in entry_points  # thermograd run
    assert "thermograd/endpoint/server.py" in names
    # the tests' and benches' helpers (testkit/) stay out of what users install, nested or not
    assert not [n for n in names if Path(n).stem in {p.stem for p in (ROOT / "testkit").glob("*.py")} - {"__init__"}]


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"thermograd"} | {
        "thermograd." + ".".join((sub, *init.parent.relative_to(ROOT / sub).parts))
        for sub in SUBPACKAGES for init in (ROOT / sub).rglob("__init__.py")} | {
        # thermograd/'s own, e.g. endpoint
        ".".join(("thermograd", *init.parent.relative_to(ROOT / "thermograd").parts))
        for init in (ROOT / "thermograd").glob("*/__init__.py")}
    assert listed == found
    assert {config["package-dir"][f"thermograd.{sub}"] for sub in SUBPACKAGES} == SUBPACKAGES


def test_a_users_own_trainer_module_is_not_shadowed(tmp_path: Path):
    (tmp_path / "trainer.py").write_text("WHOSE = 'the user'\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("WHOSE = 'the user'\n")
    code = ("import trainer, analysis, thermograd\n"
            "from thermograd import TrainingMetrics\n"
            "import thermograd.analysis.catalog\n"
            "print(trainer.WHOSE, analysis.WHOSE, TrainingMetrics.__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["the", "user", "the", "user", "thermograd.trainer.metrics"]


def test_importing_thermograd_loads_no_torch():
    code = ("import sys, thermograd, thermograd.exporter\n"
            "from thermograd import TrainingMetrics\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("tool", sorted(SUBPACKAGES))
def test_console_scripts_and_python_m(tool: str):
    script = Path(sys.executable).with_name(f"thermograd-{tool}")
    for argv in ([str(script), "--help"], [sys.executable, "-m", f"thermograd.{tool}", "--help"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "usage:" in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["run", "--bogus", "--", "true"], ["run"]])
def test_thermograd_answers_help_and_usage_errors_without_a_traceback(argv: list[str]):
    """`thermograd run --help` once raised UnboundLocalError: argparse's own exit passed an except clause naming
    an exception class that was only imported later."""
    script = Path(sys.executable).with_name("thermograd")
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if "--help" in argv:
        assert proc.returncode == 0 and "usage:" in proc.stdout
    else:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
