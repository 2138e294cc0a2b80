"""The application's database account and the settings files its instances read.

db.env and web.env reach an instance as files in its user-data (the providers) or written
before its first boot (kiln.backup.containers): never on a command line.
"""

from __future__ import annotations

DB_NAME = DB_USER = "kiln"


def db_env(password: str, hold: bool = False) -> bytes:
    lines = [f"KILN_DB_NAME={DB_NAME}", f"KILN_DB_USER={DB_USER}", f"KILN_DB_PASSWORD={password}"]
    return ("\n".join([*lines, "KILN_DB_HOLD=1"] if hold else lines) + "\n").encode()


# Drops the hold, so that the cluster may start: on a VM `pg_ctlcluster start` becomes
# `systemctl start`, whose ExecCondition (images/db/role.yml) reads db.env.
RELEASE_HOLD = ["sed", "-i", "/^KILN_DB_HOLD=1$/d", "/etc/kiln/db.env"]


def web_env(db_host: str, password: str) -> bytes:
    return (
        f"KILN_DB_HOST={db_host}\nKILN_DB_NAME={DB_NAME}\nKILN_DB_USER={DB_USER}\n"
        f"KILN_DB_PASSWORD={password}\n"
    ).encode()
