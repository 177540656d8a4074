"""The stack, natively, with real processes: Prometheus scrapes the real exporter (sim backend) and the real
trainer (tiny model, 40 steps) on one 1 s clock; rules evaluate, an alert travels through the real
Alertmanager to a webhook receiver run here, and the analysis reads it all back. (Every dashboard query is
run live, for every hardware source, in tests/test_stack_dashboards.py.)

One module-scoped stack serves every test (about a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_metric_names import DOCUMENTED

from testkit import stack as sl

ROOT = Path(__file__).resolve().parents[1]


pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_ID = "itest-run"
SIM_UUID = "sim-0"
STEPS = 40


@dataclass
class LiveStack:
    prom: sl.PrometheusAPI
    prom_url: str
    supervisor: sl.Supervisor
    trainer: sl.Child
    webhook: sl.WebhookReceiver
    ports: dict[str, int]
    start_s: float
    tmp: Path
    up_during_run: dict[str, bool] = field(default_factory=dict)
    exposition: dict[str, str] = field(default_factory=dict)

    def window(self) -> tuple[float, float]:
        return sl.query_window(self.start_s)


def fast_alert_rules(out_dir: Path) -> Path:
    """The real alert rules with every `for:` shortened to 2 s, so the alert path is testable in seconds."""
    rules = yaml.safe_load((sl.RULES_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = out_dir / "alerts-fast.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def require_binary(kind: str) -> str:
    path = sl.find_binary(kind)
    if path is None:
        pytest.fail(f"{kind} not found; install with: {sl.install_hint([kind])}")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("stack")
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "exporter", "trainer")}
    loopback = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    logs = tmp / "logs"
    with sl.WebhookReceiver() as webhook, sl.Supervisor() as supervisor:
        am_config = sl.render_alertmanager_config(tmp / "alertmanager", webhook.url, fast=True)
        supervisor.start("alertmanager", sl.alertmanager_argv(require_binary("alertmanager"), am_config,
                                                              tmp / "am-data", ports["alertmanager"]),
                         logs / "alertmanager.log")
        prom_config = sl.render_prometheus_config(
            tmp / "prometheus", {"exporter": loopback["exporter"], "trainer": loopback["trainer"]},
            loopback["alertmanager"], self_address=loopback["prometheus"], interval="1s", evaluation_interval="1s",
            rule_files=[sl.RULES_DIR / "recording.yml", sl.RULES_DIR / "sources.yml", fast_alert_rules(tmp)])
        supervisor.start("prometheus", sl.prometheus_argv(require_binary("prometheus"), prom_config,
                                                          tmp / "tsdb", ports["prometheus"]), logs / "prometheus.log")
        supervisor.start("exporter", sl.sim_exporter_argv(ports["exporter"]), logs / "exporter.log")
        prom_url = f"http://{loopback['prometheus']}"
        sl.wait_http_ok(f"{prom_url}/-/ready", 60, supervisor=supervisor)
        sl.wait_http_ok(f"http://{loopback['alertmanager']}/-/ready", 60, supervisor=supervisor)
        sl.wait_http_ok(f"http://{loopback['exporter']}/metrics", 60, supervisor=supervisor)
        prom = sl.PrometheusAPI(prom_url)
        sl.wait_until(lambda: prom.query(f'rle_efficiency{{uuid="{SIM_UUID}"}}'), 60,
                      "the exporter's first RLE sample in Prometheus", supervisor=supervisor)
        start_s = time.time()
        trainer = supervisor.start("trainer", sl.tiny_trainer_argv(ports["trainer"], tmp / "trainer", RUN_ID, STEPS,
                                                                   gpu_uuid=SIM_UUID, linger_s=8),
                                   logs / "trainer.log")
        live = LiveStack(prom, prom_url, supervisor, trainer, webhook, ports, start_s, tmp)
        # Until Prometheus has scraped the last step, while the trainer lingers: both targets must be up.
        sl.wait_until(lambda: live.prom.scalar(f'max(train_steps_total{{run_id="{RUN_ID}"}})') == STEPS, 240,
                      f"Prometheus to scrape step {STEPS}", supervisor=supervisor)
        live.up_during_run = live.prom.targets_up()
        for name in ("exporter", "trainer"):
            live.exposition[name] = sl.http_get(f"http://{loopback[name]}/metrics")[1].decode()
        yield live


@pytest.fixture(scope="module")
def trainer_down_alert(stack: LiveStack) -> dict:
    """Stop the trainer (it exits after its linger) and wait for TrainerTargetDown at the webhook."""
    assert stack.trainer.wait(60) == 0, f"trainer did not exit cleanly:\n{stack.trainer.tail()}"
    instance = f"127.0.0.1:{stack.ports['trainer']}"

    def delivered() -> dict | None:
        return next((a for a in stack.webhook.alerts() if a["labels"].get("alertname") == "TrainerTargetDown"
                     and a["labels"].get("instance") == instance and a["status"] == "firing"), None)

    return sl.wait_until(delivered, 90, "TrainerTargetDown at the webhook", supervisor=stack.supervisor,
                         finished=[stack.trainer])


def test_both_targets_up_while_training(stack: LiveStack):
    assert stack.up_during_run["exporter"] is True and stack.up_during_run["trainer"] is True


def test_every_exposed_metric_is_documented(stack: LiveStack):
    for name, text in stack.exposition.items():
        samples = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples, f"{name} exposed nothing"
        assert sorted(samples - DOCUMENTED) == [], f"{name} exposes names missing from docs/metrics.md"


def test_grad_norm_and_rle_come_back_on_identical_timestamps(stack: LiveStack):
    def one_query_range() -> tuple[float, dict[str, list[float]]] | None:
        start, end = stack.window()
        result = stack.prom.series_range(
            f'train_grad_norm{{run_id="{RUN_ID}"}} or rle_efficiency{{uuid="{SIM_UUID}"}}', start, end, 1)
        by_name = {r["metric"]["__name__"]: [float(t) for t, _ in r["values"]] for r in result}
        # 40 tiny steps can take under two seconds: the lingering trainer keeps its last values up,
        # so wait for a few scrapes of them rather than rely on a slow machine.
        return (start, by_name) if len(by_name.get("train_grad_norm", [])) >= 3 else None

    start, by_name = sl.wait_until(one_query_range, 30, "three scrapes of train_grad_norm",
                                   supervisor=stack.supervisor, finished=[stack.trainer])
    grad, rle = by_name["train_grad_norm"], by_name["rle_efficiency"]
    assert set(grad) <= set(rle), "trainer timestamps are not on the exporter's grid"
    assert all((t - start) % 1 == 0 for t in grad + rle)


# The throttle-cost rules need a 10 s window of the run that is known unthrottled, has steps and no pause:
# a ~1 min live run on a quiet machine sometimes has none (1 of 2 fresh-clone runs). Their values are
# checked by promtool (prometheus/tests/recording_test.yml, firing and silent cases); here (and in the live
# dashboard test, tests/test_stack_dashboards.py) they may be absent.
NEEDS_UNTHROTTLED_WINDOW = ("rank:train_tokens:rate10s_unthrottled", "rank:train_tokens:rate10s_unthrottled_avg10m",
                           "rank:train_tokens_lost_to_throttling:rate10s")


def test_every_recording_rule_evaluates(stack: LiveStack):
    start, end = stack.window()
    records = [r["record"] for g in yaml.safe_load((sl.RULES_DIR / "recording.yml").read_text())["groups"]
               for r in g["rules"]]
    peaks = {}
    for record in records:
        result = stack.prom.series_range(f'{{__name__="{record}"}}', start, end, 1)
        if not result and record in NEEDS_UNTHROTTLED_WINDOW:
            continue
        assert result, f"{record} never evaluated to a sample"
        peaks[record] = max(float(v) for series in result for _, v in series["values"])
    assert peaks["rank:train_steps:rate1m"] > 0
    # on failure, say which input of the ratio was missing (a CI run once saw it 0 while the steps rate was not)
    inputs = {name: [max((float(v) for _, v in series["values"]), default=None)
                     for series in stack.prom.series_range(f'{{__name__="{name}"}}', start, end, 1)]
              for name in ("train_tokens_total", "rank:train_tokens:rate1m", "rank:train_tokens_on_gpu:rate1m",
                           "device:gpu_energy_joules:rate1m", "train_run_info")}
    assert peaks["rank:train_tokens_per_joule:ratio_rate1m"] > 0, f"peaks of its inputs: {inputs}"
    assert peaks["instance:rle_exporter_samples:rate1m"] > 0


def test_target_down_alert_reaches_the_webhook_through_alertmanager(stack: LiveStack, trainer_down_alert: dict):
    labels = trainer_down_alert["labels"]
    assert labels["job"] == "trainer" and labels["component"] == "trainer" and labels["severity"] == "warning"
    assert trainer_down_alert["annotations"]["runbook_url"].endswith("#trainertargetdown")
    payload = next(p for p in stack.webhook.payloads if trainer_down_alert in p["alerts"])
    # grouped by alertname, instance and device (the trainer's alert has no device label)
    assert payload["receiver"] == "thermograd-webhook"
    assert payload["groupLabels"] == {"alertname": "TrainerTargetDown", "instance": labels["instance"]}


def test_target_down_inhibits_that_targets_alerts_in_alertmanager(stack: LiveStack, trainer_down_alert: dict):
    """A trainer alert of the down instance is suppressed by the inhibition rule; the same alert of
    another instance is not."""
    am_url = f"http://127.0.0.1:{stack.ports['alertmanager']}"
    down = trainer_down_alert["labels"]["instance"]
    alerts = [{"labels": {"alertname": "TrainStalled", "component": "trainer", "job": "trainer",
                          "severity": "warning", "instance": instance}} for instance in (down, "127.0.0.1:1")]
    request = urllib.request.Request(f"{am_url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def states() -> dict[str, str] | None:
        listed = json.loads(sl.http_get(f"{am_url}/api/v2/alerts?filter=alertname%3D%22TrainStalled%22")[1])
        found = {a["labels"]["instance"]: a["status"]["state"] for a in listed}
        return found if len(found) == 2 else None

    assert sl.wait_until(states, 30, "the posted alerts in Alertmanager") == {down: "suppressed",
                                                                             "127.0.0.1:1": "active"}


def test_analysis_reads_the_live_prometheus(stack: LiveStack):
    out = stack.tmp / "analysis"
    result = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--prometheus", stack.prom_url,
                             "--run", RUN_ID, "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["summary"] and isinstance(report["verdict"]["coupled"], bool)
    assert {p["x"] for p in report["pairs"]} | {p["y"] for p in report["pairs"]} >= {"grad_norm", "rle"}
    for figure in ("coupling.png", "crosscorr.png"):
        assert (out / figure).stat().st_size > 10_000, figure
