"""The repository's scripts: run as files (`python scripts/demo.py`), and importable as `scripts.<name>` from the
repository root, where the tests find them (pytest's `pythonpath`) without editing sys.path."""
