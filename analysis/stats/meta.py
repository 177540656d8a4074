"""Random-effects meta-analysis of correlations across runs (pure): Fisher z, DerSimonian-Laird tau^2,
Hartung-Knapp-Sidik-Jonkman inference.

Each run contributes its lag-0 primary r and the Fisher-z 95 % CI the run's report gives for it (a CI
from the effective sample size, so each run's autocorrelation is already in its standard error).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from thermograd.analysis.stats import Z_95


def z_and_se(r: float, ci: list[float], level_z: float = Z_95) -> tuple[float, float]:
    """A run's Fisher z and its standard error, from r and its Fisher-z CI: se = (atanh hi - atanh lo) / 2z.

    Parameters
    ----------
    r : the run's correlation, in (-1, 1).
    ci : [lo, hi], the run's Fisher-z interval for r; level_z: its normal quantile (Z_95: a 95 % interval).

    Returns
    -------
    (z, se) : atanh(r) and the standard error on the z scale.

    References
    ----------
    Fisher (1915), Biometrika 10, 507-521; Fisher (1921), Metron 1, 3-32 (the z transform).
    """
    lo, hi = ci
    return float(np.arctanh(r)), float((np.arctanh(hi) - np.arctanh(lo)) / (2 * level_z))


def dersimonian_laird(z: np.ndarray, se: np.ndarray, alpha: float = 0.05) -> dict:
    """Pooled z under random effects (DerSimonian & Laird 1986) with Cochran's Q, tau^2, I^2, a (1 - alpha)
    CI and p of the pooled r and, from three runs on, the prediction interval of a new run's r (Higgins et
    al. 2009, t with k - 2 df). I^2 is undefined (None) for one run.

    The CI and p (`ci`, `p`, `se_z`) are Hartung-Knapp-Sidik-Jonkman's from two runs on: the pooled z's
    standard error rescaled by the runs' own spread around it, with a t on k - 1 df. With the handful of
    runs a lab has, tau^2 is barely estimated and DerSimonian-Laird's normal interval is too narrow
    (simulated with no pooled effect, k = 3-5 runs and a between-run sd of 0.1-0.2 on the z scale: 10-17 %
    false positives at 5 %; IntHout et al. 2014 report the same). The scale is floored at 1, so the interval
    is never narrower than DerSimonian-Laird's (the "modified" form, Roever et al. 2015): at most 5 % there,
    conservative at k = 3. The normal-theory numbers are kept under `dl`.

    Parameters
    ----------
    z, se : the runs' Fisher z and its standard error (`z_and_se`), one each per run; every z finite, every se
        finite and positive (else ValueError).
    alpha : the intervals are (1 - alpha), the p-values two-sided.

    Returns
    -------
    dict
        k : the runs; method: the method in words.
        r, z : the pooled correlation (tanh of the pooled z) and the pooled z under random effects.
        ci, se_z, p : the pooled r's interval, the pooled z's standard error and its p: Hartung-Knapp-
            Sidik-Jonkman's (t on k - 1 df, scale floored at 1) from two runs on, the normal-theory ones for
            one run.
        hksj_scale : the runs' weighted spread around the pooled z (None for one run); inference: which
            inference gave ci, se_z and p, in words.
        dl : DerSimonian-Laird's normal-theory ci, se_z and p.
        tau2, tau : the between-run variance on the z scale (DerSimonian-Laird's moment estimate, at least 0).
        q, q_df, q_p : Cochran's Q, its k - 1 df and its chi-square p (None for one run).
        i2 : Higgins' I^2 = (Q - df) / Q, at least 0 (None for one run).
        weights : each run's random-effects weight, summing to 1.
        prediction_interval : the (1 - alpha) interval of a new run's r, t on k - 2 df with variance
            tau2 + the DerSimonian-Laird se_z^2 (None under three runs).

    References
    ----------
    Fisher (1915), Biometrika 10, 507-521; Fisher (1921), Metron 1, 3-32 (the z transform).
    DerSimonian & Laird (1986), Control. Clin. Trials 7, 177-188 (random effects, tau^2).
    Hartung & Knapp (2001), Stat. Med. 20, 3875-3889; Sidik & Jonkman (2002), Stat. Med. 21, 3153-3159
    (the t-based interval).
    Röver, Knapp & Friede (2015), BMC Med. Res. Methodol. 15, 99 (the scale floored at 1).
    Higgins, Thompson & Spiegelhalter (2009), J. R. Stat. Soc. A 172, 137-159 (the prediction interval).
    IntHout, Ioannidis & Borm (2014), BMC Med. Res. Methodol. 14, 25 (DerSimonian-Laird's intervals with few
    studies).
    """
    z, se = np.asarray(z, dtype=float), np.asarray(se, dtype=float)
    k = int(z.size)
    if k == 0 or z.shape != se.shape or not (np.all(np.isfinite(z)) and np.all(se > 0) and np.all(np.isfinite(se))):
        raise ValueError("dersimonian_laird needs one finite z and one positive, finite se per run")
    w = 1.0 / se**2
    z_fixed = float(np.sum(w * z) / np.sum(w))
    q = float(np.sum(w * (z - z_fixed) ** 2))
    df = k - 1
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - df) / c) if df > 0 and c > 0 else 0.0
    w_re = 1.0 / (se**2 + tau2)
    z_re = float(np.sum(w_re * z) / np.sum(w_re))
    se_re = float(math.sqrt(1.0 / np.sum(w_re)))
    crit = float(stats.norm.ppf(1 - alpha / 2))
    dl = {"ci": [float(np.tanh(z_re - crit * se_re)), float(np.tanh(z_re + crit * se_re))], "se_z": se_re,
          "p": float(2 * stats.norm.sf(abs(z_re) / se_re))}
    if df > 0:
        hksj_scale = float(np.sum(w_re * (z - z_re) ** 2) / df)
        se_hk = se_re * math.sqrt(max(1.0, hksj_scale))
        crit_t = float(stats.t.ppf(1 - alpha / 2, df))
        inference = {"ci": [float(np.tanh(z_re - crit_t * se_hk)), float(np.tanh(z_re + crit_t * se_hk))],
                     "se_z": se_hk, "p": float(2 * stats.t.sf(abs(z_re) / se_hk, df)), "hksj_scale": hksj_scale,
                     "inference": f"Hartung-Knapp-Sidik-Jonkman (scale floored at 1), t with {df} df"}
    else:  # one run: the pooled r is that run's, with its own interval
        inference = {**dl, "hksj_scale": None, "inference": "one run: its own normal-theory interval"}
    out = {
        "k": k, "method": "random effects on Fisher z: DerSimonian-Laird tau^2, Hartung-Knapp-Sidik-Jonkman CI",
        "r": float(np.tanh(z_re)), "z": z_re, **inference, "dl": dl,
        "tau2": tau2, "tau": math.sqrt(tau2), "q": q, "q_df": df,
        "q_p": float(stats.chi2.sf(q, df)) if df > 0 else None,
        "i2": (max(0.0, (q - df) / q) if q > 0 else 0.0) if df > 0 else None,
        "weights": (w_re / np.sum(w_re)).tolist(),
        "prediction_interval": None,
    }
    if k >= 3:
        half = float(stats.t.ppf(1 - alpha / 2, k - 2)) * math.sqrt(tau2 + se_re**2)
        out["prediction_interval"] = [float(np.tanh(z_re - half)), float(np.tanh(z_re + half))]
    return out
