"""Certificates and web config files made on the spot, for the TLS / basic auth tests and the benchmark.

A private CA signs the server's certificate (names localhost and 127.0.0.1) and a scraper's client
certificate; a second, unrelated CA signs an "intruder" client certificate the server must refuse. Keys
are ECDSA P-256 (fast to make; Prometheus and Python's ssl both speak it).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TEST_BCRYPT_COST = 4  # the lowest bcrypt allows: tests hash many passwords; real files use 10 or more


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None, *, ca: bool = False,
                 sans: tuple[x509.GeneralName, ...] = (), usage: tuple = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """PEM files under `folder`: ca.pem, server.pem/server-key.pem, client.pem/client-key.pem (CN scraper,
    SAN DNS:prometheus), intruder.pem/intruder-key.pem (signed by another CA)."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def client_context(self, *, with_cert: bool = True, intruder: bool = False) -> ssl.SSLContext:
        """A scraper's TLS context: trusts the CA, and presents the client (or intruder) certificate."""
        ctx = ssl.create_default_context(cafile=str(self.path("ca.pem")))
        if with_cert:
            who = "intruder" if intruder else "client"
            ctx.load_cert_chain(self.path(f"{who}.pem"), self.path(f"{who}-key.pem"))
        return ctx


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    keys = {name: ec.generate_private_key(ec.SECP256R1())
            for name in ("ca", "other-ca", "server", "client", "intruder")}
    ca = _certificate("thermograd test CA", keys["ca"], None, ca=True)
    other_ca = _certificate("someone else's CA", keys["other-ca"], None, ca=True)
    issued_by_ca = (ca.subject, keys["ca"])
    server = _certificate("localhost", keys["server"], issued_by_ca, usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
                          sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))
    client = _certificate("scraper", keys["client"], issued_by_ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
                          sans=(x509.DNSName("prometheus"),))
    intruder = _certificate("scraper", keys["intruder"], (other_ca.subject, keys["other-ca"]),
                            usage=(ExtendedKeyUsageOID.CLIENT_AUTH,), sans=(x509.DNSName("prometheus"),))
    for name, cert in (("ca", ca), ("server", server), ("client", client), ("intruder", intruder)):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client", "intruder"):
        key_path = folder / f"{name}-key.pem"
        key_path.write_bytes(_pem_key(keys[name]))
        key_path.chmod(0o600)
    return Pki(folder)


def bcrypt_hash(password: str, cost: int = TEST_BCRYPT_COST) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_web_config(path: Path, pki: Pki | None, *, users: dict[str, str] | None = None,
                     client_auth: str | None = None, **tls_extra: object) -> Path:
    """A web config: TLS with the Pki's server certificate (when given), `client_auth` checked against its
    CA, `users` (plain passwords here, written as bcrypt hashes)."""
    config: dict[str, object] = {}
    if pki is not None:
        tls: dict[str, object] = {"cert_file": str(pki.path("server.pem")),
                                  "key_file": str(pki.path("server-key.pem"))}
        if client_auth:
            tls.update(client_auth_type=client_auth, client_ca_file=str(pki.path("ca.pem")))
        tls.update(tls_extra)
        config["tls_server_config"] = tls
    if users:
        config["basic_auth_users"] = {user: bcrypt_hash(password) for user, password in users.items()}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
