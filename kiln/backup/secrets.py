"""The backup's secrets of an environment: a variable of the same name, else secrets/<env>.env.age.

KILN_BACKUP_KEY encrypts both repositories (pgBackRest aes-256-cbc, restic); KILN_DB_PASSWORD
is the application's database password (the one `invoke up` made in .kiln/envs/<env>/ when it
exists). `invoke backup` adds fresh random values the first time, encrypted with the
environment's age key (kiln.secrets): commit the file so the next runner finds the same key.
Values are never printed: errors name the secret and where it came from, not its value.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from kiln import secrets as sealed
from kiln.errors import KilnError
from kiln.settings import Settings

NAMES = {
    "KILN_BACKUP_KEY": "encrypts the backup repositories; without it no backup can be read",
    "KILN_DB_PASSWORD": "the application's PostgreSQL password",
}
S3_NAMES = ("KILN_S3_KEY", "KILN_S3_KEY_SECRET")
VALUE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


def secrets_file(settings: Settings, env: str) -> Path:
    return sealed.files(settings, env).encrypted


def ensure_secrets(settings: Settings, env: str) -> Path | None:
    """Add random values for the names secrets/<env>.env.age lacks; the path if written.

    It is opened first, so a missing or wrong age key stops here, before anything changes."""
    values = sealed.read(settings, env)
    missing = [name for name in NAMES if name not in values and name not in os.environ]
    if not missing:
        return None
    values.update({name: secrets.token_urlsafe(32) for name in missing})
    return sealed.write(settings, env, values)


def secret(settings: Settings, env: str, name: str) -> str:
    """The secret's value, or KilnError naming where it was looked for (never its value)."""
    display = f"secrets/{secrets_file(settings, env).name}"
    rollout_password = settings.state_dir / "envs" / env / "db-password"
    if name in os.environ:
        value, source = os.environ[name], f"variable {name}"
    elif name == "KILN_DB_PASSWORD" and rollout_password.exists():
        # `invoke up` made the instances' password: the restore must log in with the same.
        value, source = rollout_password.read_text().strip(), str(rollout_password)
    else:
        value, source = sealed.read(settings, env).get(name), f"{display}: {name}"
    if value is None:
        why = NAMES.get(name, "a credential")
        raise KilnError(
            f"{name} ({why}) is not set: export it or add it with `invoke secrets edit {env}` "
            f"(to {display}); `invoke backup` creates the backup's own values"
        )
    if not VALUE.match(value):
        raise KilnError(f"{source}: must be 16-256 letters, digits or ._~+/=- (the value is not shown)")
    return value
