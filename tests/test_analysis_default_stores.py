"""The analysis against a store someone else configured: a real VictoriaMetrics started with its DEFAULT flags
(only -storageDataPath, -httpListenAddr, -retentionPeriod: -search.latencyOffset=30s, the range-query cache's step
alignment, automatic staleness), for a run that ended 0, 60 and 300 s before the analysis, found with the default
30-day look-back and no --start/--end. Each run's samples are imported with timestamps shifted so that it ended
that long ago (VictoriaMetrics's /api/v1/import), the same samples into a VictoriaMetrics with the recommended
query flags (testkit.stack.VICTORIAMETRICS_QUERY_FLAGS, under which tests/test_stack_longterm.py shows it equal to
Prometheus): the verdicts, windows and statistics must be the same. Also: VictoriaMetrics's cluster URL layout
(/select/<tenant>/prometheus) through a path-mapping proxy in front of the default one, and the waiting for a
store's held-back newest points with a fake client."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import free_port
from test_stack_integration import require_binary
from test_stack_longterm import COMPARED, differences

from testkit import stack as sl
from testkit.backfill import device_series, train_series
from testkit.synthetic import planted_run
from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.client import PromClient, store_note
from thermograd.analysis.sources.fetch import wait_for_newest_points

ROOT = Path(__file__).resolve().parents[1]


RUN_S = 90
AGOS_S = (0, 60, 300)
TENANT_PATH = "/select/0/prometheus"


def vm_argv(binary: str, storage: Path, port: int, *, defaults: bool) -> list[str]:
    if defaults:  # what a new user or a platform team's shared store runs: nothing but where and how long
        return [binary, f"-storageDataPath={storage}", f"-httpListenAddr={sl.LOOPBACK}:{port}", "-retentionPeriod=1y"]
    return sl.victoriametrics_argv(binary, storage, port)


def import_run(url: str, run_id: str, end_s: int, seed: int) -> int:
    """A planted run of RUN_S seconds whose last sample is at end_s (trainer rank 0 and device sim-0, 1 s apart),
    imported as JSON lines and flushed so that queries see it at once. Returns its first second."""
    start_s = end_s - RUN_S + 1
    columns = planted_run(RUN_S, seed=seed)
    series = train_series(columns, start_s, run_id, "sim-0") + device_series(columns, start_s, "sim-0", "0")
    body = "\n".join(json.dumps({"metric": {"__name__": s.name, **s.labels}, "values": s.values.tolist(),
                                 "timestamps": [int(t) * 1000 for t in s.t_s]}) for s in series)
    requests.post(f"{url}/api/v1/import", data=body.encode(), timeout=30).raise_for_status()
    requests.get(f"{url}/internal/force_flush", timeout=30).raise_for_status()
    return start_s


def analyse(url: str, run_id: str, out: Path) -> tuple[dict, float]:
    t0 = time.monotonic()
    result = subprocess.run(sl.python_module_argv(
        "thermograd.analysis", "--prometheus", url, "--run", run_id, "--surrogates", "200", "--max-lag", "5s",
        "--out", str(out), "--quiet"), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"analysis against {url} failed:\n{result.stderr[-3000:]}"
    return json.loads((out / "report.json").read_text()), time.monotonic() - t0


class LoopbackServer:
    """A small HTTP server on the loopback for GETs: `respond(path)` gives (status, body, content type); every
    path asked for is kept in `paths`. A context manager, or call `close()`."""

    def __init__(self, respond: Callable[[str], tuple[int, bytes, str]], name: str):
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.paths.append(self.path)
                status, body, kind = respond(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((sl.LOOPBACK, 0), Handler)
        self.root = f"http://{sl.LOOPBACK}:{self.server.server_address[1]}"
        self.url = self.root  # where a client points: the root, or a prefix below it
        threading.Thread(target=self.server.serve_forever, name=name, daemon=True).start()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


NOT_FOUND = (404, b"404 page not found\n", "text/plain; charset=utf-8")


def tenant_proxy(upstream: str) -> LoopbackServer:
    """VictoriaMetrics's cluster layout in front of a single-node one: /select/0/prometheus/api/v1/... is served
    from /api/v1/..., every other path is 404 (as vmselect answers a path without its tenant prefix). Its `url`
    is the tenant's prefix."""

    def respond(path: str) -> tuple[int, bytes, str]:
        if not path.startswith(f"{TENANT_PATH}/"):
            return 404, b"unsupported path requested\n", "text/plain; charset=utf-8"
        try:
            with urllib.request.urlopen(upstream + path[len(TENANT_PATH):], timeout=60) as answer:
                return answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "")

    proxy = LoopbackServer(respond, "tenant-proxy")
    proxy.url = f"{proxy.root}{TENANT_PATH}"
    return proxy


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("default-stores")
    binary = require_binary("victoriametrics")
    with sl.Supervisor() as supervisor:
        urls = {}
        for name, defaults in (("default", True), ("flags", False)):
            port = free_port()
            supervisor.start(name, vm_argv(binary, tmp / f"{name}-data", port, defaults=defaults),
                             tmp / "logs" / f"{name}.log")
            urls[name] = f"http://{sl.LOOPBACK}:{port}"
        for url in urls.values():
            sl.wait_http_ok(f"{url}/health", 60, supervisor=supervisor)
        yield {"urls": urls, "tmp": tmp}


@pytest.fixture(scope="module")
def analysed(stores) -> dict[int, dict]:
    """For each age, oldest first (the runs never overlap): the run imported into both stores so that it ended
    that long ago, then analysed against the default store at once, then against the flagged one."""
    out = {}
    for k, ago_s in enumerate(sorted(AGOS_S, reverse=True)):
        run_id = f"default-store-{ago_s}s"
        end_s = int(time.time()) - ago_s
        start_s = [import_run(url, run_id, end_s, seed=11 + k) for url in stores["urls"].values()][0]
        default, took_s = analyse(stores["urls"]["default"], run_id, stores["tmp"] / f"default-{ago_s}")
        flags, _ = analyse(stores["urls"]["flags"], run_id, stores["tmp"] / f"flags-{ago_s}")
        out[ago_s] = {"default": default, "flags": flags, "start_s": start_s, "end_s": end_s, "took_s": took_s}
    return out


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("ago_s", AGOS_S)
def test_a_default_store_finds_the_run_and_gives_the_same_verdict(analysed, ago_s):
    got = analysed[ago_s]
    default, flags = got["default"], got["flags"]
    assert default["inputs"]["run_id"] == f"default-store-{ago_s}s"
    assert default["verdict"]["strength"] != "insufficient data"  # a comparison of real numbers
    assert default["verdicts"] == flags["verdicts"]
    assert default["window"] == flags["window"]
    # the window is the run: from its first sample, to its last (VictoriaMetrics's irate carries a histogram's
    # last increase a few steps past the end of an imported series, whatever its flags)
    assert default["window"]["start_unix"] == got["start_s"]
    assert got["end_s"] <= default["window"]["end_unix"] <= got["end_s"] + 5
    found, _ = differences({k: flags[k] for k in COMPARED if k in flags},
                           {k: default[k] for k in COMPARED if k in default})
    assert found == []


@pytest.mark.slow
@pytest.mark.integration
def test_right_after_the_run_the_analysis_waits_for_the_held_back_points_and_says_so(analysed):
    just_ended, old = analysed[0]["default"], analysed[300]["default"]
    waited = [note for note in just_ended["notes"] if "held back its newest points" in note]
    assert len(waited) == 1 and "-search.latencyOffset" in waited[0], just_ended["notes"]
    assert analysed[0]["took_s"] >= 20  # the default offset is 30 s
    assert not any("held back its newest points" in note for note in old["notes"])
    assert any(q["query"] == "time()" and q["type"] == "probe" for q in just_ended["queries"])


@pytest.mark.slow
@pytest.mark.integration
def test_the_report_says_what_the_stores_flags_change(analysed):
    default, flags = analysed[60]["default"], analysed[60]["flags"]
    said = next(note for note in default["notes"] if note.startswith("the backend is VictoriaMetrics"))
    for text in ("-search.latencyOffset default 30s", "-dedup.minScrapeInterval default 0s",
                 "-search.maxStalenessInterval default auto", "nocache=1", "recommends"):
        assert text in said, said
    said = next(note for note in flags["notes"] if note.startswith("the backend is VictoriaMetrics"))
    assert "-search.latencyOffset=0s" in said and "-dedup.minScrapeInterval=0s" in said


@pytest.mark.slow
@pytest.mark.integration
def test_the_cluster_url_layout_works_as_the_prometheus_url(stores, tmp_path):
    run_id = "default-store-tenant"
    end_s = int(time.time()) - 120
    import_run(stores["urls"]["default"], run_id, end_s, seed=31)
    proxy = tenant_proxy(stores["urls"]["default"])
    try:
        report, _ = analyse(proxy.url + "/", run_id, tmp_path / "tenant")  # a trailing slash is fine too
    finally:
        proxy.close()
    assert report["inputs"]["url"] == proxy.url
    assert report["verdict"]["strength"] != "insufficient data"
    api = [path for path in proxy.paths if "/api/v1/" in path]
    assert api and all(path.startswith(f"{TENANT_PATH}/api/v1/") for path in api)


# ------------------------------------------------------------------ waiting for held-back points (no store)
class HoldsBack:
    """A fake client: the newest `held_s` of its now are held back; its now moves with the fake sleep."""

    def __init__(self, now_s: float, held_s: float):
        self.now_s, self.held_s, self.url, self.progress, self.probes = now_s, held_s, "http://store", False, 0

    def newest_held_back_s(self, start_s: float, end_s: float, step_s: float) -> float | None:
        self.probes += 1
        t, k = start_s, 0
        while t <= end_s:
            if t > self.now_s - self.held_s:
                return t
            k += 1
            t = start_s + k * step_s
        return None

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


def test_waits_until_the_held_back_points_are_served():
    end_s = time.time()
    client = HoldsBack(end_s + 0.3, 30.0)
    notes: list[str] = []
    assert wait_for_newest_points(client, end_s - 89, end_s, 1.0, notes, sleep=client.sleep) == end_s
    assert client.now_s - client.held_s >= end_s and client.probes == 2
    assert len(notes) == 1 and "waited 31 s" in notes[0]


def test_a_store_that_serves_everything_costs_one_probe_and_no_note():
    end_s = time.time()
    client = HoldsBack(end_s + 100, 30.0)
    notes: list[str] = []
    assert wait_for_newest_points(client, end_s - 89, end_s, 1.0, notes, sleep=client.sleep) == end_s
    assert client.probes == 1 and notes == []
    old = HoldsBack(0.0, 1e12)  # a window that ended hours ago is not probed at all
    assert wait_for_newest_points(old, end_s - 7200 - 89, end_s - 7200, 1.0, notes) == end_s - 7200
    assert old.probes == 0 and notes == []


def test_a_longer_hold_than_the_wait_leaves_the_held_rows_out_and_says_so():
    end_s = time.time()
    client = HoldsBack(end_s, 60.0)
    notes: list[str] = []
    got = wait_for_newest_points(client, end_s - 299, end_s, 1.0, notes, max_wait_s=10, sleep=client.sleep)
    assert end_s - 62 <= got <= end_s - 60 and len(notes) == 1 and "left out" in notes[0]
    with pytest.raises(InputError, match="holds back every point"):
        wait_for_newest_points(HoldsBack(end_s, 600.0), end_s - 89, end_s, 1.0, [], max_wait_s=10, sleep=client.sleep)


def test_the_client_appends_the_api_paths_to_a_cluster_url():
    client = PromClient(f"http://vmselect:8481{TENANT_PATH}/")
    seen = []

    def fake_get(endpoint: str, params: object) -> requests.Response:
        seen.append(endpoint)
        answer = requests.Response()
        answer.status_code, answer._content = 200, b'{"status":"success","data":{"resultType":"vector","result":[]}}'
        return answer

    client._get_within_deadline = fake_get  # type: ignore[method-assign]
    client.instant("up", 0.0, "test")
    assert seen == [f"http://vmselect:8481{TENANT_PATH}/api/v1/query"]


def flags_only(text: str) -> LoopbackServer:
    """A vmselect stand-in: /flags at its root (text/plain, as VictoriaMetrics writes it), 404 anywhere else."""
    return LoopbackServer(lambda path: (200, text.encode(), "text/plain; charset=utf-8") if path == "/flags"
                          else NOT_FOUND, "flags")


def test_the_store_flags_are_read_from_vmselects_root_and_deduplication_is_said():
    with flags_only('-dedup.minScrapeInterval="30s"\n-httpListenAddr=":8481"\n') as vmselect:
        flags = PromClient(f"{vmselect.root}{TENANT_PATH}", retries=0).store_flags()
        assert flags == {"dedup.minScrapeInterval": "30s", "httpListenAddr": ":8481"}
        note = store_note(flags, 30.0)
        assert "-dedup.minScrapeInterval=30s (one sample kept per 30s per series" in note
        assert "-search.latencyOffset default 30s" in note
    with flags_only("<html>not flags</html>\n") as other:  # a page that is not VictoriaMetrics's: nothing known
        assert PromClient(other.root, retries=0).store_flags() is None
    assert "no /flags page" in store_note(None, 1.0)
