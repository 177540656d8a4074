"""Lag-0 and lagged correlation of two stationary series: winsorised, HAC t, shift-checked.

The series (high-passed, volatility-standardised differences: series.stationary) are robust-z clipped at
+/-max(3, n^(1/4)) and standardised (one chance coincidence of two spikes must not read as coupling:
`winsorised`). At each lag the sum of
products is divided by its standard error under independence: the one from both series'
autocorrelations with Bartlett weights (the HAC form of Bretherton's effective n; exact when either
series is homoskedastic), widened where both series are volatile at the same moments by the ratio of
the products' own variance to it (DiCiccio & Romano's robust studentisation) over the neighbouring
lags, one FFT for every lag at once. The lag-0 p comes from the t distribution. The max over the
2L + 1 lags is compared with the max of |Z| for Z Gaussian with the lags' own correlation, which the two
series' autocorrelations give (Sum_k rho_x(k) rho_y(k + d) between lags d apart): the same null at every
length. A differenced series is strongly anti-correlated at lag 1, so neighbouring lags are too, and
Sidak's bound for independent lags was conservative (1.7-3.6 % at 5 %); a dependent wild bootstrap of
the sums was too at short lengths (0.3-1.5 % below 300 rows), because its per-lag variance is itself
noisy and the max over lags picks the lags where it came out large.

A circular-shift null cannot do that job: with only n / (2L + 1) independent windows no permutation
p-value for a max over lags could survive the correction in a 10-minute run, and overlapping windows
would tie with the observed one. Circular shifts of y far from the scanned lags (both series' spikes,
clustering and volatility intact) check the standard error: when their spread exceeds 1.2 the statistic
is widened by it. The equivalence test's standard errors take the larger of the two variance forms at
every lag.

Gaps stay on the grid as missing values (zero-filled after standardising, so they add nothing to any sum);
every sum counts only the pairs present at that lag. Nothing is computed across a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import fft as sp_fft
from scipy import stats
from scipy.ndimage import median_filter

from thermograd.analysis.stats import Z_95
from thermograd.analysis.stats.preprocess import INSUFFICIENT, is_constant, robust_z, standardise_fill

MIN_OVERLAP = 30  # overlapping pairs required at the largest lag
MIN_SCALE_SHIFTS = 30  # circular shifts needed to check the statistic's scale
SCALE_ALARM = 1.2  # a null spread above this means the variance model misses something: widen by it
# The spread is the median |t| of m shifts: its standard error is about 1.17 / sqrt(m) for independent
# draws and more for neighbouring shifts, whose t are correlated. A 3-minute run has some 40 shifts far
# from a +/-30 s scan: a spread of 1.2 is then one standard error, not evidence (the alarm fired in 9 % of
# such null runs, and every lagged test it widened came out p >= 0.05). So the alarm needs two.
SPREAD_SE_SHIFTS = 1.5
COVOLATILITY_LAGS = 5  # shared volatility is judged on the 11 lags around each lag
WINSOR_Z = 3.0  # robust z clipped at least here before any sum (bounded influence of one spike) ...
# ... and at n^(1/4) beyond 81 samples: one coincidence of two clipped values then moves a sum whose standard
# error is sqrt(n) by at most about one standard error at every length, while a long run's large shared
# movements (a learning-rate burst that power follows) keep most of their weight in r.
MEDIAN_ABS_NORMAL = 0.6744897501960817  # median of |N(0, 1)|


def bandwidth(n: int) -> int:
    """Newey-West's rule of thumb, floor(4 (n/100)^(2/9)), at least 1."""
    return max(1, int(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))


Fill = Callable[[np.ndarray], object]  # writes a length-n series into the array it is given


class CircularCorrelator:
    """c[s] = sum_t u_t v_{(t+s) mod n} for every shift s, for many pairs of length-n series.

    Computed as the linear cross-correlation on a fast FFT length m >= 2n - 1, folded back onto n: a
    length-n FFT would do it directly but is slow when n has a large prime factor (a day minus one second
    is 86,399 rows). The series are written straight into one zero-padded buffer of length m, transformed
    in place (overwrite_x): for a month of 1 s data each length-m array is 40 MB, and letting the FFT pad
    its inputs and keep them made a gigabyte of the analysis's peak."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.m = sp_fft.next_fast_len(2 * n - 1, real=True)
        self._buffer = np.zeros(self.m)

    def _spectrum(self, fill: Fill) -> np.ndarray:
        self._buffer[self.n:] = 0.0  # the FFT may have overwritten the padding
        fill(self._buffer[: self.n])
        return sp_fft.rfft(self._buffer, overwrite_x=True)

    def spectrum(self, fill: Fill) -> np.ndarray:
        """The rfft of the zero-padded series that `fill` writes: kept by a caller that pairs it with several
        others (circular_sums)."""
        return self._spectrum(fill)

    def fold(self, product: np.ndarray) -> np.ndarray:
        """The circular correlation whose cross-spectrum conj(U) V is `product` (overwritten)."""
        lin = sp_fft.irfft(product, self.m, overwrite_x=True)
        out = lin[: self.n].copy()
        out[1:] += lin[self.m - self.n + 1:]  # negative lags -(n - s) wrap to shift s
        return out

    def correlate(self, fill_u: Fill, fill_v: Fill) -> np.ndarray:
        spectrum = self._spectrum(fill_u)
        np.conjugate(spectrum, out=spectrum)
        spectrum *= self._spectrum(fill_v)
        return self.fold(spectrum)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.correlate(lambda out: np.copyto(out, u), lambda out: np.copyto(out, v))


def _lagged_products(x: np.ndarray, k: int) -> Fill:
    """Writes x_t x_{(t+k) mod n}: np.roll's copies, without them."""
    def fill(out: np.ndarray) -> None:
        np.multiply(x[:-k], x[k:], out=out[:-k])
        np.multiply(x[-k:], x[:k], out=out[-k:])
    return fill


def lag_correlation(rho_a: np.ndarray, rho_b: np.ndarray, max_lag: int) -> np.ndarray:
    """Correlation matrix, under independence, of the lag sums S(tau) = Sum_t a_t b_(t+tau) for tau in
    -max_lag..max_lag: Cov(S(t1), S(t2)) is proportional to Sum_k rho_a(k) rho_b(k + t2 - t1).

    `rho_*` are autocorrelations at lags 0..bw; each is tapered by the square root of the Bartlett
    weights, so the diagonal is the same Bartlett-weighted sum as the variance's inflation factor.
    """
    bw = min(rho_a.size, rho_b.size) - 1
    taper = np.sqrt(1.0 - np.arange(bw + 1) / (bw + 1.0))
    a, b = (np.concatenate((r[bw:0:-1], r[: bw + 1])) * np.concatenate((taper[:0:-1], taper))
            for r in (rho_a, rho_b))  # k = -bw..bw
    full = np.correlate(b, a, mode="full")  # full[2 bw + d] = Sum_k a_k b_(k + d), d = -2 bw..2 bw
    by_distance = np.zeros(2 * max_lag + 1)
    reach = min(2 * bw, 2 * max_lag)
    by_distance[: reach + 1] = full[2 * bw: 2 * bw + reach + 1]
    by_distance /= by_distance[0] if by_distance[0] > 0 else 1.0
    if by_distance[0] <= 0:
        by_distance[0] = 1.0
    idx = np.arange(2 * max_lag + 1)
    return by_distance[np.abs(idx[:, None] - idx[None, :])]


def gaussian_max(corr: np.ndarray, active: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of max |Z_i| over the `active` lags, Z ~ N(0, corr).

    Cholesky when `corr` is positive definite; else the eigenvectors with the eigenvalues clipped at 0 (a
    tapered estimate need not be positive definite). The eigensolver runs multi-threaded and took 50 ms
    on a busy 2-core machine, the Cholesky factor 0.04 ms."""
    c = corr[np.ix_(active, active)]
    try:
        root = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(c)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))
    out = np.empty(n_draws)
    batch = max(1, 2_000_000 // max(c.shape[0], 1))
    for lo in range(0, n_draws, batch):
        k = min(batch, n_draws - lo)
        out[lo:lo + k] = np.abs(rng.standard_normal((k, c.shape[0])) @ root.T).max(axis=1)
    return out


def dot(u: np.ndarray, v: np.ndarray) -> float:
    """Sum of u * v in this thread. A BLAS dot product of two long, unaligned slices runs multi-threaded,
    and with the cores busy (a shared 2-core machine) each one waited ~15 ms for its threads: a day's
    statistics took 22 s instead of 3 (einsum's own loop: 40 us)."""
    return float(np.einsum("i,i->", u, v))


def _autocorrelations(u: np.ndarray, m: np.ndarray, bw: int) -> np.ndarray:
    """rho(0..bw) of a zero-filled series over the pairs present at each lag."""
    var = dot(u, u) / max(float(m.sum()), 1.0)
    out = np.ones(bw + 1)
    for k in range(1, bw + 1):
        pairs = max(dot(m[:-k], m[k:]), 1.0)
        out[k] = dot(u[:-k], u[k:]) / pairs / max(var, 1e-300)
    return out


def hac_weights(bw: int) -> np.ndarray:
    """Bartlett weights of lags 0..bw, each lag k > 0 counted for both signs: 1, 2 (1 - k / (bw + 1)), ..."""
    return np.concatenate(([1.0], 2.0 * (1.0 - np.arange(1, bw + 1) / (bw + 1.0))))


@dataclass(frozen=True)
class Circle:
    """One pair on its circle (`_on_circle`) with its bandwidth. `keys` name a and b with their masks: two
    circles whose series share a key share that series' spectra in `circular_sums` (the key must then
    identify the values exactly: the series' name and its circle's bounds and padding)."""

    a: np.ndarray
    b: np.ndarray
    ma: np.ndarray
    mb: np.ndarray
    bw: int
    keys: tuple[Hashable, Hashable]


@dataclass(frozen=True)
class CircularSums:
    """What `circular_t` gives for one circle, and both series' autocorrelations at lags 0..bw (which
    `scan` needs again for the lags' correlation)."""

    sums: np.ndarray
    var_null: np.ndarray
    var_products: np.ndarray | None
    count: np.ndarray
    rho_a: np.ndarray
    rho_b: np.ndarray


def _series_of(circles: Sequence[Circle]) -> dict[Hashable, tuple[np.ndarray, np.ndarray]]:
    """Each distinct series (values, mask) of the circles, by key."""
    out: dict[Hashable, tuple[np.ndarray, np.ndarray]] = {}
    for c in circles:
        out.setdefault(c.keys[0], (c.a, c.ma))
        out.setdefault(c.keys[1], (c.b, c.mb))
    return out


def _cross_spectra(circles: Sequence[Circle], wanted: Sequence[int], series: dict, correlators: dict,
                   fill_of: Callable[[np.ndarray, np.ndarray], Fill]):
    """Yields (i, conj(U) V) for each wanted circle i, U and V the spectra of what `fill_of` writes for its
    two series. Each series' spectrum is made once, when a wanted circle first needs it, and dropped after the
    last one that holds it; the last use of U becomes the product itself. A month of 1 s data makes each
    spectrum 42 MB: a pair alone holds two at most, not its two and a product."""
    last_use = {k: i for i in wanted for k in circles[i].keys}
    spectra: dict[Hashable, np.ndarray] = {}
    for i in wanted:
        for k in circles[i].keys:
            if k not in spectra:
                spectra[k] = correlators[series[k][0].size].spectrum(fill_of(*series[k]))
        ka, kb = circles[i].keys
        if last_use[ka] == i and ka != kb:
            product = spectra.pop(ka)
            np.conjugate(product, out=product)
        else:
            product = np.conjugate(spectra[ka])
        product *= spectra[kb]
        if last_use[kb] == i:
            spectra.pop(kb, None)
        yield i, product
        del product  # the caller's fold overwrites it: not kept while the next product is made


def _folded(circles: Sequence[Circle], wanted: Sequence[int], series: dict, correlators: dict,
            fill_of: Callable[[np.ndarray, np.ndarray], Fill]) -> list[np.ndarray]:
    """The circular correlation of each wanted circle's pair of what `fill_of` writes (_cross_spectra, folded)."""
    out = []
    for i, product in _cross_spectra(circles, wanted, series, correlators, fill_of):
        out.append(correlators[circles[i].a.size].fold(product))
        del product  # overwritten by the fold: not kept while the next product is made
    return out


def _copy(values: np.ndarray, _mask: np.ndarray) -> Fill:
    return lambda out: np.copyto(out, values)


def _mask(_values: np.ndarray, mask: np.ndarray) -> Fill:
    return lambda out: np.copyto(out, mask)


def _lag_fill(k: int) -> Callable[[np.ndarray, np.ndarray], Fill]:
    return lambda values, _mask: _lagged_products(values, k)


def _square(values: np.ndarray, _mask: np.ndarray) -> Fill:
    return lambda out: np.multiply(values, values, out=out)


def circular_sums(circles: Sequence[Circle], products: bool = True) -> list[CircularSums]:
    """`circular_t` for many circles at once, each series' spectra computed once for all the circles that
    hold it (`Circle.keys`).

    The products' variance, Sum_k w_k corr(a_t a_(t+k), b_t b_(t+k)), is accumulated as Sum_k w_k conj(A_k) B_k
    in the frequency domain and inverted once per circle: for each lag k every series' lagged-product
    spectrum is made once and dropped before the next lag, so a few spectra are alive at any time (one
    per series and one running sum per circle), not one per series and lag. `products=False` leaves the
    products' variance out (a test that does not use it)."""
    series = _series_of(circles)
    correlators = {v.size: CircularCorrelator(v.size) for v, _ in series.values()}
    everyone = range(len(circles))
    sums = _folded(circles, everyone, series, correlators, _copy)
    counts = _folded(circles, everyone, series, correlators, _mask)
    for count in counts:
        np.rint(count, out=count)
    rho = {}  # (key, bw) -> autocorrelations: a series shared by circles of one bandwidth is done once
    for c in circles:
        for k, (v, m) in zip(c.keys, ((c.a, c.ma), (c.b, c.mb)), strict=True):
            if (k, c.bw) not in rho:
                rho[k, c.bw] = _autocorrelations(v, m, c.bw)
    out = []
    for c, s, count in zip(circles, sums, counts, strict=True):
        rho_a, rho_b = rho[c.keys[0], c.bw], rho[c.keys[1], c.bw]
        inflation = float(hac_weights(c.bw) @ (rho_a * rho_b))
        out.append(CircularSums(s, count * max(inflation, 0.1), None, count, rho_a, rho_b))
    if not products:
        return out
    squares = _folded(circles, everyone, series, correlators, _square)
    lagged_terms = _lagged_variances(circles, series, correlators)
    for i, (sq, var_products) in enumerate(zip(squares, lagged_terms, strict=True)):
        var_products += sq
        sq *= 0.1
        np.maximum(var_products, sq, out=var_products)  # floored at a tenth of the lag-0 term
        out[i] = replace(out[i], var_products=var_products)
    return out


def _lagged_variances(circles: Sequence[Circle], series: dict, correlators: dict) -> list[np.ndarray]:
    """Sum over k = 1..bw of w_k corr(a_t a_(t+k), b_t b_(t+k)) for each circle (circular lagged products),
    summed as cross-spectra and inverted once per circle."""
    weights = [hac_weights(c.bw) for c in circles]
    running: list[np.ndarray | None] = [None] * len(circles)
    for k in range(1, max(c.bw for c in circles) + 1):
        wanted = [i for i, c in enumerate(circles) if c.bw >= k]
        for i, product in _cross_spectra(circles, wanted, series, correlators, _lag_fill(k)):
            product *= weights[i][k]
            if running[i] is None:
                running[i] = product
            else:
                running[i] += product
            del product  # not kept while the next lag's spectra are made
    return [correlators[c.a.size].fold(r) if r is not None else np.zeros(c.a.size)
            for c, r in zip(circles, running, strict=True)]


def circular_t(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, bw: int, products: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """At every circular shift s of b: the sum S(s) = sum_t a_t b_{t+s}, its variance under
    independence from the two autocorrelations (Bartlett weights up to `bw`: the HAC form of
    Bretherton's effective n), the same variance from the products themselves (which also grows where
    the two series are volatile together; None unless `products`), and the overlap count."""
    res = circular_sums([Circle(a, b, ma, mb, bw, ("a", "b"))], products)[0]
    return res.sums, res.var_null, res.var_products, res.count


def winsorised(x: np.ndarray) -> np.ndarray:
    """Robust z (median, MAD) clipped at +/-max(WINSOR_Z, n^(1/4)); gaps stay NaN.

    Two independent spike trains coincide by chance now and then (ten spikes each in 600 s: one time in
    six at lag 0, almost surely at some lag of a +/-30 s scan), and one coincidence of two 10-sigma
    spikes makes a raw correlation look like a 4-sigma coupling. Clipped at c, it adds at most c^2 = sqrt(n)
    to a sum whose standard error is sqrt(n): one standard error, at every length. A coupling carried by
    many spikes still shows (twenty coincidences in 30 minutes make a 4-sigma sum even at c = 3).

    The yardstick is robust because the spikes must not set it: standardised by its own sd, a 90 s series
    with one spike has a bulk sd of about 0.5, and the clipped spike, standardised again for the sums,
    stood at 5.6 sigma. One chance coincidence of such a spike with a 2 s power dip then made a 4-sigma
    lag: 6 of 10 such 90 s runs were called coupled.
    """
    finite = np.isfinite(x)
    clip = max(WINSOR_Z, float(np.count_nonzero(finite)) ** 0.25)
    return np.where(finite, np.clip(robust_z(x), -clip, clip), np.nan)


def _pairs_at(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, lag: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (x_t, y_{t+lag}) pairs at `lag` in time order, zero where either is missing, and the mask of
    the pairs present."""
    n = a.size
    if lag >= 0:
        u, v, mu, mv = a[: n - lag], b[lag:], ma[: n - lag], mb[lag:]
    else:
        u, v, mu, mv = a[-lag:], b[: n + lag], ma[-lag:], mb[: n + lag]
    both = mu * mv
    return u * both, v * both, both > 0


def hac_ci(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, lag: int, r: float, bw: int,
           scale: float = 1.0, z_crit: float = Z_95) -> tuple[list[float], float, float]:
    """Fisher-z CI of r at `lag` from the HAC long-run variance of r's influence function
    psi_t = x_t y_t - r (x_t^2 + y_t^2) / 2 (valid under changing volatility); also (se_z, n_eff)."""
    u, v, present = _pairs_at(a, b, ma, mb, lag)
    n = max(int(present.sum()), 1)
    psi = np.where(present, u * v - 0.5 * r * (u * u + v * v), 0.0)
    gamma0 = dot(psi, psi) / n
    lrv = gamma0
    for k, w in enumerate(hac_weights(bw)[1:], start=1):
        lrv += float(w) * dot(psi[:-k], psi[k:]) / n
    lrv = max(lrv, 0.1 * gamma0, 1e-12)
    se_r = scale * np.sqrt(lrv / n)
    rc = float(np.clip(r, -0.999999, 0.999999))
    se_z = float(se_r / (1.0 - rc * rc))
    z = np.arctanh(rc)
    n_eff = float(np.clip(1.0 / se_z ** 2 + 3.0, 2.0, n))  # the n whose Fisher-z CI is this wide
    return [float(np.tanh(z - z_crit * se_z)), float(np.tanh(z + z_crit * se_z))], se_z, n_eff


GROUP_BYTES = 400e6  # the arrays a group of pairs holds at once (pair_groups): a week's pairs in two groups


def group_bytes(n_pairs: int, n_series: int, rows: int) -> float:
    """What a group of pairs holds at once, in bytes, for runs of `rows` rows: per series its stationary
    differences, its values and mask on the circle and one spectrum (two rows' worth: an rfft of a fast
    length >= 2n - 1); per pair its three sums and one running spectrum; and one product in flight."""
    return 8.0 * rows * (5 * n_series + 5 * n_pairs + 2)


def pair_groups(pair_names: Sequence[tuple[Hashable, Hashable]], rows: int, budget: float = GROUP_BYTES
                ) -> list[list[int]]:
    """The pairs, in their order, cut into runs of consecutive pairs that `circular_sums` can take at once
    within `budget` bytes (`group_bytes`; one pair at least). A group shares each series' spectra among its
    pairs: the larger the groups, the fewer spectra are made, and a month of 1 s data (42 MB a spectrum)
    fits one pair a group where a day fits all."""
    groups: list[list[int]] = []
    for i in range(len(pair_names)):
        trial = [*groups[-1], i] if groups else [i]
        held = {name for j in trial for name in pair_names[j]}
        if groups and group_bytes(len(trial), len(held), rows) <= budget:
            groups[-1] = trial
        else:
            groups.append([i])
    return groups


def _on_circle(x: np.ndarray, y: np.ndarray, pad_rows: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both series from the first to the last row where either is present, winsorised and standardised
    (gaps 0), their presence masks, all zero-padded by `pad_rows`: a circular sum at a lag up to that
    then holds no pair that wraps the run's end round to its start."""
    lo, hi = _circle_bounds(x, y)
    (a, ma), (b, mb) = (_circle_series(v, lo, hi, pad_rows) for v in (x, y))
    return a, b, ma, mb


def _circle_bounds(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """The first row where either series is present and one past the last."""
    idx = np.flatnonzero(np.isfinite(x) | np.isfinite(y))
    return int(idx[0]), int(idx[-1]) + 1


def _circle_series(v: np.ndarray, lo: int, hi: int, pad_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One series of `_on_circle`: winsorised and standardised (gaps 0), and its presence mask."""
    pad = np.zeros(pad_rows)
    return (np.concatenate((standardise_fill(winsorised(v[lo:hi])), pad)),
            np.concatenate((np.isfinite(v[lo:hi]).astype(float), pad)))


def scan_bandwidth(n_both: int, bw: int | None = None) -> int:
    """The HAC bandwidth of a scan over `n_both` pairs: Newey-West's unless one is asked for."""
    return bandwidth(n_both) if bw is None else max(1, min(bw, n_both // 5))


def _scan_shortfall(x: np.ndarray, y: np.ndarray, max_lag: int) -> str | None:
    """Why `scan` cannot run on x and y (too few pairs for the lags, or a constant series), or None."""
    both = np.isfinite(x) & np.isfinite(y)
    n_both = int(both.sum())
    needed = 2 * max_lag + MIN_OVERLAP
    if n_both < max(needed, 4) or is_constant(x[both]) or is_constant(y[both]):
        return (f"{n_both} samples; a scan over +/-{max_lag} lags needs at least {needed} (lower --max-lag)"
                if n_both < needed else "a series is constant or too short")
    return None


def scan_circle(x: np.ndarray, y: np.ndarray, max_lag: int, names: tuple[Hashable, Hashable] = ("x", "y"),
                bw: int | None = None) -> Circle | None:
    """The circle `scan` runs its sums on (None where it cannot run), each series keyed by its name and
    the circle's bounds: `circular_sums` then shares a series' spectra between pairs that hold it."""
    if _scan_shortfall(x, y, max_lag) is not None:
        return None
    lo, hi = _circle_bounds(x, y)
    (a, ma), (b, mb) = (_circle_series(v, lo, hi, max_lag) for v in (x, y))
    n_both = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    return Circle(a, b, ma, mb, scan_bandwidth(n_both, bw), tuple((name, lo, hi, max_lag) for name in names))


def scan(x: np.ndarray, y: np.ndarray, max_lag: int, n_surrogates: int, rng: np.random.Generator,
         min_shift: int = 1, bw: int | None = None, prepared: tuple[Circle, CircularSums] | None = None) -> dict:
    """Lag-0 and max-over-lags tests of two stationary series on one grid; positive lag = x leads y.

    Returns {"lag0": {...}, "lagged": {...}, "equivalence": {...}} where equivalence holds, per lag, the
    estimate and the HAC standard error of Fisher z (for the equivalence test and
    the detectable effect, which the pipeline computes at its own alpha).

    `prepared`: this pair's `scan_circle` (with the same max_lag and bw) and its `circular_sums`, made
    beforehand with other pairs' (the pipeline shares each series' spectra among its pairs).
    """
    n_both = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    base = {"n": n_both, "n_surrogates": 0, "p": None, "p_adjusted": None}
    lag0: dict = {**base, "r": None, "ci": None, "n_eff": None}
    lagged: dict = {**base, "peak_lag_steps": None, "peak_r": None, "max_lag_steps": max_lag}
    reason = _scan_shortfall(x, y, max_lag)
    if reason is not None:
        for t in (lag0, lagged):
            t.update(status=INSUFFICIENT, reason=reason)
        return {"lag0": lag0, "lagged": lagged, "equivalence": None}
    if prepared is None:
        circle = scan_circle(x, y, max_lag, bw=bw)
        prepared = circle, circular_sums([circle])[0]
    circle, sums = prepared
    a, b, ma, mb, bw = circle.a, circle.b, circle.ma, circle.mb, circle.bw
    n = a.size
    c, var_null, var_products, count = sums.sums, sums.var_null, sums.var_products, sums.count
    rho_a, rho_b = sums.rho_a, sums.rho_b
    del prepared, sums  # var_null is widened in place below: these sums serve this call only
    taus = np.arange(-max_lag, max_lag + 1)
    # The autocorrelation form is exact when either series is homoskedastic. When both are volatile at
    # the same moments (a training phase that agitates loss and clocks together), the products' own
    # variance is larger, at the lags that line the episode up with itself: not only at one lag. A
    # coupling at one lag inflates the products' variance at that lag alone. So the autocorrelation form
    # is widened by the median ratio of the two over the neighbouring +/-COVOLATILITY_LAGS lags: shared
    # volatility is allowed for, while the coupling's own signal is not counted as noise.
    # (In place where it can be: each of these arrays is 20 MB for a month of 1 s data.)
    covolatility = median_filter(var_products / np.maximum(var_null, 1e-300), size=2 * COVOLATILITY_LAGS + 1,
                                 mode="wrap")
    np.maximum(covolatility, 1.0, out=covolatility)
    var = np.multiply(var_null, covolatility, out=var_null)
    covolatility0 = float(covolatility[0])
    del covolatility, var_null
    t_stat = np.sqrt(np.maximum(var, 1e-300))
    np.divide(c, t_stat, out=t_stat)
    t_stat[count < MIN_OVERLAP] = 0.0
    del c
    window = np.abs(t_stat[taus % n])
    observed0, observed_max = float(abs(t_stat[0])), float(window.max())
    # The peak lag: the shortest lag whose |t| is within one unit (noise) of the largest. A spike and its
    # echo make several lags of a differenced series nearly tie (an up/down pair against a dip and its
    # recovery gives four), and the largest of near-ties is chance.
    near = np.flatnonzero(window >= window.max() - 1.0)
    peak = int(taus[near[np.argmin(np.abs(taus[near]))]])
    # The reported r at each lag: the linear (no wrap-around) correlation over the pairs present there.
    r_lin = np.empty(taus.size)
    n_lin = np.empty(taus.size)
    for i, tau in enumerate(taus):
        u, v, present = _pairs_at(a, b, ma, mb, int(tau))
        n_lin[i] = max(float(present.sum()), 1.0)
        r_lin[i] = dot(u, v) / n_lin[i]
    r_lin = np.clip(r_lin, -0.999999, 0.999999)
    # Circular shifts far from the scanned lags: y against x at times it never met, so their studentised
    # statistics are draws from the null with both series' spikes, clustering and volatility intact. Their
    # spread checks the HAC standard error (a bandwidth too short for a persistent series leaves it too
    # small); the tail itself comes from the t distribution, because a max over 2L + 1 lags has only
    # n / (2L + 1) independent shift windows, far too few for a permutation p-value that could survive
    # the correction (and overlapping windows would tie with the observed one).
    margin = max(2 * max_lag + 1, min_shift)
    shifts = np.arange(margin, n - margin + 1)
    shifts = shifts[count[shifts] >= MIN_OVERLAP] if shifts.size else shifts
    if shifts.size >= MIN_SCALE_SHIFTS:
        if shifts.size > n_surrogates:
            shifts = rng.choice(shifts, size=n_surrogates, replace=False)
        spread = float(np.median(np.abs(t_stat[shifts]))) / MEDIAN_ABS_NORMAL
        alarm = max(SCALE_ALARM, 1.0 + 2.0 * SPREAD_SE_SHIFTS / np.sqrt(shifts.size))
        scale = spread if spread > alarm else 1.0
        method = (f"lag 0: t distribution; {shifts.size} circular shifts of y put the statistic's null spread "
                  f"at {spread:.2f}" + (" and widen it by that" if scale > 1 else ""))
    else:
        scale = 1.0
        method = (f"t distribution (only {shifts.size} circular shifts far from the scanned lags: too few to "
                  f"check the scale)")
    df = max(n_both - 2, 1)
    p0 = float(2 * stats.t.sf(observed0 / scale, df))
    # The max over lags: Gaussian with the lags' own correlation, on the variance model's scale, compared
    # with the statistic widened by the shift check. A lag with too few pairs (a periodic mask can leave
    # none) takes no part, as in the observed max.
    active = count[taus % n] >= MIN_OVERLAP
    corr = lag_correlation(rho_a, rho_b, max_lag)
    draws = gaussian_max(corr, active, n_surrogates, rng)
    p_max = float((1 + np.sum(draws >= observed_max / scale)) / (1 + draws.size))
    band_t = scale * float(np.quantile(draws, 0.95))
    method += (f"; max over lags against {draws.size} Gaussian draws with the lags' correlation from both "
               "autocorrelations")
    i0, ip = max_lag, peak + max_lag
    ci0, se0, neff0 = hac_ci(a, b, ma, mb, 0, float(r_lin[i0]), bw, scale)
    cip, sep, neffp = hac_ci(a, b, ma, mb, peak, float(r_lin[ip]), bw, scale)
    stat = "HAC-studentised correlation"
    n_surr = int(shifts.size)
    lag0.update(status="ok", r=float(r_lin[i0]), ci=ci0, n_eff=neff0, se_z=se0, p=p0, n_surrogates=n_surr,
                t=float(t_stat[0]), surrogates=method, statistic=stat, bandwidth=bw, scale=scale,
                covolatility=covolatility0)
    lag_set = taus[lag_confidence_set(t_stat[taus % n] / scale, corr, active, ip)]
    lagged.update(lag_set_steps=[int(v) for v in lag_set])
    lagged.update(status="ok", peak_lag_steps=peak, peak_r=float(r_lin[ip]), ci=cip, se_z=sep, n_eff=neffp,
                  p=p_max, n_surrogates=n_surr, surrogates=method, statistic=f"max over lags of |{stat}|",
                  band_95=band_t * float(np.sqrt(var[0])) / max(float(count[0]), 1.0), ccf=[float(v) for v in r_lin])
    # For equivalence: Fisher z and its null-form HAC standard error at every lag of the scan.
    # Claiming |r| < bound must not lean on a variance model that could be too small there: the larger
    # of the (widened) autocorrelation form and the products' own variance, at every lag.
    se_lags = scale * np.sqrt(np.maximum(np.maximum(var[taus % n], var_products[taus % n]), 1e-300)) / n_lin
    equivalence = {"z": np.arctanh(r_lin), "se_z": se_lags / (1 - r_lin ** 2), "se0_r": float(se_lags[i0]),
                   "n": n_both}
    return {"lag0": lag0, "lagged": lagged, "equivalence": equivalence}


def lag_confidence_set(t: np.ndarray, corr: np.ndarray, active: np.ndarray, reported: int,
                       z: float = Z_95) -> np.ndarray:
    """Indices of the lags that may be the peak: multiple comparisons with the best (Hsu 1984).

    Parameters
    ----------
    t : the studentised statistic at each lag of the scan (signed).
    corr : the statistics' correlation between lags under independence (`lag_correlation`).
    active : the lags that took part in the scan (enough pairs).
    reported : the index of the reported peak lag, always in the set.
    z : one-sided critical value of each comparison with the best lag.

    Returns
    -------
    The indices of the lags whose statistic, with the peak's sign, lies within z standard errors of the
    best one's (the standard error of a difference of two statistics is sqrt(2 - 2 corr)): the lags the data
    cannot tell from the peak. A coupling whose set lies on one side of zero has a leader; one whose set
    holds zero is simultaneous within its uncertainty.

    References
    ----------
    Hsu, J. C. (1984). Constrained simultaneous confidence intervals for multiple comparisons with the
    best. Annals of Statistics 12, 1136-1144.
    """
    score = np.where(active, np.sign(t[reported] or 1.0) * t, -np.inf)
    best = int(np.argmax(score))
    sd = np.sqrt(np.maximum(2.0 - 2.0 * corr[:, best], 1e-12))
    keep = active & (score[best] - score <= z * sd)
    keep[reported] = True
    return np.flatnonzero(keep)


def lagged_test(x: np.ndarray, y: np.ndarray, max_lag: int, n_surrogates: int,
                rng: np.random.Generator) -> dict:
    """The max-over-lags test alone (see `scan`)."""
    return scan(x, y, max_lag, n_surrogates, rng)["lagged"]


def shift_test(x: np.ndarray, y: np.ndarray, min_shift: int, n_surrogates: int, rng: np.random.Generator) -> dict:
    """Lag-0 correlation of two series that may be persistent (levels, 0/1 states), with the p-value from
    circular shifts of y by at least `min_shift` rows: the rank of |t| at lag 0 among |t| at the shifts.

    A shift keeps both series' autocorrelation, spikes and clustering, and the null is exact when y's
    law does not depend on where the circle starts; no variance model or bandwidth has to be right. (A
    HAC t with a circular-shift check of its scale was the earlier form: every estimate of the scale that
    widens it where it looks too small, and never narrows it, made it conservative: 0-0.7 % at 5 %.)
    The CI is the HAC one, widened by the shifts' spread where that exceeds 1.
    """
    fx, fy = np.isfinite(x), np.isfinite(y)
    both = fx & fy
    n_both = int(both.sum())
    out: dict = {"n": n_both, "r": None, "p": None, "ci": None, "n_surrogates": 0}
    if n_both < MIN_OVERLAP or is_constant(x[both]) or is_constant(y[both]):
        return {**out, "status": INSUFFICIENT, "reason": f"{n_both} samples, or a series is constant"}
    a, b, ma, mb = _on_circle(x, y, 0)
    n = a.size
    bw = bandwidth(n_both)
    c, var_null, _, count = circular_t(a, b, ma, mb, bw, products=False)
    t_stat = np.where(count >= MIN_OVERLAP, c / np.sqrt(np.maximum(var_null, 1e-300)), 0.0)
    shifts = np.arange(max(1, min_shift), n - max(1, min_shift) + 1)
    shifts = shifts[count[shifts] >= MIN_OVERLAP] if shifts.size else shifts
    if shifts.size < MIN_SCALE_SHIFTS:
        return {**out, "status": INSUFFICIENT,
                "reason": f"only {shifts.size} circular shifts of at least {min_shift} rows"}
    if shifts.size > n_surrogates:
        shifts = rng.choice(shifts, size=n_surrogates, replace=False)
    null = np.abs(t_stat[shifts])
    p = float((1 + np.sum(null >= abs(t_stat[0]))) / (1 + shifts.size))
    scale = max(1.0, float(np.median(null)) / MEDIAN_ABS_NORMAL)
    r = float(np.clip(c[0] / max(float(count[0]), 1.0), -0.999999, 0.999999))
    ci, _, n_eff = hac_ci(a, b, ma, mb, 0, r, bw, scale)
    return {**out, "status": "ok", "r": r, "p": p, "ci": ci, "n_eff": n_eff, "n_surrogates": int(shifts.size),
            "t": float(t_stat[0]), "null_spread": scale,
            "surrogates": f"rank of |t| among {shifts.size} circular shifts of at least {min_shift} rows"}
