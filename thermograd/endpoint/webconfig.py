"""`--web.config.file`: the Prometheus exporter-toolkit's web configuration file (TLS, client certificates,
basic auth), read and checked once at start, then followed for changes while serving.

The format is the toolkit's (node_exporter, nvidia_gpu_exporter and most exporters take the same file;
docs/web-config.md). Every mistake is a `WebConfigError` (a ValueError: the CLIs print it on one line and
exit 2) raised before anything listens: an unknown key, a file that cannot be read, a certificate and key
that do not belong together, a plain-text password where a bcrypt hash belongs. A key this server cannot
honour (`curve_preferences`, `rate_limit`, a client_auth_type that verifies nothing) is refused too, never
ignored: a security setting that silently does nothing is worse than an error.

While serving, `WebConfigSource` re-reads the file and the files it names when one of them changes (so a
rotated certificate, e.g. cert-manager renewing a Kubernetes Secret, is served without a restart, like the
toolkit does). A change that does not load, or that would turn TLS on or off, is logged and the
configuration in force is kept: the server never falls back to less than it was started with.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Go's crypto/tls.CipherSuites() names (TLS <= 1.2) -> OpenSSL's. TLS 1.3 suites cannot be chosen, in Go or
# here: naming one is accepted and has no effect, as in the toolkit.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    # Go's older spellings of the two above
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# client_auth_type -> what the TLS layer does with a client's certificate. The toolkit's two other values
# accept any certificate without checking who signed it: no authentication at all, so they are refused.
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
# The response headers http_server_config.headers may set (the toolkit's list; others are refused there too).
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection",
           "Strict-Transport-Security")
TLS_KEYS = {"cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file", "client_auth_type",
            "client_allowed_sans", "min_version", "max_version", "cipher_suites",
            "prefer_server_cipher_suites", "curve_preferences"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
# $2a$/$2b$/$2y$ (htpasswd writes 2y, Python's bcrypt 2b), a two-digit cost, 22 characters of salt + 31
# of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
HASH_HINT = ("hash it with `htpasswd -nBC 10 \"\" | tr -d ':\\n'` or `python -c \"import bcrypt, getpass; "
             "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())\"`")
RELOAD_CHECK_S = 1.0  # how often a running server looks at the files' modification times


class WebConfigError(ValueError):
    """The web configuration file is unusable; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class TlsSettings:
    """What tls_server_config asks for, with the certificate material already read."""

    cert_pem: bytes
    key_pem: bytes
    cert_file: Path | None = None  # where they were read from (None: inline in the web config)
    key_file: Path | None = None
    client_ca_pem: bytes | None = None
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None
    prefer_server_ciphers: bool = True


@dataclass(frozen=True)
class WebConfig:
    """A loaded, checked web configuration; `ssl_context` is built once from `tls` (None: plain HTTP)."""

    path: Path | None
    tls: TlsSettings | None = None
    users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    watched: tuple[Path, ...] = ()  # the file and the files it names: a change to any one reloads it

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


# ------------------------------------------------------------------------------------------------ reading
class _Reader:
    """Checks one file's mapping; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[Path] = [path]

    def fail(self, message: str) -> WebConfigError:
        return WebConfigError(f"web config {self.path}: {message}")

    def mapping(self, value: object, where: str, allowed: set[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be a mapping, got {type(value).__name__}")
        if allowed is not None and (unknown := sorted(set(map(str, value)) - allowed)):
            key = f"{where}.{unknown[0]}" if where else unknown[0]
            raise self.fail(f"unknown key {key} (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, section: dict, key: str, where: str) -> str | None:
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{where}.{key} must be a string, got {type(value).__name__}")
        return value or None

    def strings(self, section: dict, key: str, where: str) -> list[str]:
        value = section.get(key) or []
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self.fail(f"{where}.{key} must be a list of strings")
        return value

    def pem(self, section: dict, inline: str, filename: str, where: str,
            required: bool) -> tuple[bytes | None, Path | None]:
        """The PEM text of `inline`, or of the file `filename` names (relative: to the config's folder)
        and that file's path."""
        text, name = self.string(section, inline, where), self.string(section, filename, where)
        if text and name:
            raise self.fail(f"{where}: give {inline} or {filename}, not both")
        if text:
            return text.encode(), None
        if not name:
            if required:
                raise self.fail(f"{where}.{filename} is required (the PEM file of the server's "
                                f"{'certificate' if inline == 'cert' else 'private key'})")
            return None, None
        path = self.path.parent / os.path.expanduser(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self.fail(f"cannot read {where}.{filename} {path}: {exc.strerror or exc}") from None
        self.files.append(path)
        return data, path


def _check_users(reader: _Reader, raw: object) -> dict[str, str]:
    users = reader.mapping(raw, "basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise reader.fail(f"basic_auth_users: user name {user!r} must be a non-empty string without ':'")
        # Never echo the value: it may be the plain-text password this check exists to catch.
        if not (isinstance(hashed, str) and BCRYPT_HASH.fullmatch(hashed)):
            raise reader.fail(f"basic_auth_users.{user} is not a bcrypt hash ($2y$10$ and 53 more "
                              f"characters); plain-text passwords are refused: {HASH_HINT}")
    return dict(users)


def _check_tls(reader: _Reader, raw: object) -> TlsSettings:
    where = "tls_server_config"
    tls = reader.mapping(raw, where, TLS_KEYS)
    if tls.get("curve_preferences"):
        raise reader.fail(f"{where}.curve_preferences is not supported (Python's TLS offers X25519, P-256, "
                          "P-384 and P-521 and cannot be restricted); remove it")
    auth_name = reader.string(tls, "client_auth_type", where) or "NoClientCert"
    if auth_name in UNVERIFIED_CLIENT_AUTH:
        raise reader.fail(f"{where}.client_auth_type {auth_name} accepts any certificate without verifying "
                          "it (no authentication); use RequireAndVerifyClientCert with client_ca_file")
    if auth_name not in CLIENT_AUTH:
        raise reader.fail(f"{where}.client_auth_type {auth_name!r} is not one of {', '.join(CLIENT_AUTH)}")
    verify_mode = CLIENT_AUTH[auth_name]
    client_ca, _ = reader.pem(tls, "client_ca", "client_ca_file", where, required=False)
    if client_ca and verify_mode == ssl.CERT_NONE:
        raise reader.fail(f"{where}: client_ca_file is given but client_auth_type is NoClientCert (set "
                          "client_auth_type: RequireAndVerifyClientCert to check client certificates)")
    if verify_mode != ssl.CERT_NONE and not client_ca:
        raise reader.fail(f"{where}.client_auth_type {auth_name} needs client_ca_file: the CA certificate "
                          "that signed the scrapers' client certificates")
    sans = tuple(reader.strings(tls, "client_allowed_sans", where))
    if sans and verify_mode != ssl.CERT_REQUIRED:
        raise reader.fail(f"{where}.client_allowed_sans needs client_auth_type: RequireAndVerifyClientCert "
                          "(otherwise a client may send no certificate, hence no name to match)")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = reader.string(tls, key, where) or default
        if name not in TLS_VERSIONS:
            raise reader.fail(f"{where}.{key} {name!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise reader.fail(f"{where}: min_version is above max_version")
    unknown = [s for s in reader.strings(tls, "cipher_suites", where) if s not in CIPHER_SUITES]
    if unknown:
        raise reader.fail(f"{where}.cipher_suites: unknown or insecure suite {unknown[0]!r} (Go's "
                          "crypto/tls.CipherSuites() names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
    ciphers = [CIPHER_SUITES[s] for s in reader.strings(tls, "cipher_suites", where) if CIPHER_SUITES[s]]
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise reader.fail(f"{where}.prefer_server_cipher_suites must be true or false")
    cert_pem, cert_file = reader.pem(tls, "cert", "cert_file", where, required=True)
    key_pem, key_file = reader.pem(tls, "key", "key_file", where, required=True)
    return TlsSettings(
        cert_pem=cert_pem, key_pem=key_pem, cert_file=cert_file, key_file=key_file, client_ca_pem=client_ca,
        verify_mode=verify_mode, allowed_sans=sans,
        min_version=versions["min_version"], max_version=versions["max_version"],
        ciphers=":".join(ciphers) or None, prefer_server_ciphers=prefer)


def _check_http(reader: _Reader, raw: object) -> dict[str, str]:
    http = reader.mapping(raw, "http_server_config", {"http2", "headers"})
    if not isinstance(http.get("http2", True), bool):
        raise reader.fail("http_server_config.http2 must be true or false")  # served as HTTP/1.1 either way
    headers = reader.mapping(http.get("headers"), "http_server_config.headers", set(HEADERS))
    for name, value in headers.items():
        if not isinstance(value, str):
            raise reader.fail(f"http_server_config.headers.{name} must be a string")
    return {name: value for name, value in headers.items() if value}


def _no_passphrase() -> str:
    raise WebConfigError("the private key is encrypted: give an unencrypted key (the server cannot ask for a "
                         "passphrase); e.g. openssl pkey -in KEY -out KEY.plain")


def _load_chain(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    """Python loads a certificate chain from files only: inline PEM text goes through a private temporary
    folder, removed at once; files are loaded where they are."""
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
        return
    with tempfile.TemporaryDirectory(prefix="thermograd-tls-") as scratch:  # mode 0700
        cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        cert.write_bytes(tls.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(tls.key_pem)
        ctx.load_cert_chain(cert, key, password=_no_passphrase)


def ssl_context(tls: TlsSettings, where: str) -> ssl.SSLContext:
    """The server's TLS context."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = tls.min_version, tls.max_version
    if tls.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        if tls.ciphers:
            ctx.set_ciphers(tls.ciphers)
        _load_chain(ctx, tls)
        if tls.client_ca_pem:
            ctx.verify_mode = tls.verify_mode
            ctx.load_verify_locations(cadata=tls.client_ca_pem.decode("ascii", "replace"))
    except WebConfigError as exc:
        raise WebConfigError(f"{where}: {exc}") from None
    except ssl.SSLError as exc:
        raise WebConfigError(f"{where}: the certificate, key or client CA is unusable: {_ssl_reason(exc)} "
                             "(PEM files; the key must be the certificate's)") from None
    except OSError as exc:  # a file replaced since it was read, or no writable temporary folder (inline PEM)
        raise WebConfigError(f"{where}: cannot load the certificate and key: {exc.strerror or exc}") from None
    return ctx


def _ssl_reason(exc: ssl.SSLError) -> str:
    return (exc.reason or str(exc)).lower().replace("_", " ")


def load(path: str | os.PathLike[str]) -> WebConfig:
    """Reads and checks the file; raises WebConfigError naming the file and what to fix."""
    import yaml  # only a server with a web config pays for it

    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise WebConfigError(f"cannot read web config {path}: {why}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise reader.fail(f"not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    config = reader.mapping(raw, "", TOP_KEYS)
    if config.get("rate_limit") is not None:
        raise reader.fail("rate_limit is not supported (the server caps concurrent connections at 64 "
                          "instead); remove it")
    users = _check_users(reader, config.get("basic_auth_users"))
    headers = _check_http(reader, config.get("http_server_config"))
    tls = _check_tls(reader, config["tls_server_config"]) if config.get("tls_server_config") else None
    if tls is None and not users:
        raise reader.fail("sets neither tls_server_config nor basic_auth_users: it would protect nothing "
                          "(leave --web.config.file out to serve plain HTTP on purpose)")
    context = ssl_context(tls, f"web config {path}") if tls is not None else None
    return WebConfig(path=path, tls=tls, users=users, headers=headers, ssl_context=context,
                     watched=tuple(reader.files))


def resolve(web_config: str | os.PathLike[str] | WebConfig | None) -> WebConfig | None:
    """What the libraries accept as `web_config=`: a path, a loaded WebConfig, or None (plain HTTP)."""
    if web_config is None or isinstance(web_config, WebConfig):
        return web_config
    return load(web_config)


# ------------------------------------------------------------------------------------------- while serving
def _mtimes(paths: tuple[Path, ...]) -> tuple[float | None, ...]:
    def mtime(path: Path) -> float | None:
        try:
            return path.stat().st_mtime
        except OSError:
            return None

    return tuple(mtime(p) for p in paths)


class WebConfigSource:
    """The configuration in force: `current()` returns it, having reloaded the file (at most every
    RELOAD_CHECK_S) when it or a file it names changed. Kubernetes replaces a mounted Secret's files
    through a symlink swap, which changes what the path resolves to: stat() follows it."""

    def __init__(self, config: WebConfig) -> None:
        self._config = config
        self._mtimes = _mtimes(config.watched)
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        self._lock = threading.Lock()

    def current(self) -> WebConfig:
        if time.monotonic() < self._next_check or self._config.path is None:
            return self._config
        if not self._lock.acquire(blocking=False):  # another thread is checking: use what is in force
            return self._config
        try:
            self._next_check = time.monotonic() + RELOAD_CHECK_S
            mtimes = _mtimes(self._config.watched)
            if mtimes != self._mtimes:
                self._mtimes = mtimes
                self._reload()
        finally:
            self._lock.release()
        return self._config

    def _reload(self) -> None:
        old = self._config
        try:
            new = load(old.path)
        except WebConfigError as exc:
            log.error("%s; still serving with the configuration loaded before", exc)
            return
        if (new.tls is None) != (old.tls is None):
            log.error("web config %s: a change would turn TLS %s; restart the server for that (still serving "
                      "with the configuration loaded before)", old.path, "on" if old.tls is None else "off")
            return
        self._mtimes = _mtimes(new.watched)
        self._config = new
        log.info("web config %s reloaded", old.path)
