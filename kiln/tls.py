"""An environment's certificate authority, and the certificates it issues to the load balancer
and to instances that speak TLS to each other (a db pair's pgBackRest).

The CA is made by Kiln the first time an environment needs one: its private
key is one more sealed secret (KILN_CA_KEY in secrets/<env>.env.age, base64 of the PEM), its
certificate is public and committed beside it (secrets/<env>.ca.pem) so clients can trust it.
Leaf certificates are short-lived and made fresh for the load balancer when it starts or when
the one it serves is due; their keys exist only in the load balancer's own folder. An instance's
certificate and key reach it only in its user-data, beside its database passwords. Keys are
ECDSA P-256: fast to make on a busy machine and accepted by every current TLS client.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kiln import secrets as sealed
from kiln.errors import KilnError, OperationFailed
from kiln.files import write_atomic
from kiln.haproxy import HTTPS_PORT
from kiln.settings import Settings

KEY_SECRET = "KILN_CA_KEY"
CA_YEARS = 10
# a leaf is replaced once less than this share of its lifetime is left
RENEW_AT_FRACTION = 1 / 3
# An instance's certificate lives as long as the instance may: immutable instances are replaced
# by rollouts long before, and one that outlives it fails its peers' TLS checks loudly.
INSTANCE_DAYS = 398


@dataclass(frozen=True)
class InstanceCredentials:
    """What an instance receives at first boot (user-data) to speak TLS with its peers, as PEM."""

    certificate: str
    key: str
    ca: str


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def ca_file(settings: Settings, env: str) -> Path:
    return sealed.files(settings, env).folder / f"{env}.ca.pem"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def authority(settings: Settings, env: str) -> Authority:
    """The environment's CA, made (key sealed, certificate written) when it has none yet.

    The sealed secrets are opened first, so a missing or wrong age key stops here, before
    anything is written; a certificate without its key (or the reverse) is refused, not replaced,
    since clients may trust the old one."""
    values = sealed.read(settings, env)
    cert_path = ca_file(settings, env)
    shown_cert = f"secrets/{cert_path.name}"
    if KEY_SECRET in values and cert_path.exists():
        return load_authority(values[KEY_SECRET], cert_path.read_bytes(), shown_cert, env)
    if KEY_SECRET in values or cert_path.exists():
        have, lacking = (KEY_SECRET, shown_cert) if KEY_SECRET in values else (shown_cert, KEY_SECRET)
        raise KilnError(
            f"environment {env}: its CA has {have} but not {lacking}: restore it from version control "
            f"(clients trust that CA), or remove both to make a new one"
        )
    made = new_authority(env)
    sealed.write(settings, env, {**values, KEY_SECRET: base64.b64encode(private_pem(made.key)).decode()})
    write_atomic(cert_path, made.pem)
    return made


def load_authority(sealed_key: str, cert_pem: bytes, shown_cert: str, env: str) -> Authority:
    try:
        key = serialization.load_pem_private_key(base64.b64decode(sealed_key, validate=True), None)
    except ValueError:
        raise KilnError(f"secrets/{env}.env.age: {KEY_SECRET} is not a base64 PEM private key") from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise KilnError(f"{shown_cert}: not a PEM certificate") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
        raise KilnError(f"{shown_cert}: its public key does not match {KEY_SECRET} (a CA from elsewhere?)")
    return Authority(key, certificate)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def valid_from() -> datetime.datetime:
    return now() - datetime.timedelta(minutes=5)  # tolerate clocks a little behind


def new_authority(env: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kiln"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Kiln CA {env}")])  # fmt: skip
    start = valid_from()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def subject_names(names: list[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return general


def issue(ca: Authority, names: list[str], days: int) -> bytes:
    """A server certificate for `names` (host names or addresses), valid `days`: HAProxy's `crt`
    file, the certificate, then the CA's, then the new private key."""
    certificate, key = issue_server(ca, names, days)
    return certificate + ca.pem + key


def issue_server(ca: Authority, names: list[str], days: int) -> tuple[bytes, bytes]:
    """(certificate, private key) as PEM of a server for `names`, valid `days`: what a cloud's
    certificate store takes apart (ACM, Barbican) where HAProxy takes one file."""
    return leaf(ca, names, days, [ExtendedKeyUsageOID.SERVER_AUTH])


def issue_instance(ca: Authority, names: list[str], days: int = INSTANCE_DAYS) -> InstanceCredentials:
    """An instance's certificate: a server to its peers under `names`, and a client to them with
    the first name as its common name (what a peer's allow list names)."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate, key = leaf(ca, names, days, usages)
    return InstanceCredentials(certificate.decode(), key.decode(), ca.pem.decode())


def leaf(
    ca: Authority, names: list[str], days: int, usages: list[x509.ObjectIdentifier]
) -> tuple[bytes, bytes]:
    """(certificate, private key) as PEM, signed by `ca` for `names`, valid `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = valid_from()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), private_pem(key)


def due(bundle: Path, ca: Authority, names: list[str]) -> bool:
    """A new leaf is needed for the bundle file: see leaf_due."""
    return leaf_due(bundle.read_bytes() if bundle.exists() else None, ca, names)


def leaf_due(pem: bytes | None, ca: Authority, names: list[str]) -> bool:
    """A new leaf is needed in place of `pem` (a leaf first, as in a bundle): none yet, another
    CA's, other names, or most of its life spent."""
    if pem is None:
        return True
    try:
        current = x509.load_pem_x509_certificate(pem)  # the first: the leaf
    except ValueError:
        return True
    try:  # signed by this CA, not merely by one of the same name (a CA made again)
        current.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return True
    try:
        listed = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    if list(listed) != subject_names(names):
        return True
    life = current.not_valid_after_utc - current.not_valid_before_utc
    return current.not_valid_after_utc - now() < life * RENEW_AT_FRACTION


def write_bundle(path: Path, bundle: bytes) -> None:
    write_atomic(path, bundle, mode=0o600)  # it holds the private key


class InstanceHTTPS(http.client.HTTPSConnection):
    """HTTPS to one instance by its address, its certificate checked against the environment's CA
    and for the instance's name, as the load balancer checks it (internal_tls)."""

    def __init__(self, address: str, instance: str, ca_pem: bytes, timeout: float = 5.0):
        context = ssl.create_default_context(cadata=ca_pem.decode())
        super().__init__(address, HTTPS_PORT, timeout=timeout, context=context)
        self.instance = instance

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.instance)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Served:
    """The certificate a TLS endpoint presents, as `invoke status` shows it."""

    subject: str
    issuer: str
    serial: str  # hex, as openssl prints it
    not_after: str  # ISO 8601, UTC
    days_left: int

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def served(host: str, port: int, timeout: float = 5.0) -> Served:
    """Read the certificate `host:port` presents (not trusting it: this only reports what is served)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except OSError as exc:
        raise OperationFailed(f"TLS at {host}:{port}: {exc}") from exc
    if der is None:
        raise OperationFailed(f"TLS at {host}:{port}: no certificate presented")
    certificate = x509.load_der_x509_certificate(der)
    not_after = certificate.not_valid_after_utc
    return Served(
        certificate.subject.rfc4514_string(),
        certificate.issuer.rfc4514_string(),
        f"{certificate.serial_number:X}",
        not_after.isoformat(timespec="seconds"),
        (not_after - now()).days,
    )


def describe(certificate: dict) -> str:
    """One line for `invoke status` from `Served.as_json()` or an {"error": ...}."""
    if "error" in certificate:
        return f"certificate unreadable: {certificate['error']}"
    return (
        f"certificate {certificate['subject']}, issued by {certificate['issuer']}, expires "
        f"{certificate['not_after']}: {certificate['days_left']} days left"
    )


def expiring(
    env: str,
    url: str | None,
    ca_pem: bytes | None,
    margin_days: int,
    instances: dict[str, bytes] | None = None,
) -> str:
    """A drill's check: the HTTPS frontend's certificate (served at `url`), the environment's CA
    and the instances' certificates (PEM by instance name) all outlive `margin_days`; what they
    have left, or OperationFailed naming what expires first and how to replace it."""
    left, fixes = {}, {}
    if url:
        parsed = urllib.parse.urlsplit(url)
        left["the frontend's certificate"] = served(parsed.hostname or "", parsed.port or 443).days_left
        fixes["the frontend's certificate"] = f"`invoke up {env}` issues a new one"
    if ca_pem:
        expires = x509.load_pem_x509_certificate(ca_pem).not_valid_after_utc
        left["the certificate authority"] = (expires - now()).days
        fixes["the certificate authority"] = (
            f"Kiln does not rotate it yet: replace secrets/{env}.ca.pem and KILN_CA_KEY"
        )
    for name, pem in sorted((instances or {}).items()):
        expires = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        left[f"{name}'s certificate"] = (expires - now()).days
        fixes[f"{name}'s certificate"] = (
            f"`invoke rollout {env} --role {name.rstrip('0123456789')}` replaces it"
        )
    if not left:
        return "no HTTPS frontend and no certificate authority"
    short = [
        f"{what} expires in {days} days ({fixes[what]})" for what, days in left.items() if days < margin_days
    ]
    if short:
        raise OperationFailed(f"{'; '.join(short)}: before the next drill, {margin_days} days from now")
    return ", ".join(f"{what}: {days} days left" for what, days in left.items())
