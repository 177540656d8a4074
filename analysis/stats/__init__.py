"""Pure numpy/scipy statistics for the coupling analysis (no I/O)."""
