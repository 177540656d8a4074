"""Pure numpy/scipy statistics for the coupling analysis (no I/O)."""

Z_95 = 1.959963984540054  # the standard normal quantile of a two-sided 95 % interval: norm.ppf(0.975)
