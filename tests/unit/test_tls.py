"""The environment's CA (real age, real X.509): made once and sealed, reused, refused half-present;
leaf certificates that verify against it with Python's own TLS verification, and renewal rules."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from kiln import secrets as sealed
from kiln import tls
from kiln.errors import KilnError, OperationFailed


def bundle_parts(bundle: bytes) -> tuple[bytes, bytes, bytes]:
    """The leaf, the CA and the key, as HAProxy reads them from one crt file."""
    blocks = [b"-----BEGIN" + part for part in bundle.split(b"-----BEGIN")[1:]]
    assert len(blocks) == 3 and b"PRIVATE KEY" in blocks[2], bundle[:80]
    return blocks[0], blocks[1], blocks[2]


def test_the_ca_is_made_once_its_key_sealed_and_its_certificate_public(settings):
    made = tls.authority(settings, "web-prod")
    sealed_file = sealed.files(settings, "web-prod").encrypted
    assert b"PRIVATE KEY" not in sealed_file.read_bytes()  # only age's armour on disk
    assert tls.KEY_SECRET in sealed.read(settings, "web-prod")
    public = tls.ca_file(settings, "web-prod").read_bytes()
    assert b"PRIVATE" not in public
    assert x509.load_pem_x509_certificate(public).subject.rfc4514_string() == "CN=Kiln CA web-prod,O=Kiln"

    again = tls.authority(settings, "web-prod")
    assert again.pem == made.pem and again.key.public_key() == made.key.public_key()


def test_a_leaf_verifies_against_the_ca_for_its_names_only(settings, tmp_path: Path):
    ca = tls.authority(settings, "staging")
    leaf, chained_ca, key = bundle_parts(tls.issue(ca, ["localhost", "127.0.0.1"], days=30))
    assert chained_ca == ca.pem
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    # openssl's own chain and host checks, as a client would run them
    verify = ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "sslserver"]
    leaf_file = str(tmp_path / "leaf.pem")
    assert subprocess.run([*verify, "-verify_ip", "127.0.0.1", leaf_file]).returncode == 0
    assert subprocess.run([*verify, "-verify_hostname", "localhost", leaf_file]).returncode == 0
    wrong = subprocess.run([*verify, "-verify_hostname", "example.org", leaf_file], capture_output=True)
    assert wrong.returncode != 0
    (tmp_path / "other.pem").write_bytes(tls.new_authority("staging").pem)  # same name, other key
    foreign = [*verify[:2], "-CAfile", str(tmp_path / "other.pem"), leaf_file]
    assert subprocess.run(foreign, capture_output=True).returncode != 0
    # and Python's ssl accepts the pair as a server's
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        *write_pair(tmp_path, leaf + chained_ca, key)
    )


def write_pair(folder: Path, certs: bytes, key: bytes) -> tuple[str, str]:
    (folder / "chain.pem").write_bytes(certs)
    (folder / "key.pem").write_bytes(key)
    return str(folder / "chain.pem"), str(folder / "key.pem")


def test_a_leaf_is_due_when_missing_foreign_renamed_or_two_thirds_spent(settings, tmp_path: Path):
    ca = tls.authority(settings, "local")
    bundle = tmp_path / "frontend.pem"
    names = ["localhost"]
    assert tls.due(bundle, ca, names)
    tls.write_bundle(bundle, tls.issue(ca, names, days=90))
    assert bundle.stat().st_mode & 0o777 == 0o600
    assert not tls.due(bundle, ca, names)
    assert tls.due(bundle, ca, ["localhost", "lb.example.org"])
    assert tls.due(bundle, tls.new_authority("local"), names)
    tls.write_bundle(bundle, tls.issue(ca, names, days=1))  # 1 day, started 5 minutes ago
    assert not tls.due(bundle, ca, names)


def test_a_spent_leaf_is_due(settings, tmp_path: Path, monkeypatch):
    ca = tls.authority(settings, "local")
    bundle = tmp_path / "frontend.pem"
    tls.write_bundle(bundle, tls.issue(ca, ["localhost"], days=3))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2, hours=1)
    monkeypatch.setattr(tls, "now", lambda: later)  # the clock, not the code under test
    assert tls.due(bundle, ca, ["localhost"])


def test_half_a_ca_is_refused_not_replaced(settings):
    tls.authority(settings, "prod")
    cert = tls.ca_file(settings, "prod")
    kept = cert.read_bytes()
    values = sealed.read(settings, "prod")
    sealed.write(settings, "prod", {k: v for k, v in values.items() if k != tls.KEY_SECRET})
    with pytest.raises(KilnError, match=r"has secrets/prod.ca.pem but not KILN_CA_KEY: restore it"):
        tls.authority(settings, "prod")
    assert cert.read_bytes() == kept


def test_a_wrong_age_key_stops_before_anything_is_written(settings, monkeypatch):
    tls.authority(settings, "prod")  # sealed to the session's key
    tls.ca_file(settings, "prod").unlink()
    before = sealed.files(settings, "prod").encrypted.read_bytes()
    other = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    wrong_key = next(line for line in other.splitlines() if line.startswith("AGE-SECRET"))
    monkeypatch.setenv(sealed.KEY_VARIABLE, wrong_key)
    with pytest.raises(KilnError, match="does not open it"):
        tls.authority(settings, "prod")
    assert not tls.ca_file(settings, "prod").exists()
    assert sealed.files(settings, "prod").encrypted.read_bytes() == before


def test_status_line_names_expiry_or_why_not():
    served = tls.Served("CN=localhost", "CN=Kiln CA local,O=Kiln", "1F", "2027-03-03T05:00:00+00:00", 89)
    assert tls.describe(served.as_json()) == (
        "certificate CN=localhost, issued by CN=Kiln CA local,O=Kiln, expires 2027-03-03T05:00:00+00:00: "
        "89 days left"
    )
    unreadable = tls.describe({"error": "TLS at 127.0.0.1:1: refused"})
    assert unreadable == "certificate unreadable: TLS at 127.0.0.1:1: refused"


@contextlib.contextmanager
def https_server(tmp_path: Path, bundle: bytes):
    """A loopback TLS listener presenting `bundle` (leaf, CA, key) to every client; its URL."""
    leaf, chained_ca, key = bundle_parts(bundle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*write_pair(tmp_path, leaf + chained_ca, key))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_drill_flags_a_certificate_expiring_before_the_next_drill(settings, tmp_path: Path):
    ca = tls.authority(settings, "prod")
    with https_server(tmp_path, tls.issue(ca, ["127.0.0.1"], days=90)) as url:
        checked = tls.expiring("prod", url, ca.pem, margin_days=30)
    assert checked.startswith("the frontend's certificate: 89 days left, the certificate authority: ")
    with (
        https_server(tmp_path, tls.issue(ca, ["127.0.0.1"], days=20)) as url,
        pytest.raises(
            OperationFailed, match=r"the frontend's certificate expires in 19 days \(`invoke up prod`"
        ),
    ):
        tls.expiring("prod", url, ca.pem, margin_days=30)
    assert tls.expiring("dev", None, None, 30) == "no HTTPS frontend and no certificate authority"


def test_a_drill_flags_an_instance_certificate_expiring_before_the_next_drill(settings):
    ca = tls.authority(settings, "prod")
    fresh = tls.issue_instance(ca, ["db1"]).certificate.encode()
    checked = tls.expiring("prod", None, None, 30, {"db1": fresh})
    assert checked == f"db1's certificate: {tls.INSTANCE_DAYS - 1} days left"
    spent = tls.issue_instance(ca, ["db2"], days=10).certificate.encode()
    with pytest.raises(
        OperationFailed,
        match=r"db2's certificate expires in 9 days \(`invoke rollout prod --role db` replaces it\)",
    ):
        tls.expiring("prod", None, None, 30, {"db1": fresh, "db2": spent})
