"""The one home of the tests' and benches' helpers: generators of synthetic runs and jobs, a backfilled
Prometheus, a fake NVML, the native stack launcher (`stack`), the fault suite's processes and socket clients
(`faults`), certificates (`tls`) and the foreign-exporter stand-in (`python -m testkit.standin_exporter`).

Not part of the installed package (pyproject.toml ships thermograd/, exporter/, trainer/ and analysis/): pytest
finds it from the repository root (`pythonpath`), benches and scripts run as modules from the root
(`python -m bench.bench_job`), so nothing edits sys.path."""
