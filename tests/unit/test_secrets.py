"""Secrets encrypted with the real age: edit, show-keys, rotate, a wrong or missing key, migration.

The CLI runs as a subprocess in a git checkout of the project copy, so `git grep` and a walk over
every file the run wrote (logs and state included) can prove no value reached the disk in clear.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import secrets as sealed
from kiln.backup.secrets import ensure_secrets, secret
from kiln.errors import KilnError

VALUE = "kilntest-s3-secret-value-never-shown-0123"


def new_key() -> str:
    out = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("AGE-SECRET-KEY-"))


@pytest.fixture
def checkout(project: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    return project


def invoke(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        env={**os.environ, "KILN_PROJECT_ROOT": str(project), "KILN_IMAGE_REPO": "kilnunit", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def appending_editor(tmp_path: Path, line: str) -> str:
    """An $EDITOR that appends `line` and notes where it was asked to edit and that file's mode."""
    script = tmp_path / "editor.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f'stat -c "%a %n" "$1" > {tmp_path}/edited-at\nprintf "%s\\n" "{line}" >> "$1"\n'
    )
    script.chmod(0o700)
    return str(script)


def files_holding(root: Path, value: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]


def test_edit_encrypts_in_the_checkout_and_no_value_is_on_disk_or_printed(checkout, tmp_path, settings):
    editor = appending_editor(tmp_path, f"KILN_S3_KEY_SECRET={VALUE}")
    proc = invoke(checkout, "secrets", "edit", "local", EDITOR=editor)
    assert proc.returncode == 0, proc.stderr

    mode, edited = (tmp_path / "edited-at").read_text().split()
    assert mode == "600" and not Path(edited).is_relative_to(checkout) and not Path(edited).exists()
    encrypted = checkout / "secrets" / "local.env.age"
    assert encrypted.read_text().startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    assert secret(settings, "local", "KILN_S3_KEY_SECRET") == VALUE

    shown = invoke(checkout, "secrets", "show-keys", "local")
    assert shown.returncode == 0 and shown.stdout.startswith("age1") and "current key" in shown.stdout
    subprocess.run(["git", "add", "-A"], cwd=checkout, check=True)
    assert subprocess.run(["git", "grep", "-q", VALUE], cwd=checkout, check=False).returncode == 1
    assert files_holding(checkout, VALUE) == []  # .kiln/ logs and state included
    for output in (proc, shown):
        assert VALUE not in output.stdout + output.stderr


def test_a_wrong_key_fails_in_one_line_before_anything_changes(checkout, settings, tmp_path):
    ensure_secrets(settings, "local")
    encrypted = checkout / "secrets" / "local.env.age"
    before = {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file()}

    wrong = new_key()
    for args in (
        ("backup", "local"),
        ("dr-drill", "local"),
        ("secrets", "edit", "local"),
        ("secrets", "rotate", "local", "--key-out", str(tmp_path / "new.key")),
    ):
        proc = invoke(checkout, *args, KILN_AGE_KEY=wrong, EDITOR=appending_editor(tmp_path, "A=1"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "secrets/local.env.age: the age key from variable KILN_AGE_KEY does not open it" in proc.stderr
    assert {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new.key").exists() and encrypted.exists()
    assert not (tmp_path / "edited-at").exists()  # the editor never opened


def test_a_missing_key_is_one_line_naming_the_variable_and_the_file(settings, monkeypatch, tmp_path):
    ensure_secrets(settings, "local")
    monkeypatch.delenv("KILN_AGE_KEY")
    monkeypatch.setenv("KILN_AGE_KEY_FILE", str(tmp_path / "absent.key"))
    with pytest.raises(KilnError, match=r"no age key: set KILN_AGE_KEY .*/absent.key"):
        secret(settings, "local", "KILN_BACKUP_KEY")
    (tmp_path / "absent.key").write_text("# created: today\nnot a key\n")
    with pytest.raises(KilnError, match=r"absent.key: not an age identity"):
        secret(settings, "local", "KILN_BACKUP_KEY")


def test_a_first_secret_with_no_key_anywhere_makes_a_private_key_file_and_only_then(
    settings, monkeypatch, tmp_path
):
    monkeypatch.delenv("KILN_AGE_KEY")
    key_path = tmp_path / "home" / "age.key"
    monkeypatch.setenv("KILN_AGE_KEY_FILE", str(key_path))
    assert sealed.ensure_identity(settings, "local") == key_path
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sealed.ensure_identity(settings, "local") is None  # a key exists now
    ensure_secrets(settings, "local")
    assert len(secret(settings, "local", "KILN_BACKUP_KEY")) >= 32  # sealed to the new key
    key_path.unlink()
    assert sealed.ensure_identity(settings, "local") is None  # sealed secrets need their own key
    with pytest.raises(KilnError, match="no age key"):
        secret(settings, "local", "KILN_BACKUP_KEY")


def test_a_key_file_opens_them_too(settings, monkeypatch, tmp_path, age_key):
    ensure_secrets(settings, "local")
    (tmp_path / "age.key").write_text(f"# public key: whatever\n{age_key}\n")
    monkeypatch.delenv("KILN_AGE_KEY")
    monkeypatch.setenv("KILN_AGE_KEY_FILE", str(tmp_path / "age.key"))
    assert len(secret(settings, "local", "KILN_BACKUP_KEY")) >= 32


def test_the_old_plaintext_file_gets_a_hint_then_edit_encrypts_and_removes_it(settings, project):
    plaintext = project / "secrets" / "local.env"
    plaintext.parent.mkdir()
    plaintext.write_text(f"KILN_BACKUP_KEY={VALUE}\n")
    with pytest.raises(KilnError) as exc:
        secret(settings, "local", "KILN_BACKUP_KEY")
    assert str(exc.value) == (
        "secrets/local.env is plain text: `invoke secrets edit local` encrypts it into "
        "secrets/local.env.age and removes it"
    )
    sealed.edit(settings, "local", "true")
    assert not plaintext.exists() and secret(settings, "local", "KILN_BACKUP_KEY") == VALUE


def test_rotate_re_encrypts_to_a_new_key_only(settings, monkeypatch, tmp_path, project):
    ensure_secrets(settings, "local")
    key = secret(settings, "local", "KILN_BACKUP_KEY")
    with pytest.raises(KilnError, match="inside the checkout"):
        sealed.rotate(settings, "local", project / "new.key")
    public = sealed.rotate(settings, "local", tmp_path / "new.key")
    assert stat.S_IMODE((tmp_path / "new.key").stat().st_mode) == 0o600
    with pytest.raises(KilnError, match="does not open it"):
        secret(settings, "local", "KILN_BACKUP_KEY")  # the old key
    monkeypatch.delenv("KILN_AGE_KEY")
    monkeypatch.setenv("KILN_AGE_KEY_FILE", str(tmp_path / "new.key"))
    assert secret(settings, "local", "KILN_BACKUP_KEY") == key
    assert sealed.show_keys(settings, "local") == [(public, True)]


def test_a_malformed_edit_names_the_line_not_the_value(settings, tmp_path):
    with pytest.raises(KilnError) as exc:
        sealed.edit(settings, "local", appending_editor(tmp_path, f"lower case={VALUE}"))
    assert "line 2: expected NAME=value" in str(exc.value) and VALUE not in str(exc.value)
    assert not sealed.files(settings, "local").encrypted.exists()
