"""Secrets of an environment: a variable of the same name, else secrets/<env>.env (git-ignored).

KILN_BACKUP_KEY encrypts both repositories (pgBackRest aes-256-cbc, restic); KILN_DB_PASSWORD
is the application's database password (the one `invoke up` made in .kiln/envs/<env>/ when it
exists). `invoke backup` creates the file with fresh random values the first time (mode
0600). Values are never printed: errors name the secret and where it came from, not its value.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from kiln.errors import KilnError
from kiln.files import write_atomic
from kiln.settings import Settings

NAMES = {
    "KILN_BACKUP_KEY": "encrypts the backup repositories; without it no backup can be read",
    "KILN_DB_PASSWORD": "the application's PostgreSQL password",
}
S3_NAMES = ("KILN_S3_KEY", "KILN_S3_KEY_SECRET")
VALUE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


def secrets_file(settings: Settings, env: str) -> Path:
    return settings.project_root / "secrets" / f"{env}.env"


def _read_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def ensure_secrets(settings: Settings, env: str) -> Path | None:
    """Create secrets/<env>.env with random values for the names it lacks; the path if written."""
    path = secrets_file(settings, env)
    values = _read_file(path)
    missing = [name for name in NAMES if name not in values and name not in os.environ]
    if not missing:
        return None
    path.parent.mkdir(mode=0o700, exist_ok=True)
    values.update({name: secrets.token_urlsafe(32) for name in missing})
    header = "# Kiln secrets for this environment: keep a copy off this machine, never commit.\n"
    write_atomic(path, header + "".join(f"{k}={v}\n" for k, v in values.items()), mode=0o600)
    return path


def secret(settings: Settings, env: str, name: str) -> str:
    """The secret's value, or KilnError naming where it was looked for (never its value)."""
    path = secrets_file(settings, env)
    display = (
        str(path.relative_to(settings.project_root))
        if path.is_relative_to(settings.project_root)
        else str(path)
    )
    rollout_password = settings.state_dir / "envs" / env / "db-password"
    if name in os.environ:
        value, source = os.environ[name], f"variable {name}"
    elif name == "KILN_DB_PASSWORD" and rollout_password.exists():
        # `invoke up` made the instances' password: the restore must log in with the same.
        value, source = rollout_password.read_text().strip(), str(rollout_password)
    else:
        value, source = _read_file(path).get(name), f"{display}: {name}"
    if value is None:
        why = NAMES.get(name, "a credential")
        raise KilnError(
            f"{name} ({why}) is not set: export it or add it to {display}; "
            "`invoke backup` creates that file with fresh values"
        )
    if not VALUE.match(value):
        raise KilnError(f"{source}: must be 16-256 letters, digits or ._~+/=- (the value is not shown)")
    return value
