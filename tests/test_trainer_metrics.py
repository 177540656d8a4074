"""TrainingMetrics (no torch needed): exposition, labels, histograms, logs, port errors, GPU UUID lookup."""

from __future__ import annotations

import json
import math
import re
import socket
from datetime import datetime

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_trainer_helpers import sample, scrape

from thermograd.trainer import TrainingMetrics
from thermograd.trainer.identity import detect_gpu_uuid
from thermograd.trainer.metrics import GRAD_NORM_BUCKETS, MetricsPortError


def _trainer_names_in_docs(repo_root) -> set[str]:
    text = (repo_root / "docs" / "metrics.md").read_text()
    section = text.split("## Trainer", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(train_[a-z_]+)` \|", section, flags=re.M))


def _exposed_base_names(metrics: TrainingMetrics) -> set[str]:
    names = set()
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        names.add(name)
    return names


def test_every_documented_trainer_metric_is_exposed_with_run_id_and_rank(repo_root, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    metrics = TrainingMetrics(start=False, model="m", device="cpu")
    metrics.observe_step(1, 2.5, 0.7, 1e-3, tokens=128, epoch=0.01)
    assert _exposed_base_names(metrics) == _trainer_names_in_docs(repo_root)
    for family in metrics.registry.collect():
        for s in family.samples:
            assert s.labels["run_id"] == metrics.run_id and s.labels["rank"] == "3", s
    assert metrics.rank == 3 and metrics.run_id  # generated
    metrics.close()


def test_values_histograms_and_counters(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    metrics = TrainingMetrics(start=False, run_id="r1", max_grad_norm=1.0, gpu_uuid="sim-0", device="cuda:0")
    norms = [0.5, 2.0, math.nan, 3e-5, 5e4]
    for step, norm in enumerate(norms, start=1):
        metrics.observe_step(step, 1.0 / step, norm, 1e-3 * step, tokens=10, epoch=step / 10,
                             perturbation=step == 2)
    text = generate_latest(metrics.registry).decode()
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in text_string_to_metric_families(text) for x in f.samples}
    assert sample(s, "train_step") == 5 and sample(s, "train_steps_total") == 5
    assert sample(s, "train_loss") == pytest.approx(0.2) and sample(s, "train_grad_norm") == 5e4
    assert sample(s, "train_learning_rate") == pytest.approx(5e-3) and sample(s, "train_epoch") == 0.5
    assert sample(s, "train_tokens_total") == 50
    assert sample(s, "train_clipped_steps_total") == 2  # 2.0 and 5e4 exceed 1.0; NaN is not "clipped"
    assert sample(s, "train_nonfinite_steps_total") == 1
    assert sample(s, "train_perturbation_active") == 0
    assert sample(s, "train_run_info", gpu_uuid="sim-0", device="cuda:0", rank="0") == 1
    # Finite norms only; the buckets bracket them (below 1e-4 and above 1e4 land in the end buckets).
    assert sample(s, "train_step_grad_norm_count") == 4
    assert sample(s, "train_step_grad_norm_sum") == pytest.approx(0.5 + 2.0 + 3e-5 + 5e4)
    assert sample(s, "train_step_grad_norm_bucket", le="0.0001") == 1
    assert sample(s, "train_step_grad_norm_bucket", le="10000.0") == 3
    assert sample(s, "train_step_grad_norm_bucket", le="+Inf") == 4
    assert sample(s, "train_step_duration_seconds_count") == 4  # first step has no predecessor
    metrics.close()


def test_grad_norm_buckets_are_exponential_over_eight_decades():
    assert GRAD_NORM_BUCKETS[0] == pytest.approx(1e-4) and GRAD_NORM_BUCKETS[-1] == pytest.approx(1e4)
    ratios = [b / a for a, b in zip(GRAD_NORM_BUCKETS, GRAD_NORM_BUCKETS[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-5)


def test_own_registry_and_http_serving(tmp_path):
    before = {f.name for f in REGISTRY.collect()}
    with TrainingMetrics(port=0, run_id="a") as first, TrainingMetrics(port=0, run_id="b") as second:
        first.observe_step(7, 1.5, 0.25, 1e-4)
        assert sample(scrape(first.url), "train_grad_norm", run_id="a") == 0.25
        before_first_step = scrape(second.url)
        # Nothing observed yet: the last-step gauges are absent (not NaN), the counters are 0.
        for name in ("train_step", "train_loss", "train_grad_norm", "train_learning_rate", "train_epoch"):
            assert not any(n == name for n, _ in before_first_step), name
        assert sample(before_first_step, "train_steps_total", run_id="b") == 0
    assert {f.name for f in REGISTRY.collect()} == before
    assert not any(name.startswith("train_") for name in before)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"127.0.0.1:{port}"):
            TrainingMetrics(port=port, log_dir=tmp_path / "log")
    assert not (tmp_path / "log" / "steps.jsonl").exists()


def test_jsonl_log_and_grad_norm_log_json(tmp_path):
    metrics = TrainingMetrics(start=False, run_id="log", log_dir=tmp_path)
    metrics.observe_step(1, 3.0, 1.25, 1e-3, epoch=0.5)
    metrics.observe_step(2, math.inf, math.nan, 1e-3, epoch=1.0, perturbation=True)
    metrics.close()
    metrics.close()  # idempotent
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "grad_norm_log.json").read_text()) == lines
    first, second = lines
    for key in ("step", "loss", "grad_norm", "learning_rate", "epoch", "timestamp", "time_unix"):
        assert key in first
    assert (first["step"], first["loss"], first["grad_norm"], first["epoch"]) == (1, 3.0, 1.25, 0.5)
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset().total_seconds() == 0 and first["timestamp"].endswith("+00:00")
    assert stamp.timestamp() == pytest.approx(first["time_unix"], abs=1e-6)
    assert second["loss"] is None and second["grad_norm"] is None and second["nonfinite"] is True
    assert second["perturbation"] is True
    with pytest.raises(FileExistsError):  # a second run never overwrites the first one's log
        TrainingMetrics(start=False, log_dir=tmp_path)


class _FakeNvml:
    """The pynvml functions detect_gpu_uuid calls, with NVML's own error class."""

    def __init__(self, pynvml, uuids, fail_init=False):
        self.pynvml, self.uuids, self.fail_init, self.shutdowns = pynvml, uuids, fail_init, 0

    def install(self, monkeypatch):
        p = self.pynvml

        def init():
            if self.fail_init:
                raise p.NVMLError(p.NVML_ERROR_DRIVER_NOT_LOADED)

        def handle(index):
            if index >= len(self.uuids):
                raise p.NVMLError(p.NVML_ERROR_INVALID_ARGUMENT)
            return index

        def shutdown():
            self.shutdowns += 1

        monkeypatch.setattr(p, "nvmlInit", init)
        monkeypatch.setattr(p, "nvmlDeviceGetHandleByIndex", handle)
        monkeypatch.setattr(p, "nvmlDeviceGetUUID", lambda h: self.uuids[h])
        monkeypatch.setattr(p, "nvmlShutdown", shutdown)


def test_gpu_uuid_from_nvml_through_cuda_visible_devices(monkeypatch):
    pynvml = pytest.importorskip("pynvml")
    fake = _FakeNvml(pynvml, ["GPU-aaa", "GPU-bbb", "GPU-ccc"])
    fake.install(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpu_uuid("cpu") == ""
    assert detect_gpu_uuid("cuda:1") == "GPU-bbb"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert detect_gpu_uuid("cuda:0") == "GPU-ccc"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect_gpu_uuid("cuda") == "GPU-aaa"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-zzz")
    assert detect_gpu_uuid("cuda:0") == "GPU-zzz"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert detect_gpu_uuid("cuda:0") == ""  # NVML_ERROR_INVALID_ARGUMENT → unknown, not a crash
    assert fake.shutdowns >= 3


def test_gpu_uuid_is_empty_when_nvml_is_unavailable(monkeypatch):
    pynvml = pytest.importorskip("pynvml")
    _FakeNvml(pynvml, ["GPU-aaa"], fail_init=True).install(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpu_uuid("cuda:0") == ""
    metrics = TrainingMetrics(start=False, device="cuda:0")
    assert metrics.run_info["gpu_uuid"] == ""
    metrics.close()


def test_numpy_and_tensor_step_epoch_tokens_are_coerced_and_logged(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    metrics = TrainingMetrics(port=0, run_id="co", log_dir=tmp_path)
    try:
        metrics.observe_step(np.int64(1), 2.0, 0.5, 1e-3, tokens=torch.ones(2, 3).sum(), epoch=np.float32(0.5))
        metrics.observe_step(torch.tensor(2), torch.tensor(1.5), np.float64(0.25), 1e-3,
                             tokens=np.int64(6), epoch=torch.tensor(1.0))
        text = scrape(metrics.url)
    finally:
        metrics.close()
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["epoch"]) for r in records] == [(1, 6, 0.5), (2, 6, 1.0)]
    assert all(type(r["step"]) is int and type(r["tokens"]) is int for r in records)
    assert sample(text, "train_tokens_total") == 12
    assert sample(text, "train_step") == 2


def test_a_pause_is_a_labelled_state_not_a_step_and_not_in_the_step_duration(tmp_path):
    import time

    metrics = TrainingMetrics(port=0, run_id="pz", log_dir=tmp_path)
    try:
        before = scrape(metrics.url)
        assert sample(before, "train_perturbation_active", kind="lr") == 0
        assert not [k for k in before if ("kind", "pause") in k[1]]  # no pause scheduled: no pause series
        metrics.begin_step()
        metrics.observe_step(1, 2.0, 1.0, 1e-3, tokens=8, perturbation=True)
        metrics.begin_pause()
        during = scrape(metrics.url)
        assert sample(during, "train_perturbation_active", kind="pause") == 1
        assert sample(during, "train_perturbation_active", kind="lr") == 1  # an LR burst may overlap a pause
        time.sleep(0.3)
        metrics.end_pause()
        metrics.observe_step(2, 2.0, 1.0, 1e-3, tokens=8, perturbation=False)
        after = scrape(metrics.url)
        assert sample(after, "train_perturbation_active", kind="pause") == 0
        assert sample(after, "train_steps_total") == 2
        assert sample(after, "train_step_duration_seconds_sum") < 0.3  # the 0.3 s pause is in no step
    finally:
        metrics.close(linger_s=0)
    first, second = (json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines())
    assert (first["pause_s"], first["pause_start_unix"], first["perturbation"]) == (0.0, None, True)
    assert 0.3 <= second["pause_s"] < 0.6 and second["perturbation"] is False
    assert second["pause_start_unix"] + second["pause_s"] <= second["time_unix"]


def test_step_log_writer_survives_an_unwritable_record(tmp_path, capsys):
    from thermograd.trainer.steplog import StepLog

    log = StepLog(tmp_path, "bad", 0)
    good = (1, 1.0, 0.5, 1e-3, 0.1, 1.7e9, 8, False, False, False, 0.0, None)
    log.append(good)
    log.append((object(), 1.0, 0.5, 1e-3, 0.2, 1.7e9, 8, False, False, False, 0.0, None))  # not JSON-serialisable
    log.append((object(), 1.0, 0.5, 1e-3, 0.3, 1.7e9, 8, False, False, False, 0.0, None))
    log.append((3, 1.0, 0.5, 1e-3, 0.4, 1.7e9, 8, False, False, False, 0.0, None))
    log.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()] == [1, 3]
    assert [r["step"] for r in json.loads((tmp_path / "grad_norm_log.json").read_text())] == [1, 3]
    err = capsys.readouterr().err
    assert err.count("skipping a record") == 1, err


def test_step_log_writer_survives_any_exception_and_close_returns(tmp_path, capsys):
    """A record whose timestamp cannot be rendered (OverflowError, not a TypeError/ValueError) killed the
    writer thread; the queue then filled and close() waited forever for room: the trainer never exited."""
    import threading

    from thermograd.trainer.steplog import StepLog

    log = StepLog(tmp_path, "overflow", 0, max_queued=4)
    log.append((1, 1.0, 0.5, 1e-3, 0.1, 1e300, 8, False, False, False, 0.0, None))  # year 10^292
    for step in range(2, 12):
        log.append((step, 1.0, 0.5, 1e-3, 0.1, 1.7e9, 8, False, False, False, 0.0, None))
    closer = threading.Thread(target=log.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() hangs"
    steps = [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert steps and steps[0] >= 2 and steps == sorted(steps)
    assert "skipping a record" in capsys.readouterr().err


def test_close_with_an_infinite_linger_waits_until_cancelled():
    import threading

    metrics = TrainingMetrics(port=0, run_id="li", linger_s=math.inf)
    errors: list[BaseException] = []

    def close() -> None:
        try:
            metrics.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    closer = threading.Thread(target=close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and not errors, errors  # lingering, not an OverflowError
    metrics.cancel_linger()
    closer.join(5)
    assert not closer.is_alive() and not errors
