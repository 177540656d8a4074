"""Prometheus and Alertmanager configuration, checked by the real promtool and amtool.

`promtool check config`, `promtool check rules`, `promtool test rules` and `amtool check-config` run
here so that `make test` reports each failure as a test; the other tests check what the tools do
not: one scrape interval, documented and tested alerts, inhibition that refers to real alerts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_metric_names import promql_metric_names

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make system-deps` (apt packages prometheus, prometheus-alertmanager)")
    return path


def run_ok(*argv: str | Path) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{output}"
    return output


def load_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


ALERTS = [rule for rule in load_rules() if "alert" in rule]
RECORDS = [rule for rule in load_rules() if "record" in rule]


def test_promtool_check_config():
    run_ok(tool("promtool"), "check", "config", PROM_DIR / "prometheus.yml")


def test_the_native_config_is_prometheus_yml_on_loopback():
    """prometheus-local.yml (README: a native stack by hand) is generated from prometheus.yml, scrapes the
    exporter and a training job on their default loopback ports on the same 1 s clock, and promtool takes it."""
    from scripts import build_local

    assert build_local.OUT.read_text() == build_local.render(), "stale: run python -m scripts.build_local"
    config = yaml.safe_load(build_local.OUT.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["exporter"] == ["127.0.0.1:9842"] and targets["trainer"] == ["127.0.0.1:9843"]
    assert {job["scrape_interval"] for job in config["scrape_configs"] if job["job_name"] != "prometheus"} == {"1s"}
    run_ok(tool("promtool"), "check", "config", build_local.OUT)


def test_promtool_check_rules():
    assert RULE_FILES, "no rule files under prometheus/rules"
    run_ok(tool("promtool"), "check", "rules", *RULE_FILES)


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path):
    output = run_ok(tool("promtool"), "test", "rules", test_file)
    assert "SUCCESS" in output


def test_amtool_check_config():
    run_ok(tool("amtool"), "check-config", AM_CONFIG)


def test_exporter_and_trainer_share_one_scrape_interval():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    default = config["global"]["scrape_interval"]
    intervals = {job["job_name"]: job.get("scrape_interval", default) for job in config["scrape_configs"]}
    assert intervals["exporter"] == intervals["trainer"] == "1s"


def test_clusters_can_add_targets_through_the_file_sd_directory():
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job["job_name"] in ("exporter", "trainer"):
            patterns = [f for sd in job["file_sd_configs"] for f in sd["files"]]
            assert patterns and all(f.startswith("file_sd/") for f in patterns), job["job_name"]
    assert (PROM_DIR / "file_sd" / "README.md").is_file()


def test_recording_rule_names_follow_level_metric_operations():
    assert RECORDS
    for rule in RECORDS:
        assert re.fullmatch(r"[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_is_annotated_and_has_a_runbook_entry(rule: dict):
    annotations, labels = rule.get("annotations", {}), rule.get("labels", {})
    assert annotations.get("summary") and annotations.get("description")
    assert labels.get("severity") in {"warning", "critical"}
    assert labels.get("component") in {"exporter", "trainer"}
    anchor = annotations["runbook_url"].split("#", 1)[1]
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", ALERTS_DOC.read_text(), flags=re.M)}
    assert anchor == rule["alert"].lower() and anchor in headings, f"no '## {rule['alert']}' in docs/alerts.md"


def _rule_test_cases() -> tuple[dict[str, list[list]], dict[str, list[list]]]:
    """alertname -> [exp_alerts of each case]; recorded name -> [exp_samples of each case]."""
    alerts: dict[str, list[list]] = {}
    records: dict[str, list[list]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                alerts.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
            for case in test.get("promql_expr_test", []):
                name = re.match(r"[a-zA-Z_:][\w:]*", case["expr"]).group(0)
                records.setdefault(name, []).append(case.get("exp_samples") or [])
    return alerts, records


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_every_alert_has_a_firing_and_a_silent_promtool_case(rule: dict):
    cases = _rule_test_cases()[0].get(rule["alert"], [])
    assert any(cases), f"{rule['alert']}: no promtool case where it fires"
    assert not all(cases), f"{rule['alert']}: no promtool case where it stays silent"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_every_recording_rule_has_an_expected_value(rule: dict):
    cases = _rule_test_cases()[1].get(rule["record"], [])
    assert any(cases), f"{rule['record']}: no promtool case with an expected value"


def test_alertmanager_groups_by_alert_and_device_and_inhibits_on_target_down():
    config = yaml.safe_load(AM_CONFIG.read_text())
    # by alert and device; device labels are indices ("0" on every node), so the instance is part of the key
    assert config["route"]["group_by"] == ["alertname", "instance", "device"]
    assert config["receivers"][0]["webhook_configs"][0]["url"].startswith("http")
    by_name = {rule["alert"]: rule for rule in ALERTS}
    components = set()
    for inhibit in config["inhibit_rules"]:
        source = re.fullmatch(r'alertname="(\w+)"', inhibit["source_matchers"][0]).group(1)
        # a target-down alert: it reads `up` (ExporterTargetDown also names which GPU exporter it was)
        assert source in by_name and "up" in promql_metric_names(by_name[source]["expr"]), source
        component = re.fullmatch(r'component="(\w+)"', inhibit["target_matchers"][0]).group(1)
        assert by_name[source]["labels"]["component"] == component
        # the silenced alerts exist and carry the label the source alerts' instance is matched on
        assert any(r["labels"]["component"] == component and r["alert"] != source for r in ALERTS)
        assert inhibit["equal"] == ["instance"]
        components.add(component)
    assert components == {"exporter", "trainer"}


# ------------------------------------------------------------- TLS and basic auth (prometheus-tls.yml)
TLS_CONFIG = PROM_DIR / "prometheus-tls.yml"


def test_the_tls_config_is_generated_from_prometheus_yml():
    from scripts import build_tls_config

    assert TLS_CONFIG.read_text() == build_tls_config.render(), "stale: run python -m scripts.build_tls_config"


def test_promtool_accepts_the_tls_config_and_both_jobs_scrape_https_with_basic_auth(tmp_path: Path):
    config = yaml.safe_load(TLS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    secrets = set()
    for name in ("exporter", "trainer"):
        job = jobs[name]
        assert job["scheme"] == "https" and "insecure_skip_verify" not in job["tls_config"], name
        assert set(job["basic_auth"]) == {"username", "password_file"}, name  # never a password in the file
        assert job["scrape_interval"] == "1s", name  # the same clock as prometheus.yml
        secrets |= {*job["tls_config"].values(), job["basic_auth"]["password_file"]}
    assert jobs["exporter"]["tls_config"] == jobs["trainer"]["tls_config"]
    # promtool checks that the files named exist: give it stand-ins for the compose secrets
    text = TLS_CONFIG.read_text()
    for secret in secrets:
        stand_in = tmp_path / Path(secret).name
        stand_in.write_text("stand-in\n")
        text = text.replace(secret, str(stand_in))
    checked = PROM_DIR / f".check-{tmp_path.name}.yml"  # beside the rules and file_sd it names
    checked.write_text(text)
    try:
        run_ok(tool("promtool"), "check", "config", checked)
    finally:
        checked.unlink()
