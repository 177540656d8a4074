"""A real Prometheus scrapes both endpoints over TLS with basic auth and client certificates.

The exporter (`--backend sim`) and the reference trainer (tiny model, CPU) run with one `--web.config.file`:
TLS, `RequireAndVerifyClientCert` against the test's CA, `client_allowed_sans: [prometheus]`, and a bcrypt-
hashed scrape password. Prometheus scrapes them with the settings of the committed
prometheus/prometheus-tls.yml (its files swapped for the test's), and, as intruders, once with a wrong
password and once with a client certificate from an unknown CA. The real jobs are up, the intruders are
down, and each refusal is in the endpoints' own counters — read back through that same Prometheus.
Certificates are made here (testkit/tls.py). One module-scoped stack (~30 s on a loaded 2-core machine).
"""

from __future__ import annotations

import copy
import http.client
import signal
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from test_stack_integration import require_binary

from testkit import stack as sl
from testkit.tls import Pki, basic_auth_header, make_pki, write_web_config

ROOT = Path(__file__).resolve().parents[1]


pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "scrape-password-for-the-test"
RUN_ID = "tls-run"
SCRAPES = 5  # successful scrapes of each real job before the checks


def scrape_settings(pki: Pki, tmp: Path) -> dict:
    """prometheus-tls.yml's scheme / tls_config / basic_auth of the exporter job, its /run/secrets files
    replaced by the test's: the same shape, so the committed settings are the ones exercised here."""
    shipped = yaml.safe_load((ROOT / "prometheus" / "prometheus-tls.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "exporter"]
    password = tmp / "scrape-password"
    password.write_text(PASSWORD)
    files = {"ca.pem": pki.path("ca.pem"), "scraper.pem": pki.path("client.pem"),
             "scraper-key.pem": pki.path("client-key.pem"), "scrape-password": password}
    settings = {key: copy.deepcopy(job[key]) for key in ("scheme", "tls_config", "basic_auth")}
    for section in (settings["tls_config"], settings["basic_auth"]):
        for key, value in section.items():
            if str(value).startswith("/run/secrets/"):
                section[key] = str(files[Path(value).name])
    return settings


def prometheus_config(tmp: Path, ports: dict[str, int], settings: dict, pki: Pki) -> Path:
    targets = {job: f"127.0.0.1:{ports[job]}" for job in ("exporter", "trainer")}
    path = sl.render_prometheus_config(tmp / "prometheus", targets, None, interval="1s", rule_files=[])
    config = yaml.safe_load(path.read_text())
    intruders = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        job.update(copy.deepcopy(settings))
        wrong_password = copy.deepcopy(job)
        wrong_password["job_name"] = f"{job['job_name']}-wrong-password"
        wrong_password["basic_auth"] = {"username": "prometheus", "password": "guessed"}
        unknown_client = copy.deepcopy(job)
        unknown_client["job_name"] = f"{job['job_name']}-unknown-client"
        unknown_client["tls_config"].update(cert_file=str(pki.path("intruder.pem")),
                                            key_file=str(pki.path("intruder-key.pem")))
        intruders += [wrong_password, unknown_client]
    config["scrape_configs"] += intruders
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(tmp / "pki")
    web = write_web_config(tmp / "web-config.yml", pki, users={"prometheus": PASSWORD},
                           client_auth="RequireAndVerifyClientCert", client_allowed_sans=["prometheus"])
    ports = {name: free_port() for name in ("prometheus", "exporter", "trainer")}
    logs = tmp / "logs"
    with sl.Supervisor() as supervisor:
        supervisor.start("exporter", [*sl.sim_exporter_argv(ports["exporter"], devices=2),
                                      "--web.config.file", str(web)], logs / "exporter.log")
        trainer = supervisor.start("trainer", sl.tiny_trainer_argv(
            ports["trainer"], tmp / "trainer", RUN_ID, 100_000, linger_s=2,
            extra=["--web.config.file", str(web)]), logs / "trainer.log")
        config = prometheus_config(tmp, ports, scrape_settings(pki, tmp), pki)
        supervisor.start("prometheus", sl.prometheus_argv(require_binary("prometheus"), config, tmp / "tsdb",
                                                          ports["prometheus"]), logs / "prometheus.log")
        prom_url = f"http://127.0.0.1:{ports['prometheus']}"
        sl.wait_http_ok(f"{prom_url}/-/ready", 60, supervisor=supervisor)
        prom = sl.PrometheusAPI(prom_url)
        sl.wait_until(lambda: all((prom.scalar(f'sum_over_time(up{{job="{job}"}}[5m])') or 0) >= SCRAPES
                                  for job in ("exporter", "trainer")),
                      180, f"{SCRAPES} successful TLS scrapes of each endpoint", supervisor=supervisor)
        yield prom, ports, pki
        trainer.signal(signal.SIGTERM)
        assert trainer.wait(60) == 0, trainer.tail()
        for child in supervisor.children:
            assert "Traceback" not in child.tail(200), child.name


def test_prometheus_scrapes_both_endpoints_over_tls_with_basic_auth_and_a_client_certificate(stack):
    prom, _, _ = stack
    assert prom.scalar('min_over_time(up{job="exporter"}[1m])') == 1
    assert prom.scalar('min_over_time(up{job="trainer"}[1m])') == 1
    assert {s["metric"]["uuid"] for s in prom.query('rle_device_info{job="exporter"}')} == {"sim-0", "sim-1"}
    steps = f'max(train_steps_total{{job="trainer", run_id="{RUN_ID}"}})'
    sl.wait_until(lambda: (prom.scalar(steps) or 0) >= 1, 180, "a training step scraped over TLS")


@pytest.mark.parametrize("endpoint", ["exporter", "trainer"])
def test_a_wrong_password_and_an_unknown_client_are_refused_and_counted(stack, endpoint: str):
    prom, _, _ = stack
    for intruder in ("wrong-password", "unknown-client"):
        job = f"{endpoint}-{intruder}"
        assert prom.scalar(f'max_over_time(up{{job="{job}"}}[1m])') == 0, job
    counter = "rle_exporter_http_errors_total" if endpoint == "exporter" else "train_http_errors_total"
    for reason in ("unauthorized", "tls_handshake"):  # 401 to the wrong password, the unknown CA's handshake
        count = f'max({counter}{{job="{endpoint}", reason="{reason}"}})'
        sl.wait_until(lambda expr=count: (prom.scalar(expr) or 0) >= 2, 30,
                      f"{counter}{{reason={reason!r}}} counting the intruder's scrapes")


@pytest.mark.parametrize("endpoint", ["exporter", "trainer"])
def test_healthz_answers_a_probe_without_credentials_metrics_does_not(stack, endpoint: str):
    _, ports, pki = stack
    probe = pki.client_context()  # the client certificate this web config requires, but no password

    def get(path: str, headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", ports[endpoint], timeout=5, context=probe)
        try:
            conn.request("GET", path, headers=headers or {})
            return conn.getresponse().status
        finally:
            conn.close()

    assert get("/healthz") == 200
    assert get("/metrics") == 401
    assert get("/metrics", {"Authorization": basic_auth_header("prometheus", PASSWORD)}) == 200
