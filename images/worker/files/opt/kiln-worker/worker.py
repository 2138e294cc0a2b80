"""Kiln's demo worker: runs the jobs of the application database's queue, one at a time.

A job is a row of kiln_jobs. It is taken with SELECT ... FOR UPDATE SKIP LOCKED and marked done in
that same transaction, so it is done exactly once: a worker that dies mid-job (SIGKILL, a lost VM)
has its transaction rolled back and another worker takes the job. SIGTERM (a rollout replacing the
instance, `invoke down`) lets the job in hand finish, records the stop in kiln_worker_stops and
exits 0: the service's stop_timeout in role.yml is the grace period.

Every pass of the loop touches the heartbeat that the role's health_command reads, and only after
the database answered, so a worker that cannot reach its queue is not healthy. Without a database
configured (a verification) the worker idles and still beats.
"""

import json
import os
import signal
import socket
import sys
import time

INSTANCE_FILE = "/etc/kiln/instance.json"
IMAGE_FILE = "/etc/kiln/image.json"
HEARTBEAT = "/var/lib/kiln-worker/heartbeat"
IDLE_SECONDS = 0.5
SCHEMA = """
CREATE TABLE IF NOT EXISTS kiln_jobs (
    id bigserial PRIMARY KEY,
    seconds real NOT NULL DEFAULT 0,
    queued_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz,
    done_by text,
    done_version text
);
CREATE TABLE IF NOT EXISTS kiln_worker_stops (
    instance text NOT NULL,
    version text NOT NULL,
    jobs_done bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""
stopping = False


def request_stop(signum, frame):
    global stopping
    stopping = True


def read_settings():
    """The queue's settings, from the environment: the service's environment_file (role.yml,
    /etc/kiln/worker.env) is read by systemd or kiln-init, which start the worker."""
    return {key: value for key, value in os.environ.items() if key.startswith("KILN_DB_")}


def read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return default


def say(message):
    print(f"kiln-worker: {message}", flush=True)


def beat():
    with open(HEARTBEAT, "a"):
        pass
    os.utime(HEARTBEAT)


def connect(settings):
    import psycopg2  # only a worker with a database loads the driver

    conn = psycopg2.connect(
        host=settings["KILN_DB_HOST"],
        port=int(settings.get("KILN_DB_PORT", "5432")),
        dbname=settings.get("KILN_DB_NAME", "kiln"),
        user=settings.get("KILN_DB_USER", "kiln"),
        password=settings.get("KILN_DB_PASSWORD", ""),
        # internal_tls: verify-full against the environment's CA; libpq's default otherwise
        sslmode=settings.get("KILN_DB_SSLMODE", "prefer"),
        sslrootcert=settings.get("KILN_DB_SSLROOTCERT"),
        connect_timeout=3,
        application_name="kiln-worker",
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(2005)")  # one CREATE at a time across workers
        cur.execute(SCHEMA)
    return conn


def run_one(conn, me, version):
    """Take the oldest free job, do it, mark it done, all in one transaction; whether there was one."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, seconds FROM kiln_jobs WHERE done_at IS NULL ORDER BY id "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        row = cur.fetchone()
        if row is None:
            return False
        job, seconds = row
        time.sleep(seconds)  # the work; a SIGTERM now waits for it
        cur.execute(
            "UPDATE kiln_jobs SET done_at = now(), done_by = %s, done_version = %s WHERE id = %s",
            (me, version, job),
        )
        return True


def main():
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    settings = read_settings()
    me = read_json(INSTANCE_FILE, {}).get("instance") or socket.gethostname()
    version = read_json(IMAGE_FILE, {}).get("version", "unknown")
    if not settings.get("KILN_DB_HOST"):
        say("no database configured: idle")
    conn, done = None, 0
    while not stopping:
        if not settings.get("KILN_DB_HOST"):
            beat()
            time.sleep(IDLE_SECONDS)
            continue
        try:
            conn = conn or connect(settings)
            worked = run_one(conn, me, version)
        except Exception as exc:  # the database restarting or unreachable: retry, not healthy
            say(f"queue unavailable: {type(exc).__name__}: {str(exc).strip()[:200]}")
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(1)
            continue
        beat()
        done += worked
        if not worked:
            time.sleep(IDLE_SECONDS)
    if conn is not None:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO kiln_worker_stops (instance, version, jobs_done) VALUES (%s, %s, %s)",
                (me, version, done),
            )
        conn.close()
    say(f"stopped cleanly after {done} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
