"""The repository's scripts, run as modules from the repository root (`python -m scripts.demo`, `python -m
scripts.build_dashboards`), and importable as `scripts.<name>` there, where the tests find them (pytest's
`pythonpath`). They import each other as `scripts.<name>` and the stack launcher as `testkit.stack`, without
editing sys.path. Not part of the installed package."""
