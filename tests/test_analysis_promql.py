"""The HTTP client: chunking, retries with back-off, auth and headers (a stub server over real HTTP,
because a real Prometheus cannot be made to fail on demand)."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.client import MAX_POINTS_PER_SERIES, PromClient, matrix_to_arrays


class Stub:
    """Answers query_range with one series holding every grid point; fails the first `failures` calls."""

    def __init__(self, failures: int = 0, status: int = 503):
        self.failures, self.status, self.requests = failures, status, []

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, params, dict(handler.headers)))
        if self.failures > 0:
            self.failures -= 1
            body, code = {"status": "error", "errorType": "unavailable", "error": "try later"}, self.status
        elif url.path == "/api/v1/status/config":
            body, code = {"status": "success", "data": {"yaml": "global:\n  scrape_interval: 15s\n"}}, 200
        else:
            start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
            stamps = np.arange(start, end + step / 2, step)
            values = [[float(t), str(t / 10)] for t in stamps]
            body = {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}
            code = 200
        payload = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def stub_server():
    servers = []

    def start(stub: Stub) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                stub.handle(self)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_chunks_stay_under_the_point_limit_and_join_exactly(stub_server):
    stub = Stub()
    client = PromClient(stub_server(stub), workers=2)
    start, step, n = 1000.0, 1.0, 25_000
    result = client.query_range({"x": "up"}, start, start + (n - 1) * step, step)
    t_s, values = matrix_to_arrays(result["x"])
    assert np.array_equal(t_s, start + np.arange(n))  # no gaps, no duplicates at chunk edges
    assert np.allclose(values, t_s / 10)
    sizes = [(float(p["end"]) - float(p["start"])) / step + 1 for _, p, _ in stub.requests]
    assert len(sizes) == 3 and max(sizes) <= MAX_POINTS_PER_SERIES
    assert client.queries == [{"purpose": "x", "type": "range", "query": "up", "start": start,
                               "end": start + n - 1, "step": step, "chunks": 3}]


def test_retries_5xx_with_backoff_then_succeeds(stub_server):
    stub = Stub(failures=2)
    client = PromClient(stub_server(stub), retries=3, backoff_s=0.01)
    assert client.scrape_interval_s() == 15.0
    assert len(stub.requests) == 3


def test_gives_up_after_retries_with_one_line(stub_server):
    url = stub_server(Stub(failures=10))
    client = PromClient(url, retries=2, backoff_s=0.01)
    with pytest.raises(InputError, match=r"unreachable .*HTTP 503") as info:
        client.query_range({"x": "up"}, 0, 10, 1)
    assert url in str(info.value) and "\n" not in str(info.value)


def test_4xx_is_not_retried_and_reports_the_error(stub_server):
    stub = Stub(failures=1, status=400)
    client = PromClient(stub_server(stub), retries=3, backoff_s=0.01)
    with pytest.raises(InputError, match="unavailable: try later"):
        client.instant("up", 0, "test")
    assert len(stub.requests) == 1


def test_auth_and_extra_headers_are_sent(stub_server):
    stub = Stub()
    url = stub_server(stub)
    PromClient(url, bearer_token="tok", headers={"X-Scope-OrgID": "t1"}).scrape_interval_s()
    PromClient(url, basic_auth=("u", "p")).scrape_interval_s()
    first, second = stub.requests[0][2], stub.requests[1][2]
    assert first["Authorization"] == "Bearer tok" and first["X-Scope-OrgID"] == "t1"
    assert second["Authorization"] == "Basic dTpw"


def test_range_windows_are_valid_promql_durations_for_any_step(tmp_path):
    from thermograd.analysis.sources.fetch import grad_norm_mean_expr, range_window, series_exprs

    assert range_window(1.0) == "[1s]" and range_window(0.5) == "[500ms]" and range_window(1.5) == "[1500ms]"
    exprs = series_exprs("r1", "0", "GPU-1", 0.5, 0.5)
    assert "[500ms]" in exprs["loss"] and "[1000ms]" not in exprs["grad_norm"] and "[1s]" in exprs["grad_norm"]
    # A step of several scrapes: the rate window reaches back one scrape more, so no optimizer step between
    # the last sample before the window and the first inside it is lost.
    assert "rate(train_step_grad_norm_sum{x}[3s])" in grad_norm_mean_expr("{x}", 2.0, 1.0)
    # Every expression must parse in PromQL (a fractional `[0.5s]` does not).
    rules = "groups:\n- name: g\n  rules:\n" + "".join(
        f"  - record: r:{name}\n    expr: {json.dumps(expr)}\n" for name, expr in exprs.items())
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _matrix_body(series: list[list]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"job": "a"}, "values": values} for values in series]}}, separators=(",", ":")).encode()


def test_the_fast_parse_equals_the_json_path_and_refuses_other_shapes():
    from thermograd.analysis.sources.client import single_matrix_arrays

    values = [[1767225600.5, "1.25"], [1767225601, "NaN"], [1767225602, "+Inf"], [1767225603, "-Inf"],
              [1767225604, "-3e-7"]]
    t_s, v = single_matrix_arrays(_matrix_body([values]))
    ref_t, ref_v = matrix_to_arrays([{"values": values}])
    assert np.array_equal(t_s, ref_t) and np.array_equal(v, ref_v, equal_nan=True)
    assert single_matrix_arrays(_matrix_body([])) is None  # no series: the JSON path says so
    assert single_matrix_arrays(_matrix_body([values, values])) is None  # two series
    assert single_matrix_arrays(_matrix_body([[[1, "x"]]])) is None  # not a number
    assert single_matrix_arrays(b'{"status":"error","errorType":"bad_data","error":"x"}') is None
    assert single_matrix_arrays(_matrix_body([values])[:-20]) is None  # truncated


def test_columns_stream_into_the_grid_like_the_merged_answer(stub_server):
    from thermograd.analysis.align import place_on_grid

    client = PromClient(stub_server(Stub()), workers=3)
    start, step, n = 1000.0, 0.5, 23_000
    end = start + (n - 1) * step
    columns = client.query_range_columns({"x": "up", "y": "up"}, start, end, step)
    t_s, values = matrix_to_arrays(client.query_range({"x": "up"}, start, end, step)["x"])
    assert set(columns) == {"x", "y"} and columns["x"].size == n
    assert np.array_equal(columns["x"], place_on_grid(t_s, values, start, step, n))
    assert np.allclose(columns["y"], (start + step * np.arange(n)) / 10)
