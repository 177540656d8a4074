"""Pure parts of the trainer: perturbation grammar/schedule, LR schedule, tokenizer, sampler, grad norm."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest

from thermograd.trainer.data import WindowSampler, corpus_files, read_documents
from thermograd.trainer.errors import UsageError
from thermograd.trainer.perturb import PerturbError, PerturbSchedule, parse_perturb, parse_step_ranges
from thermograd.trainer.schedule import lr_factor
from thermograd.trainer.tokenizer import ByteTokenizer


def test_perturb_grammar():
    spec = parse_perturb("every=60s,duration=5s,lr_mult=10,jitter=0.3")
    assert (spec.unit, spec.every, spec.duration, spec.lr_mult, spec.jitter) == ("s", 60.0, 5.0, 10.0, 0.3)
    assert parse_perturb("every=2m,duration=500ms").every == 120.0
    steps = parse_perturb("every=100steps,duration=5steps")
    assert (steps.unit, steps.every, steps.lr_mult) == ("steps", 100.0, 10.0)
    assert parse_perturb("steps=10-14,30-34,lr_mult=3").step_ranges == ((10, 14), (30, 34))
    assert parse_perturb("lr_mult=3, steps=7").step_ranges == ((7, 7),)
    assert parse_step_ranges("3,5-6") == ((3, 3), (5, 6))
    assert parse_perturb("every=60s,duration=5s").kind == "lr" == parse_perturb("kind=lr,steps=3").kind
    pause = parse_perturb("kind=pause,every=20s,duration=4s,jitter=0.3,start=10s")
    assert (pause.kind, pause.unit, pause.every, pause.duration, pause.start) == ("pause", "s", 20.0, 4.0, 10.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every=60,duration=5s", "needs a unit"),
        ("every=60s", r"^duration= is missing: a schedule needs every= and duration="),
        ("duration=5s", r"^every= is missing"),
        ("jitter=0.2", r"^every= and duration= are missing"),
        ("every=xx", r"^every='xx' is not an amount: a number and a unit"),  # named, not reported as missing
        ("every=xx,duration=5s", r"^every='xx' is not an amount"),
        ("every=60s,duration=soon", r"^duration='soon' is not an amount"),
        ("every=60s,duration=5steps", "both be times or both be steps"),
        ("every=10s,duration=9s,jitter=0.3", "never overlap"),
        ("every=10s,duration=1s,jitter=1.5", "jitter must be in"),
        ("steps=5-3", "bad step range"),
        ("steps=1,every=5s", "cannot be combined"),
        ("lr_mult=-1,steps=1", "lr_mult must be > 0"),
        ("lr_mult=x,steps=1", "not a number"),
        ("speed=3", "unknown key 'speed'"),
        ("every=5s,every=6s,duration=1s", "given twice"),
        ("10-14", "not key=value"),
        ("kind=stall,every=5s,duration=1s", "kind='stall' is not one of lr, pause"),
        ("kind=pause,every=20s,duration=4s,lr_mult=3", "kind=pause takes no lr_mult="),
        ("kind=pause,steps=3-5", "kind=pause takes no steps="),
        ("kind=pause,every=20steps,duration=2steps", "kind=pause needs times"),
        ("kind=pause,every=20s", r"^duration= is missing: a schedule needs every= and duration="),
        ("kind=pause,every=xx", r"^every='xx' is not an amount"),
        ("kind=pause,every=0.5s,duration=0.1s", "too short"),
        ("kind=pause,every=10s,duration=10s", "never overlap"),
    ],
)
def test_perturb_grammar_errors_are_one_line(text, message):
    with pytest.raises(PerturbError, match=message) as info:
        parse_perturb(text)
    assert "\n" not in str(info.value)


def test_time_bursts_are_seeded_jittered_and_last_duration():
    spec = parse_perturb("every=10s,duration=2s,jitter=0.3")
    a, b, c = PerturbSchedule(spec, 1), PerturbSchedule(spec, 1), PerturbSchedule(spec, 2)
    times = np.arange(0, 500, 0.1)
    active_a = [a.active(1, t) for t in times]
    assert active_a == [b.active(1, t) for t in times]
    assert active_a != [c.active(1, t) for t in times]
    starts = a.burst_starts_until(500)
    gaps = np.diff(starts)
    assert gaps.min() >= 7.0 - 1e-9 and gaps.max() <= 13.0 + 1e-9 and gaps.std() > 0.5
    assert starts[0] >= 7.0 - 1e-9  # first burst only after one (jittered) gap
    # Each burst is active for exactly its 2 s: 20 samples of 0.1 s.
    assert sum(active_a) == pytest.approx(20 * sum(1 for s in starts if s + 2 <= 500), abs=len(starts))


def test_pause_bursts_have_their_own_seeded_schedule():
    """Same seed, same every: a pause schedule is not the LR schedule (the analysis must tell them apart)."""
    lr = PerturbSchedule(parse_perturb("every=10s,duration=2s,jitter=0.3"), 5)
    pause = PerturbSchedule(parse_perturb("kind=pause,every=10s,duration=2s,jitter=0.3"), 5)
    again = PerturbSchedule(parse_perturb("kind=pause,every=10s,duration=2s,jitter=0.3"), 5)
    assert pause.burst_starts_until(300) == again.burst_starts_until(300)
    assert pause.burst_starts_until(300)[:5] != lr.burst_starts_until(300)[:5]
    assert pause.latest_burst(0.0) == -1
    first = pause.burst_starts_until(0)[0]
    assert pause.latest_burst(first) == 0 and pause.latest_burst(first + 2.5) == 0


def test_step_bursts_by_count():
    schedule = PerturbSchedule(parse_perturb("every=10steps,duration=3steps,start=4steps"), 0)
    active = [step for step in range(1, 30) if schedule.active(step, 0.0)]
    assert active == [5, 6, 7, 15, 16, 17, 25, 26, 27]


def test_lr_schedule_warmup_then_decay():
    assert [lr_factor(s, 10, 2) for s in (1, 2)] == [0.5, 1.0]
    cosine = [lr_factor(s, 10, 2, "cosine") for s in range(2, 11)]
    linear = [lr_factor(s, 10, 2, "linear") for s in range(2, 11)]
    assert cosine == sorted(cosine, reverse=True) and linear == sorted(linear, reverse=True)
    assert cosine[-1] == pytest.approx(0.1) and linear[-1] == pytest.approx(0.1)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(1 - 0.9 * 0.5)
    with pytest.raises(ValueError):
        lr_factor(5, 10, 2, "step")


def test_byte_tokenizer_round_trip_with_eos():
    tok = ByteTokenizer()
    ids = tok.encode_documents([b"ab", "é\0".encode()])
    assert ids.tolist() == [97, 98, 256, 0xC3, 0xA9, 0, 256]
    assert tok.decode(ids.tolist()) == "abé\0"


def test_window_sampler_is_seeded_and_counts_epochs():
    tokens = np.arange(100)
    a, b = WindowSampler(100, 10, 4, seed=5), WindowSampler(100, 10, 4, seed=5)
    batches = [a.batch(tokens) for _ in range(5)]
    assert all(np.array_equal(x, b.batch(tokens)) for x in batches)
    first_epoch = np.concatenate(batches[:2])[:, 0]
    assert len(set(first_epoch.tolist())) == 8  # no window repeats within an epoch
    assert a.epoch == pytest.approx(2.0)
    with pytest.raises(UsageError, match="corpus too small"):
        WindowSampler(30, 10, 4, seed=0)


def test_corpus_defaults_to_the_stdlib_and_checks_paths(tmp_path):
    files = corpus_files(None)
    assert files == sorted(files) and any(f.name == "os.py" for f in files)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(b"\0\1\2")
    assert read_documents(corpus_files([str(tmp_path)]), 1 << 20) == [b"hello"]
    with pytest.raises(UsageError, match="not found"):
        corpus_files([str(tmp_path / "nope")])


def test_clip_and_measure_returns_the_pre_clip_norm():
    torch = pytest.importorskip("torch")
    from thermograd.trainer import clip_and_measure_grad_norm

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2)),
              torch.nn.Parameter(torch.zeros(1))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])  # params[2] has no gradient
    result = clip_and_measure_grad_norm(params, max_norm=1.0)
    assert isinstance(result.tensor, torch.Tensor) and result.item() == pytest.approx(5.0)
    assert result.clipped and not result.nonfinite
    clipped_norm = math.sqrt(sum(float((p.grad**2).sum()) for p in params if p.grad is not None))
    assert clipped_norm == pytest.approx(1.0, rel=1e-5)
    loss, norm = result.publish_with(torch.tensor(2.5))
    assert (loss, norm) == (2.5, pytest.approx(5.0))


@pytest.mark.parametrize("max_norm", [0, None, math.inf])
def test_measure_without_clipping_leaves_gradients_alone(max_norm):
    torch = pytest.importorskip("torch")
    from thermograd.trainer import clip_and_measure_grad_norm

    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([30.0, 40.0])
    result = clip_and_measure_grad_norm([param], max_norm)
    assert result.item() == pytest.approx(50.0) and not result.clipped
    assert param.grad.tolist() == [30.0, 40.0]
    param.grad = torch.tensor([math.nan, 1.0])
    assert clip_and_measure_grad_norm([param], 1.0).nonfinite


def test_plain_pytorch_loop_instrumented_in_two_lines(tmp_path):
    """docs/instrumentation.md's example: a user's own loop, TrainingMetrics + clip_and_measure_grad_norm."""
    torch = pytest.importorskip("torch")
    from test_trainer_helpers import read_jsonl, sample, scrape

    from thermograd.trainer import TrainingMetrics, clip_and_measure_grad_norm

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with TrainingMetrics(port=0, run_id="loop", rank=1, log_dir=tmp_path) as metrics:
        for step in range(1, 6):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            norm = clip_and_measure_grad_norm(model.parameters(), max_norm=0.5)
            loss_value, norm_value = norm.publish_with(loss)
            optimizer.step()
            optimizer.zero_grad()
            metrics.observe_step(step, loss_value, norm_value, 0.1, tokens=32, clipped=norm.clipped)
        samples = scrape(metrics.url)
    assert sample(samples, "train_steps_total", run_id="loop", rank="1") == 5
    records = read_jsonl(tmp_path / "steps.rank1.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert sample(samples, "train_grad_norm") == records[-1]["grad_norm"]
    assert sample(samples, "train_clipped_steps_total") == sum(r["grad_norm"] > 0.5 for r in records)
    assert (tmp_path / "grad_norm_log.rank1.json").exists()


@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "-1", "86401"])
def test_absurd_linger_is_a_usage_error(value):
    from thermograd.trainer.cli import parse_args

    with pytest.raises(UsageError, match="--linger must be a number of seconds in 0..86400"):
        parse_args(["--linger", value])
    assert parse_args(["--linger", "86400"]).linger_s == 86400


def test_total_grad_norm_without_get_total_norm(monkeypatch):
    """torch < 2.6 has no torch.nn.utils.get_total_norm: the clip_grad_norm_(inf) fallback gives the same."""
    torch = pytest.importorskip("torch")
    from thermograd.trainer.gradnorm import total_grad_norm

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2)),
              torch.nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0])
    assert float(total_grad_norm(params)) == pytest.approx(5.0)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    assert float(total_grad_norm(params)) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 0.0, 0.0] and params[1].grad.tolist() == [0.0, 4.0]


def test_a_long_run_keeps_a_bounded_burst_schedule():
    """A month of bursts every second must not grow a list of 2.6 M starts in the training process; burst
    indices stay counted from the run's first burst."""
    fresh = PerturbSchedule(parse_perturb("kind=pause,every=1s,duration=0.5s,jitter=0.3"), 3)
    reference = PerturbSchedule(parse_perturb("kind=pause,every=1s,duration=0.5s,jitter=0.3"), 3)
    reference.KEEP_STARTS = 10**9  # this one keeps every start
    full = list(reference.burst_starts_until(20_000))
    for t in np.arange(0.0, 20_000.0, 0.37):
        fresh.active(1, t)
    assert len(fresh.burst_starts_until(20_000)) <= PerturbSchedule.KEEP_STARTS + 1
    t = 19_999.0
    assert fresh.latest_burst(t) == bisect.bisect_right(full, t) - 1
    assert fresh.active(1, full[-2] + 0.1) and not fresh.active(1, full[-2] + 0.6)
