"""Generators of synthetic runs, a backfilled Prometheus and a fake NVML, for the tests and benches only.

Not part of the installed package (pyproject.toml ships thermograd/, exporter/, trainer/ and analysis/):
pytest finds it from the repository root (`pythonpath`), the benches put the root on sys.path."""
