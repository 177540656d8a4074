"""The benchmarks, run as modules from the repository root: `python -m bench.bench_exporter`, or all of them with
`python -m bench.run_all` (`make bench`). They import each other as `bench.<name>` and their helpers from
`testkit` (the stack launcher `testkit.stack`, the fault suite's clients `testkit.faults`, the generators),
without editing sys.path. Not part of the installed package."""
