"""--web.config.file: the exporter-toolkit's web config, read and refused (thermograd.endpoint.webconfig), basic auth
(thermograd.endpoint.auth), and both endpoints serving with it over real sockets: TLS, client certificates, 401s
and handshake failures counted, /healthz open, gzip, a rotated certificate picked up. Certificates are
made here (testkit/tls.py). The real Prometheus scraping both is tests/test_stack_tls.py."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import yaml

from testkit.faults import one_line_error, run_module, sample
from testkit.tls import Pki, basic_auth_header, bcrypt_hash, make_pki, write_web_config
from thermograd.endpoint import webconfig
from thermograd.endpoint.auth import BasicAuth, credentials
from thermograd.endpoint.bodycache import RenderCache
from thermograd.endpoint.server import BoundedHTTPServer, accepts_gzip, serve_in_thread
from thermograd.endpoint.webconfig import WebConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def tls_section(pki: Pki, **extra: object) -> dict:
    return {"cert_file": str(pki.path("server.pem")), "key_file": str(pki.path("server-key.pem")), **extra}


# ------------------------------------------------------------------------------------------- reading
def test_a_full_config_loads(pki: Pki, tmp_path: Path):
    path = write_web_config(tmp_path / "web.yml", pki, users={"prometheus": "pw"},
                            client_auth="RequireAndVerifyClientCert", client_allowed_sans=["prometheus"],
                            min_version="TLS13",
                            cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                           "TLS_AES_128_GCM_SHA256"])
    config = webconfig.load(path)
    assert config.scheme == "https" and set(config.users) == {"prometheus"}
    assert config.tls.verify_mode == ssl.CERT_REQUIRED and config.tls.allowed_sans == ("prometheus",)
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert set(config.watched) == {path, *map(pki.path, ("server.pem", "server-key.pem", "ca.pem"))}


RELATIVE = {"cert_file": "server.pem", "key_file": "server-key.pem"}  # beside the web config file


def test_relative_paths_inline_pem_and_basic_auth_alone(pki: Pki, tmp_path: Path):
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(pki.path(name), tmp_path / name)
    relative = write(tmp_path / "a.yml", {"tls_server_config": RELATIVE})
    assert webconfig.load(relative).tls is not None
    inline = write(tmp_path / "b.yml", {"tls_server_config": {"cert": pki.path("server.pem").read_text(),
                                                              "key": pki.path("server-key.pem").read_text()}})
    assert webconfig.load(inline).ssl_context is not None
    users_only = write(tmp_path / "c.yml", {"basic_auth_users": {"u": bcrypt_hash("p")},
                                            "http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    config = webconfig.load(users_only)
    assert config.scheme == "http" and config.headers == {"X-Frame-Options": "deny"}


BAD = {
    "unknown key": ({"tls_server_config": {"cert_file": "x", "keyfile": "y"}},
                    "unknown key tls_server_config.keyfile"),
    "plain password": ({"basic_auth_users": {"prometheus": "hunter2hunter2"}}, "not a bcrypt hash"),
    "missing key_file": ("tls_no_key", "key_file is required"),
    "missing cert file": ({"tls_server_config": {"cert_file": "/none/cert.pem", "key_file": "/none/k.pem"}},
                          "cannot read tls_server_config.cert_file /none/cert.pem"),
    "key is a folder": ("key_is_dir", "cannot read tls_server_config.key_file"),
    "key of another cert": ("wrong_key", "the certificate, key or client CA is unusable"),
    "empty": ({}, "neither tls_server_config nor basic_auth_users"),
    "not yaml": ("not_yaml", "not valid YAML at line"),
    "unverified client auth": ("client_auth_any", "accepts any certificate without verifying it"),
    "CA without client auth": ("ca_no_auth", "client_auth_type is NoClientCert"),
    "client auth without CA": ("auth_no_ca", "needs client_ca_file"),
    "curves": ("curves", "curve_preferences is not supported"),
    "rate limit": ({"rate_limit": {"interval": "1s", "burst": 2}, "basic_auth_users": {}},
                   "rate_limit is not supported"),
    "unknown cipher": ("cipher", "unknown or insecure suite 'TLS_RSA_WITH_RC4_128_SHA'"),
    "versions": ("versions", "min_version is above max_version"),
    "user with colon": ({"basic_auth_users": {"a:b": "$2b$04$" + "a" * 53}}, "without ':'"),
}


def bad_file(case: object, pki: Pki, tmp_path: Path) -> Path:
    path = tmp_path / "web.yml"
    if isinstance(case, dict):
        return write(path, case)
    tls = {
        "tls_no_key": {"cert_file": str(pki.path("server.pem"))},
        "key_is_dir": tls_section(pki, key_file=str(tmp_path)),
        "wrong_key": tls_section(pki, key_file=str(pki.path("client-key.pem"))),
        "client_auth_any": tls_section(pki, client_auth_type="RequireAnyClientCert"),
        "ca_no_auth": tls_section(pki, client_ca_file=str(pki.path("ca.pem"))),
        "auth_no_ca": tls_section(pki, client_auth_type="RequireAndVerifyClientCert"),
        "curves": tls_section(pki, curve_preferences=["X25519"]),
        "cipher": tls_section(pki, cipher_suites=["TLS_RSA_WITH_RC4_128_SHA"]),
        "versions": tls_section(pki, min_version="TLS13", max_version="TLS12"),
    }.get(case)
    if tls is None:  # not_yaml
        path.write_text("tls_server_config:\n  cert_file: [unclosed\n")
        return path
    return write(path, {"tls_server_config": tls})


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_file_is_one_error_naming_the_file_and_the_fix(case: str, pki: Pki, tmp_path: Path):
    content, message = BAD[case]
    path = bad_file(content, pki, tmp_path)
    with pytest.raises(WebConfigError) as raised:
        webconfig.load(path)
    text = str(raised.value)
    assert message in text and str(path) in text and "\n" not in text, text
    assert "hunter2" not in text  # a plain-text password is never echoed


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(pki: Pki, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.path("server-key.pem").read_bytes(), None)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    path = write(tmp_path / "web.yml", {"tls_server_config": tls_section(pki, key_file=str(encrypted))})
    with pytest.raises(WebConfigError, match="the private key is encrypted"):
        webconfig.load(path)


# -------------------------------------------------------------------------------------- basic auth, gzip
def test_basic_auth_checks_bcrypt_once_per_password_and_refuses_the_rest():
    auth = BasicAuth({"prometheus": bcrypt_hash("right")})
    checked = []
    verify = auth._verify
    auth._verify = lambda password, hashed: checked.append(password) or verify(password, hashed)
    right = basic_auth_header("prometheus", "right")
    assert auth.check(right) and auth.check(right)
    assert not auth.check(basic_auth_header("prometheus", "wrong"))
    assert not auth.check(basic_auth_header("nobody", "right"))
    assert not auth.check(basic_auth_header("prometheus", "x" * 100))  # over bcrypt's 72 bytes
    assert not auth.check(None) and not auth.check("Bearer abc") and not auth.check("Basic !!!")
    assert credentials(basic_auth_header("a", "b:c")) == ("a", "b:c")  # the password may hold ':'
    for _ in range(50):  # a scrape a second: bcrypt ran once for this password, the verdict is cached
        assert auth.check(right)
    assert checked.count(b"right") == 2  # the right user once, the unknown user (fixed hash) once


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True), ("br, gzip;q=0.5", True), ("GZIP", True), ("gzip;q=0", False), ("identity", False),
    (None, False),
])
def test_accepts_gzip(header: str | None, expected: bool):
    assert accepts_gzip(header) is expected


def test_the_render_cache_renders_once_per_version_however_many_ask():
    version = [0]
    renders = []

    def render() -> bytes:
        time.sleep(0.05)  # concurrent scrapes of a new version wait for this one render
        renders.append(version[0])
        return f"v{version[0]}\n".encode()

    cache = RenderCache(lambda: version[0], render)
    bodies = []
    workers = [threading.Thread(target=lambda: bodies.append(cache.get().plain)) for _ in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert renders == [0] and set(bodies) == {b"v0\n"}
    first = cache.get()
    assert first.gzipped() is first.gzipped()  # compressed once
    version[0] = 1
    assert cache.get().plain == b"v1\n" and cache.renders == 2


# ------------------------------------------------------------------------------ an endpoint, in process
class Endpoint:
    """A BoundedHTTPServer with the given web config, and clients for it."""

    def __init__(self, config: webconfig.WebConfig) -> None:
        body = RenderCache(lambda: 0, lambda: b"up 1\n" * 2000)
        routes = {"/metrics": lambda: (200, body.get(), "text/plain"),
                  "/healthz": lambda: (200, b"ok\n", "text/plain")}
        self.server = BoundedHTTPServer(("127.0.0.1", 0), routes, name="t", web=config)
        self.port = self.server.server_address[1]
        serve_in_thread(self.server)

    def get(self, path: str, context: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> tuple:
        """(status, headers, body), or the exception the client got."""
        conn = (http.client.HTTPSConnection("localhost", self.port, timeout=5, context=context) if context
                else http.client.HTTPConnection("127.0.0.1", self.port, timeout=5))
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except (OSError, http.client.HTTPException) as exc:
            return exc
        finally:
            conn.close()

    def count(self, reason: str, expected: int) -> int:
        """The server's count of `reason` once it reaches `expected` (it counts a failed handshake just
        after the client saw it fail), or what it is after 10 s."""
        deadline = time.monotonic() + 10
        while (count := self.server.stats.snapshot()[reason]) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint_for():
    made: list[Endpoint] = []

    def make(path: Path) -> Endpoint:
        made.append(Endpoint(webconfig.load(path)))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def test_client_certificates_and_basic_auth_are_required_healthz_is_open(pki: Pki, tmp_path: Path,
                                                                          endpoint_for):
    endpoint = endpoint_for(write_web_config(tmp_path / "web.yml", pki, users={"prometheus": "pw"},
                                             client_auth="RequireAndVerifyClientCert",
                                             client_allowed_sans=["prometheus"]))
    scraper, good = pki.client_context(), {"Authorization": basic_auth_header("prometheus", "pw")}
    status, headers, body = endpoint.get("/metrics", scraper, good)
    assert status == 200 and body.startswith(b"up 1")
    wrong = {"Authorization": basic_auth_header("prometheus", "nope")}
    assert endpoint.get("/metrics", scraper, wrong)[0] == 401
    status, headers, _ = endpoint.get("/metrics", scraper)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert endpoint.get("/healthz", scraper)[0] == 200  # no credentials needed
    assert endpoint.get("/nope", scraper)[0] == 401  # every other path needs them
    assert endpoint.count("unauthorized", 3) == 3
    for client in (pki.client_context(with_cert=False), pki.client_context(intruder=True), None):
        # no certificate, one of an unknown CA, plain HTTP
        assert isinstance(endpoint.get("/metrics", client, good), Exception)
    assert endpoint.count("tls_handshake", 3) == 3


def test_client_allowed_sans_refuses_a_certificate_of_another_name(pki: Pki, tmp_path: Path, endpoint_for):
    endpoint = endpoint_for(write_web_config(tmp_path / "web.yml", pki,
                                             client_auth="RequireAndVerifyClientCert",
                                             client_allowed_sans=["grafana"]))
    assert isinstance(endpoint.get("/metrics", pki.client_context()), Exception)
    assert endpoint.count("tls_handshake", 1) == 1


def test_gzip_for_who_asks_and_the_files_headers(pki: Pki, tmp_path: Path, endpoint_for):
    path = write_web_config(tmp_path / "web.yml", pki)
    config = yaml.safe_load(path.read_text())
    config["http_server_config"] = {"headers": {"X-Content-Type-Options": "nosniff"}}
    endpoint = endpoint_for(write(path, config))
    anonymous = pki.client_context(with_cert=False)
    status, headers, body = endpoint.get("/metrics", anonymous, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and len(body) < 1000
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = endpoint.get("/metrics", pki.client_context(with_cert=False))
    assert "Content-Encoding" not in headers and body == b"up 1\n" * 2000


def test_a_stalled_handshake_gives_up_its_slot_like_a_slow_head(pki: Pki, tmp_path: Path):
    endpoint = Endpoint(webconfig.load(write_web_config(tmp_path / "web.yml", pki)))
    endpoint.server._free_slots = 1  # one slot, so the stalled connection holds all there are
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port)):  # connects, never says hello
            time.sleep(1.5)
            status = endpoint.get("/healthz", pki.client_context(with_cert=False))[0]
        assert status == 200 and endpoint.count("evicted", 1) == 1
    finally:
        endpoint.close()


def test_a_rotated_certificate_is_served_and_a_broken_change_is_not(tmp_path: Path, endpoint_for):
    first, second = make_pki(tmp_path / "first"), make_pki(tmp_path / "second")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(first.path(name), live / name)
    path = write(live / "web.yml", {"tls_server_config": RELATIVE})
    endpoint = endpoint_for(path)
    assert endpoint.get("/healthz", first.client_context(with_cert=False))[0] == 200
    (live / "server.pem").write_text("not a certificate\n")  # a half-written renewal: the old one stays
    time.sleep(webconfig.RELOAD_CHECK_S + 0.2)
    assert endpoint.get("/healthz", first.client_context(with_cert=False))[0] == 200
    for name in ("server.pem", "server-key.pem"):  # the renewal, complete
        shutil.copy(second.path(name), live / name)
        os.utime(live / name, (time.time() + 5, time.time() + 5))
    time.sleep(webconfig.RELOAD_CHECK_S + 0.2)
    endpoint.get("/healthz", second.client_context(with_cert=False))  # the first one after the check reloads
    assert endpoint.get("/healthz", second.client_context(with_cert=False))[0] == 200
    assert isinstance(endpoint.get("/healthz", first.client_context(with_cert=False)), ssl.SSLError)


# -------------------------------------------------------------------------------- the programs' bad input
@pytest.mark.integration
@pytest.mark.parametrize("program", ["thermograd.exporter", "thermograd.trainer"])
@pytest.mark.parametrize("case", ["plain password", "missing cert file", "unknown key"])
def test_the_programs_refuse_a_bad_file_in_one_line_with_exit_2(program: str, case: str, pki: Pki,
                                                                 tmp_path: Path):
    path = bad_file(BAD[case][0], pki, tmp_path)
    extra = ["--backend", "sim", "--sim-load", "0"] if program == "thermograd.exporter" else ["--steps", "1"]
    result = run_module(program, *extra, "--port", "0", "--web.config.file", str(path))
    one_line_error(result, str(path), BAD[case][1])
    assert "hunter2" not in result.stderr


def test_training_metrics_refuses_a_bad_file_before_it_listens(pki: Pki, tmp_path: Path):
    from thermograd.trainer.metrics import RankEndpoint, TrainingMetrics

    path = bad_file(BAD["plain password"][0], pki, tmp_path)
    with pytest.raises(WebConfigError, match="not a bcrypt hash"):
        TrainingMetrics(port=0, run_id="x", web_config=path)
    with pytest.raises(WebConfigError):
        RankEndpoint(port=0, web_config=path).open(local_rank=0, rank=0, world_size=1, max_grad_norm=None)


def test_training_metrics_serves_tls_with_basic_auth(pki: Pki, tmp_path: Path):
    from thermograd.trainer.metrics import TrainingMetrics

    path = write_web_config(tmp_path / "web.yml", pki, users={"prometheus": "pw"})
    with TrainingMetrics(port=0, run_id="tls-run", web_config=path) as metrics:
        metrics.observe_step(1, 2.0, 0.5, 1e-3, tokens=8)
        assert metrics.url.startswith("https://")
        endpoint = Endpoint.__new__(Endpoint)
        endpoint.port = metrics.port
        status, _, body = endpoint.get("/metrics", pki.client_context(with_cert=False),
                                       {"Authorization": basic_auth_header("prometheus", "pw")})
        assert status == 200 and sample(body, "train_steps_total", run_id="tls-run") == 1
        assert endpoint.get("/metrics", pki.client_context(with_cert=False))[0] == 401
        status, _, body = endpoint.get("/metrics", pki.client_context(with_cert=False),
                                       {"Authorization": basic_auth_header("prometheus", "pw")})
        assert sample(body, "train_http_errors_total", reason="unauthorized") == 1


@pytest.mark.slow
def test_both_callbacks_read_the_file_when_made(pki: Pki, tmp_path: Path):
    from thermograd.trainer.huggingface import PrometheusCallback
    from thermograd.trainer.lightning import PrometheusLightningCallback

    path = bad_file(BAD["unknown key"][0], pki, tmp_path)
    for callback in (PrometheusCallback, PrometheusLightningCallback):
        with pytest.raises(WebConfigError, match="unknown key"):
            callback(web_config=path)
    good = write_web_config(tmp_path / "good.yml", pki)
    assert PrometheusLightningCallback(web_config=good)._endpoint.web_config.scheme == "https"


def test_the_docs_example_is_a_valid_file(pki: Pki, tmp_path: Path):
    """docs/web-config.md's example, with its files made here."""
    text = (ROOT / "docs" / "web-config.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        shutil.copy(pki.path(name), tmp_path / name)
    path = tmp_path / "web-config.yml"
    path.write_text(example)
    config = webconfig.load(path)
    assert config.tls.verify_mode == ssl.CERT_REQUIRED and "prometheus" in config.users
