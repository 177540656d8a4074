"""Fault suite, bad input: recordings that go back in time or hold impossible values, trainer settings
that wreck a run, library calls that would corrupt counters, and a Prometheus backend that drip-feeds
or answers the wrong shape. Each gets one clear line and exit 2 (or a ValueError in the library),
never a traceback, a hang or a poisoned series."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testkit.faults import get, one_line_error, run_module, sample, serving
from thermograd.exporter.backends.base import DeviceInfo, Reading
from thermograd.exporter.collector import SnapshotCollector
from thermograd.exporter.exposition import render
from thermograd.exporter.sampler import Sampler
from thermograd.trainer.metrics import TrainingMetrics

HEADER = "timestamp,device,util_pct,temp_c,power_w\n"


def replay(path: Path) -> object:
    return run_module("thermograd.exporter", "--backend", "replay", "--replay-csv", str(path), "--port", "0",
                      timeout=30)


@pytest.mark.parametrize(("rows", "line"), [
    ("1,gpu,50,60,100\n3,gpu,50,60,100\n2,gpu,50,60,100\n", 4),  # backwards
    ("1,gpu,50,60,100\n1,gpu,50,60,100\n", 3),  # equal
    ("1,gpu,50,60,100\nnan,gpu,50,60,100\n", 3),  # NaN
])
def test_replay_timestamps_that_do_not_increase_are_one_line_errors(tmp_path: Path, rows: str, line: int):
    # Before: the exporter started, divided by zero every round and /healthz answered 503 forever.
    path = tmp_path / "rec.csv"
    path.write_text(HEADER + rows)
    one_line_error(replay(path), str(path), f"line {line}", "'timestamp'")


@pytest.mark.parametrize(("row", "column"), [
    ("2,gpu,50,-300,100", "temp_c"),
    ("2,gpu,50,60,1e308", "power_w"),
    ("2,gpu,1e308,60,100", "util_pct"),
])
def test_physically_absurd_values_are_refused_never_served(tmp_path: Path, row: str, column: str):
    path = tmp_path / "rec.csv"
    path.write_text(HEADER + "1,gpu,50,60,100\n" + row + "\n")
    one_line_error(replay(path), str(path), "line 3", repr(column), "plausible")


def test_recompute_with_an_overflowing_utilization_is_one_line(tmp_path: Path):
    # Before: OverflowError traceback from the engine.
    path = tmp_path / "rec.csv"
    path.write_text(HEADER + "".join(f"{t},gpu,{'1e308' if t == 5 else 50},60,100\n" for t in range(1, 10)))
    result = run_module("thermograd.exporter", "recompute", "--csv", str(path), "--device", "gpu",
                        "--rated-power", "200", "--temp-limit", "83", "--out", str(tmp_path / "out.csv"))
    one_line_error(result, "line 6", "'util_pct'")
    assert not (tmp_path / "out.csv").exists()


def test_a_utf8_bom_is_read_not_reported_as_a_missing_column(tmp_path: Path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "".join(f"{t},gpu,50,60,100\n" for t in range(1, 20))).encode())
    out = tmp_path / "out.csv"
    result = run_module("thermograd.exporter", "recompute", "--csv", str(path), "--device", "gpu",
                        "--rated-power", "200", "--temp-limit", "83", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("timestamp,device,")
    with serving("exporter", tmp_path, "--backend", "replay", "--replay-csv", str(path)) as served:
        assert get(served.base + "/healthz")[0] == 200


class _GlitchyBackend:
    """A device whose driver reports -300 °C and 1e308 W (NVML has returned 0xFFFFFFFF-style values)."""

    name = "glitch"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("0", "g-0", "glitch", "gpu", "sim", 300.0, 83.0)]

    def read(self, index: int, now_s: float) -> Reading:
        return Reading(util_pct=50.0, temp_c=-300.0, power_w=1e308)

    def close(self) -> None:
        pass


def test_absurd_live_readings_are_dropped_counted_and_not_served():
    sampler = Sampler(_GlitchyBackend(), 1.0, {}, {})
    for _ in range(3):
        sampler.sample_once()
    body = render(SnapshotCollector(lambda: sampler.snapshot).collect())
    assert sample(body, "rle_exporter_errors_total", device="0", op="temperature") == 3
    assert sample(body, "rle_exporter_errors_total", device="0", op="power") == 3
    for name in ("rle_temperature_celsius", "rle_power_watts", "rle_efficiency"):
        with pytest.raises(KeyError):
            sample(body, name, device="0")
    assert sample(body, "rle_utilization_ratio", device="0") == 0.5


@pytest.mark.parametrize(("args", "needle"), [
    (["--perturb", "every=60s,duration=5s,lr_mult=inf"], "lr_mult"),
    (["--perturb", "every=0.000001s,duration=0.0000001s"], "every="),
    (["--perturb", "every=0.5steps,duration=0.1steps"], "every="),
    (["--lr", "inf"], "--lr"),
    (["--max-grad-norm", "nan"], "--max-grad-norm"),
])
def test_trainer_settings_that_wreck_a_run_are_refused(args: list[str], needle: str):
    one_line_error(run_module("thermograd.trainer", "--port", "0", *args), needle)


def test_library_calls_that_would_corrupt_series_raise_and_record_nothing():
    with TrainingMetrics(port=0, run_id="lib") as metrics:
        metrics.observe_step(1, 2.0, 0.5, 1e-3, tokens=100, duration_s=0.25)
        with pytest.raises(ValueError, match="duration_s"):
            metrics.observe_step(2, 2.0, 0.5, 1e-3, duration_s=math.nan)
        with pytest.raises(ValueError, match="tokens"):
            metrics.observe_step(3, 2.0, 0.5, 1e-3, tokens=-100)
        body = get(metrics.url)[1]
    assert sample(body, "train_tokens_total", run_id="lib") == 100  # never went down
    assert sample(body, "train_steps_total", run_id="lib") == 1
    assert sample(body, "train_step_duration_seconds_sum", run_id="lib") == 0.25  # never NaN
    assert sample(body, "train_step", run_id="lib") == 1


@contextmanager
def backend(answer: bytes, drip_s: float | None = None) -> Iterator[str]:
    """A fake Prometheus on a real socket: answers every request with `answer`, one byte every `drip_s`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for i in range(len(answer)) if drip_s else [None]:
                    if stop.is_set():
                        return
                    conn.sendall(answer[i:i + 1] if drip_s else answer)
                    if drip_s:
                        time.sleep(drip_s)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _json_answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body)


def analyse(url: str, tmp_path: Path) -> object:
    return run_module("thermograd.analysis", "--prometheus", url, "--timeout", "1", "--retries", "0", "--out",
                      str(tmp_path / "out"), timeout=60)


@pytest.mark.slow
def test_a_drip_feeding_backend_times_out_per_request(tmp_path: Path):
    # Before: --timeout bounded each socket read, so a byte every 0.5 s kept the analysis waiting forever.
    with backend(_json_answer(b'{"status":"success","data":{"result":[]}}'), drip_s=0.5) as url:
        started = time.monotonic()
        result = analyse(url, tmp_path)
    one_line_error(result, "timeout")
    assert time.monotonic() - started < 45


@pytest.mark.slow
@pytest.mark.parametrize("body", [b"[1, 2, 3]", b'{"status": "success", "data": [1, 2]}',
                                  b'{"status": "success", "data": {"result": {"a": 1}}}'])
def test_a_json_answer_of_the_wrong_shape_is_one_line(tmp_path: Path, body: bytes):
    with backend(_json_answer(body)) as url:
        one_line_error(analyse(url, tmp_path), "not a Prometheus API answer")
