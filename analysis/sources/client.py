"""A small Prometheus HTTP API client: works unchanged against Thanos, Mimir or VictoriaMetrics."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from thermograd.analysis.align import place_into, sample_interval_s
from thermograd.analysis.errors import InputError
from thermograd.analysis.table import grid_rows

SCRAPE_JOBS = ("exporter", "trainer")  # the stack's job names (prometheus/prometheus.yml)


class BackendUnreachable(InputError):
    """No usable answer after every retry (connection error, timeout or 5xx), or a refusal no retry can mend."""


# A refused connection (nothing listens there) or a host name that does not resolve is no passing fault:
# retrying them only delays the one useful message. Timeouts, resets and 5xx answers are retried.
_PERMANENT = ("Connection refused", "[Errno 111]", "Name or service not known", "nodename nor servname")


def _permanent(exc: requests.RequestException) -> bool:
    return isinstance(exc, requests.ConnectionError) and any(text in str(exc) for text in _PERMANENT)


MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses range queries above 11,000 points per series

# Sent with every query. `nocache=1` is VictoriaMetrics's (single-node and cluster; Prometheus, Thanos and Mimir
# ignore a parameter they do not know): with it, VictoriaMetrics evaluates an instant query at the time asked
# (with its default -search.latencyOffset=30s it would evaluate one asked within 30 s of its now 30 s earlier, and
# shift the answer's timestamp back) and does not round a range query's start and end to multiples of its step
# for its response cache. The points of a range query within -search.latencyOffset of now are another matter,
# which no parameter of VictoriaMetrics 1.79 turns off: newest_held_back_s() finds them.
STORE_PARAMS = {"nocache": "1"}

_CLUSTER_PATH = re.compile(r"/select/[^/]+/prometheus$")  # VictoriaMetrics cluster: vmselect's tenant prefix
_FLAG_LINE = re.compile(r'^-([A-Za-z0-9_.]+)="?(.*?)"?$')
# What VictoriaMetrics's query defaults change for the analysis, and how the analysis meets each (docs/stack.md,
# "A store someone else runs"): the flag, its default, and what is said when it is not set.
VM_QUERY_DEFAULTS = {
    "search.latencyOffset": ("30s", "a range query's points that recent are held back: probed before the fetch, "
                             "and waited for when the run has just ended"),
    "dedup.minScrapeInterval": ("0s", "none: every sample kept"),
    "search.maxStalenessInterval": ("auto", "does not enter: every expression of the analysis has its own window"),
}


def range_window(seconds: float) -> str:
    """A PromQL range: whole seconds as `Ns`, anything else in whole milliseconds (PromQL rejects `0.5s`)."""
    millis = max(1, round(seconds * 1000))
    return f"[{millis // 1000}s]" if millis % 1000 == 0 else f"[{millis}ms]"


@dataclass
class PromClient:
    url: str
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.5
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    workers: int = 4
    progress: bool = False
    queries: list[dict] = field(default_factory=list)  # every PromQL expression sent, for the report

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update(self.headers)
        if self.bearer_token:
            self._session.headers["Authorization"] = f"Bearer {self.bearer_token}"
        if self.basic_auth:
            self._session.auth = self.basic_auth

    # --- transport -------------------------------------------------------------------------------
    def _get_within_deadline(self, endpoint: str, params: dict | list | None) -> requests.Response:
        """One GET, headers and body, finished within timeout_s in all.

        requests' timeout bounds each socket read, so a backend (or proxy) that drip-feeds a byte at a
        time would hold the analysis forever. The request runs in a daemon thread that is abandoned at
        the deadline (it cannot block the exit) and its body is read there in full."""
        outcome: dict[str, object] = {}

        def fetch() -> None:
            try:
                resp = self._session.get(endpoint, params=params, timeout=self.timeout_s)
                _ = resp.content  # the whole body, inside the deadline
                outcome["response"] = resp
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=fetch, name="promql-get", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            raise requests.Timeout(f"no complete answer within --timeout {self.timeout_s:g} s")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["response"]  # type: ignore[return-value]

    def _get_response(self, path: str, params: dict | list | None = None) -> requests.Response:
        """GET with retries and exponential back-off on connection errors, timeouts and 5xx; the body is
        read in full but not decoded."""
        endpoint = f"{self.url}{path}"
        last_error = ""
        for attempt in range(self.retries + 1):
            try:
                resp = self._get_within_deadline(endpoint, params)
            except requests.RequestException as exc:
                if _permanent(exc):
                    why = "refused the connection (nothing listens there)" if "refused" in str(exc) or "111" in str(
                        exc) else "names a host that does not resolve"
                    raise BackendUnreachable(f"{self.url} {why}: is Prometheus running, and is --prometheus its base "
                                             "URL (e.g. http://127.0.0.1:9090)?") from None
                last_error = f"{type(exc).__name__}: {_first_line(str(exc))}"
            else:
                if resp.status_code < 500:
                    return resp
                last_error = f"HTTP {resp.status_code}: {_first_line(resp.text)}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise BackendUnreachable(f"Prometheus at {self.url} unreachable ({path}): {last_error}")

    def _get(self, path: str, params: dict | list | None = None, expect: type = dict) -> Any:
        """The `data` of a successful API answer (retried as _get_response does): an object, or a list where
        `expect` says so (/api/v1/series, /api/v1/labels)."""
        return self._decode(self._get_response(path, params), f"{self.url}{path}", expect)

    def _decode(self, resp: requests.Response, endpoint: str, expect: type = dict) -> Any:
        try:
            body = resp.json()
        except ValueError as exc:
            raise InputError(f"{self.url} is not a Prometheus HTTP API: {endpoint} answered HTTP {resp.status_code} "
                             f"with {_first_line(resp.text)!r}, not JSON. Give --prometheus the base URL of "
                             "Prometheus (or Thanos, Mimir, VictoriaMetrics), e.g. http://127.0.0.1:9090, not an "
                             "exporter's or a trainer's /metrics") from exc
        if not isinstance(body, dict):
            raise InputError(f"{endpoint} answered HTTP {resp.status_code} with JSON that is not a Prometheus "
                             f"API answer (a {type(body).__name__}, not an object)")
        if body.get("status") != "success":
            raise InputError(f"{endpoint} answered HTTP {resp.status_code}: "
                             f"{body.get('errorType', 'error')}: {_first_line(str(body.get('error')))}")
        if not isinstance(body.get("data"), expect):
            raise InputError(f"{endpoint} answered HTTP {resp.status_code} without a `data` "
                             f"{'object' if expect is dict else 'list'} (not a Prometheus API answer)")
        return body["data"]

    def _result(self, data: dict, path: str) -> list[dict]:
        """data.result of a query answer, checked: a list of objects, each with a `metric` object."""
        result = data.get("result")
        if not (isinstance(result, list) and all(isinstance(r, dict) and isinstance(r.get("metric"), dict)
                                                 for r in result)):
            raise InputError(f"{self.url}{path}: data.result is not a list of series "
                             "(not a Prometheus API answer)")
        return result

    # --- API -------------------------------------------------------------------------------------
    def scrape_interval_s(self) -> float | None:
        """global.scrape_interval from /api/v1/status/config (None when the backend hides its config)."""
        from thermograd.analysis.timeparse import parse_duration_s

        try:
            data = self._get("/api/v1/status/config")
        except BackendUnreachable:
            raise
        except InputError:  # e.g. Mimir or VictoriaMetrics do not serve Prometheus's config
            return None
        yaml_text = data.get("yaml")
        for line in (yaml_text if isinstance(yaml_text, str) else "").splitlines():
            stripped = line.strip()
            if stripped.startswith("scrape_interval:"):
                return parse_duration_s(stripped.split(":", 1)[1].strip())
        return None

    def _active_targets(self) -> list | None:
        """/api/v1/targets' activeTargets as served; None where the backend does not serve them (VictoriaMetrics,
        Mimir)."""
        try:
            data = self._get("/api/v1/targets", {"state": "active"})
        except BackendUnreachable:
            raise
        except InputError:
            return None
        targets = data.get("activeTargets")
        return targets if isinstance(targets, list) else None

    def targets(self) -> list[dict] | None:
        """The active scrape targets: job, scrape URL, health and last error of each (None: not served)."""
        targets = self._active_targets()
        if targets is None:
            return None
        out = []
        for target in targets:
            if isinstance(target, dict):
                labels = target.get("labels") if isinstance(target.get("labels"), dict) else {}
                out.append({"job": labels.get("job", target.get("scrapePool", "")),
                            "url": str(target.get("scrapeUrl", "")), "health": str(target.get("health", "")),
                            "last_error": str(target.get("lastError") or "")})
        return out

    def job_scrape_interval_s(self, jobs: tuple[str, ...]) -> float | None:
        """The longest scrapeInterval of the active targets of `jobs` (/api/v1/targets), or None.

        A Prometheus that already ran with the default global 15 s often scrapes these jobs at 1 s:
        the global value would then put the analysis on a 15 s grid.
        """
        from thermograd.analysis.timeparse import parse_duration_s

        targets = self._active_targets()
        try:
            intervals = [parse_duration_s(t["scrapeInterval"]) for t in targets or []
                         if t.get("labels", {}).get("job") in jobs and t.get("scrapeInterval")]
        except (AttributeError, TypeError, ValueError, InputError):  # a backend with another shape: unknown
            return None
        return max(intervals) if intervals else None

    def sample_interval_s(self, selectors: tuple[str, ...], time_s: float, window_s: float) -> float | None:
        """The longest median spacing of raw samples (ms precision) among the series of `selectors`
        over (time - window, time], from range-vector instant queries; None without two samples.

        The scrape interval as the data itself shows it, for backends that serve neither Prometheus's
        config nor its targets (VictoriaMetrics, Mimir: empty or absent /api/v1/status/config, /targets).
        """
        medians = [round(interval, 3) for selector in selectors
                   for _, t_s, _ in self.raw_samples(selector, time_s, window_s, "sample interval")
                   if (interval := sample_interval_s(t_s)) is not None]
        return max(medians) if medians and max(medians) > 0 else None

    def raw_samples(self, selector: str, time_s: float, window_s: float,
                    purpose: str) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """(labels, times, values) of every series of `selector` over (time - window, time]: the raw samples as
        scraped (a range-vector instant query), not evaluated on a grid."""
        out = []
        for series in self.instant(f"{selector}{range_window(window_s)}", time_s, purpose):
            t_s, values = matrix_to_arrays([series])
            out.append((series["metric"], t_s, values))
        return out

    def store_flags(self) -> dict[str, str] | None:
        """The flags a VictoriaMetrics was started with, from its /flags page (vmselect's, at the host's root, for a
        cluster URL /select/<tenant>/prometheus); None where no such page answers (Prometheus, Mimir, a proxy
        that only passes the API). It lists the flags set explicitly: any other has its default."""
        root = _CLUSTER_PATH.sub("", self.url)
        for url in dict.fromkeys((f"{self.url}/flags", f"{root}/flags")):
            try:
                resp = self._get_within_deadline(url, None)  # once: a page that is not there is no fault
            except requests.RequestException:
                continue
            lines = resp.text.splitlines() if resp.status_code == 200 and resp.headers.get(
                "Content-Type", "").startswith("text/plain") else []
            flags = {m.group(1): m.group(2) for m in map(_FLAG_LINE.match, lines) if m}
            if flags and len(flags) == len(lines):
                return flags
        return None

    def build_version(self) -> str | None:
        """The backend's version from /api/v1/status/buildinfo (None where it is not served)."""
        try:
            version = self._get("/api/v1/status/buildinfo").get("version")
        except InputError:
            return None
        return str(version) if version else None

    def instant(self, expr: str, time_s: float, purpose: str) -> list[dict]:
        self.queries.append({"purpose": purpose, "type": "instant", "query": expr, "time": time_s})
        return self._result(self._get("/api/v1/query", {"query": expr, "time": f"{time_s:.3f}", **STORE_PARAMS}),
                            "/api/v1/query")

    def newest_held_back_s(self, start_s: float, end_s: float, step_s: float) -> float | None:
        """The first point of the grid start + k*step (up to end) that the backend does not serve as evaluated, or
        None when it serves every one.

        `time()` over the grid must answer each point's own timestamp. VictoriaMetrics (-search.latencyOffset,
        default 30 s, for steps under -search.maxStepForPointsAdjustment, 1 min) serves the points of a range
        query within that offset of its now as copies of the last point before them, and drops them when there
        is none: their samples might still be arriving. Prometheus serves every point as evaluated."""
        n = grid_rows(start_s, end_s, step_s)
        end_s = start_s + (n - 1) * step_s
        # type "probe": a range query, but not one of the table's (they all share one grid: "range")
        self.queries.append({"purpose": "the backend's newest points (does it hold them back?)", "type": "probe",
                             "query": "time()", "start": start_s, "end": end_s, "step": step_s, "chunks": 1})
        try:
            data = self._get(RANGE_PATH, {"query": "time()", "start": f"{start_s:.3f}", "end": f"{end_s:.3f}",
                                          "step": f"{step_s:g}", **STORE_PARAMS})
        except BackendUnreachable:
            raise
        except InputError:  # a backend that refuses the probe: nothing known, the fetch says the rest
            return None
        t_s, values = matrix_to_arrays(self._result(data, RANGE_PATH))
        served = {round(t * 1000): v for t, v in zip(t_s.tolist(), values.tolist(), strict=True)}
        for k in range(n):
            t = start_s + k * step_s
            value = served.get(round(t * 1000))
            if value is None or abs(value - t) > 1e-3:
                return t
        return None

    def range_chunks(self, start_s: float, end_s: float, step_s: float) -> list[tuple[float, float]]:
        """Chunks on the same grid start + k*step, each at most MAX_POINTS_PER_SERIES points."""
        n_points = grid_rows(start_s, end_s, step_s)
        per = MAX_POINTS_PER_SERIES
        return [(start_s + i * step_s, start_s + min(i + per, n_points) * step_s - step_s)
                for i in range(0, n_points, per)]

    def stream_range(self, exprs: dict[str, str], start_s: float, end_s: float, step_s: float,
                     consume: Callable[[str, int, requests.Response], None]) -> None:
        """Every expression over the same start/end/step, chunked, fetched in parallel; each answer is
        handed to consume(name, first row of its chunk, response) in the worker as soon as it arrives,
        so no more than `workers` answers are held at once."""
        chunks = self.range_chunks(start_s, end_s, step_s)
        for name, expr in exprs.items():
            self.queries.append({"purpose": name, "type": "range", "query": expr, "start": start_s,
                                 "end": end_s, "step": step_s, "chunks": len(chunks)})
        jobs = [(name, expr, k * MAX_POINTS_PER_SERIES, lo, hi) for name, expr in exprs.items()
                for k, (lo, hi) in enumerate(chunks)]

        def fetch(job: tuple[str, str, int, float, float]) -> None:
            name, expr, row, lo, hi = job
            consume(name, row, self._get_response(RANGE_PATH, {"query": expr, "start": f"{lo:.3f}", "end": f"{hi:.3f}",
                                                               "step": f"{step_s:g}", **STORE_PARAMS}))

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for done, _ in enumerate(pool.map(fetch, jobs), start=1):
                if self.progress:
                    print(f"\rfetching: {done}/{len(jobs)} chunks", end="", file=sys.stderr, flush=True)
        if self.progress:
            print(file=sys.stderr)

    def query_range(self, exprs: dict[str, str], start_s: float, end_s: float,
                    step_s: float) -> dict[str, list[dict]]:
        """Every expression's series (decoded JSON), chunks merged per name: for answers with many series."""
        merged: dict[str, list[list[dict]]] = {name: [[]] * len(self.range_chunks(start_s, end_s, step_s))
                                               for name in exprs}

        def keep(name: str, row: int, resp: requests.Response) -> None:
            merged[name][row // MAX_POINTS_PER_SERIES] = self._result(self._decode(resp, f"{self.url}{RANGE_PATH}"),
                                                                      RANGE_PATH)

        self.stream_range(exprs, start_s, end_s, step_s, keep)
        return {name: [series for chunk in parts for series in chunk] for name, parts in merged.items()}

    def query_range_columns(self, exprs: dict[str, str], start_s: float, end_s: float,
                            step_s: float) -> dict[str, np.ndarray]:
        """One aggregated series per expression, on the grid start + k*step (NaN where not evaluated).

        Each chunk's answer is parsed straight into its rows of a preallocated column and dropped, so
        memory is the columns (8 bytes a row) and a few answers in flight, whatever the window's length."""
        n = grid_rows(start_s, end_s, step_s)
        columns = {name: np.full(n, np.nan) for name in exprs}

        def place(name: str, row: int, resp: requests.Response) -> None:
            t_s, values = self.matrix_arrays(resp)
            place_into(columns[name], t_s, values, start_s, step_s)

        self.stream_range(exprs, start_s, end_s, step_s, place)
        return columns

    def matrix_arrays(self, resp: requests.Response) -> tuple[np.ndarray, np.ndarray]:
        """(t, value) of a range answer: the fast path for one series, else decoded and checked as JSON."""
        fast = single_matrix_arrays(resp.content) if resp.status_code == 200 else None
        if fast is not None:
            return fast
        return matrix_to_arrays(self._result(self._decode(resp, f"{self.url}{RANGE_PATH}"), RANGE_PATH))


def store_note(flags: dict[str, str] | None, step_s: float) -> str:
    """The note for a backend that serves no Prometheus config (VictoriaMetrics, Mimir, Thanos): what its query
    semantics could change and how the analysis meets each, with VictoriaMetrics's flags where /flags shows them."""
    how = ("queries carry nocache=1 (VictoriaMetrics then neither rounds a range query's start and end to its step "
           "nor evaluates an instant query earlier than asked), the grid lies on whole steps (a query frontend's "
           "step alignment cannot move it), every expression has its own window (a staleness or lookback setting "
           "does not enter) and the window's newest points are probed before the fetch (a latency offset is waited "
           "for)")
    if flags is None:
        return (f"the backend serves no Prometheus config and no /flags page, so how it stores and queries is not "
                f"known here: {how}. A store that deduplicates (VictoriaMetrics's -dedup.minScrapeInterval) keeps one "
                f"sample per interval: the samples' spacing, and so the {step_s:g} s step, is then that interval")
    from thermograd.analysis.timeparse import parse_duration_s

    said = []
    for flag, (default, meaning) in VM_QUERY_DEFAULTS.items():
        value = flags.get(flag)
        if flag == "dedup.minScrapeInterval" and value is not None:
            try:
                dedup_s = parse_duration_s(value)
            except InputError:
                dedup_s = 0.0
            if dedup_s > 0:
                meaning = (f"one sample kept per {value} per series: the run is seen at that resolution at best (the "
                           f"step is {step_s:g} s)")
        said.append(f"-{flag}={value} ({meaning})" if value is not None else f"-{flag} default {default} ({meaning})")
    return (f"the backend is VictoriaMetrics (its /flags): {'; '.join(said)}. In all: {how}. For a store you run, "
            "docs/stack.md recommends -search.latencyOffset=0s -dedup.minScrapeInterval=0s "
            "-search.maxStalenessInterval=5m")


RANGE_PATH = "/api/v1/query_range"
_VALUES_KEY = b'"values":['
_TO_SPACES = bytes.maketrans(b'[],"', b"    ")


def single_matrix_arrays(body: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(t, value) of a successful matrix answer holding exactly one series, parsed from the bytes without
    building a Python object per sample (the answer's brackets, commas and quotes become spaces and numpy
    parses the numbers, NaN and +/-Inf included). None for any other shape: the JSON path handles it."""
    head = body[:200]
    if b'"status":"success"' not in head or b'"resultType":"matrix"' not in head or body.count(_VALUES_KEY) != 1:
        return None
    i = body.index(_VALUES_KEY) + len(_VALUES_KEY) - 1
    j = body.find(b"]]", i)
    if j < 0 or b"histograms" in body[j:]:
        return None
    text = body[i:j + 2]
    try:
        flat = np.array(text.translate(_TO_SPACES).split(), dtype=float)
    except ValueError:
        return None
    if flat.size != 2 * (text.count(b"[") - 1):  # one [t, "v"] per sample inside the outer [ ]
        return None
    return flat[0::2], flat[1::2]


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:300] if text else ""


def matrix_to_arrays(results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the 'values' of query_range results (one series, possibly several chunks)."""
    try:
        parts = [r["values"] for r in results if r.get("values")]
        if not parts:
            return np.empty(0), np.empty(0)
        t_s = np.concatenate([np.fromiter((v[0] for v in part), float, len(part)) for part in parts])
        vals = np.concatenate([np.array([v[1] for v in part], dtype=float) for part in parts])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"a range query answer has malformed `values` ({type(exc).__name__}: "
                         f"{_first_line(str(exc))}); expected [[time, \"value\"], ...]") from None
    return t_s, vals
