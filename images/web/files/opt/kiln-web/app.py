"""Kiln's demo web application: a WSGI app that reports the image version it was baked into,
keeps records in PostgreSQL and serves uploaded files, so both kinds of backup hold real data.

Database settings come from the environment or /etc/kiln/web.env (KEY=VALUE lines written by
cloud-init): KILN_DB_HOST, KILN_DB_PORT, KILN_DB_NAME, KILN_DB_USER, KILN_DB_PASSWORD, and with
internal_tls KILN_DB_SSLMODE and KILN_DB_SSLROOTCERT. Without
KILN_DB_HOST the app runs without a database and /health still answers 200.
"""

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time

IMAGE_FILE = os.environ.get("KILN_IMAGE_FILE", "/etc/kiln/image.json")
ENV_FILE = os.environ.get("KILN_WEB_ENV_FILE", "/etc/kiln/web.env")
UPLOADS = os.environ.get("KILN_UPLOADS_DIR", "/srv/kiln-web/uploads")
MAX_BODY = 64 * 1024 * 1024
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
RECORD_PATH = re.compile(r"^/records/(\d{1,18})$")
DB_PATIENCE = 5.0  # seconds a request waits for a primary: a switchover takes about two
STARTED = time.time()

with open(IMAGE_FILE) as f:
    IMAGE = json.load(f)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    note text NOT NULL DEFAULT '',
    payload bytea NOT NULL DEFAULT ''
)
"""


def read_settings():
    settings = {}
    try:
        with open(ENV_FILE) as env_file:
            for line in env_file:
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    settings[key.strip()] = value.strip().strip("'\"")
    except FileNotFoundError:
        pass
    settings.update({k: v for k, v in os.environ.items() if k.startswith("KILN_DB_")})
    return settings


SETTINGS = read_settings()
_counts: dict[str, int] = {}
_lock = threading.Lock()
_local = threading.local()


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def database_configured():
    return bool(SETTINGS.get("KILN_DB_HOST"))


def db():
    """This thread's connection, opened on first use and again after a failure."""
    conn = getattr(_local, "conn", None)
    if conn is not None and not conn.closed:
        return conn
    import psycopg2  # only instances with a database need the driver loaded

    conn = psycopg2.connect(
        host=SETTINGS["KILN_DB_HOST"],
        port=int(SETTINGS.get("KILN_DB_PORT", "5432")),
        dbname=SETTINGS.get("KILN_DB_NAME", "kiln"),
        user=SETTINGS.get("KILN_DB_USER", "kiln"),
        password=SETTINGS.get("KILN_DB_PASSWORD", ""),
        # internal_tls: verify-full against the environment's CA; libpq's default otherwise
        sslmode=SETTINGS.get("KILN_DB_SSLMODE", "prefer"),
        sslrootcert=SETTINGS.get("KILN_DB_SSLROOTCERT"),
        connect_timeout=3,
        application_name="kiln-web",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
    _local.conn = conn
    return conn


def query(sql, params=(), patience=0.0):
    """One statement. A connection kept from an earlier request may have been closed since (the
    database restarted, or a failover cut it at the load balancer): the statement is then tried
    again on a new connection, for up to `patience` seconds, so a request rides through a
    switchover; /health has none, or it would hang while no primary answers."""
    kept = getattr(_local, "conn", None)
    retry = kept is not None and not kept.closed
    deadline = time.monotonic() + patience
    while True:
        try:
            with db().cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except Exception as exc:
            conn = getattr(_local, "conn", None)
            if conn is not None:
                conn.close()
            lost = type(exc).__name__ in ("OperationalError", "InterfaceError")
            if lost and (retry or time.monotonic() < deadline):
                if not retry:
                    time.sleep(0.1)
                retry = False
                continue
            raise HttpError("503 Service Unavailable", f"database unavailable: {type(exc).__name__}") from exc


def require_database():
    if not database_configured():
        raise HttpError("503 Service Unavailable", "no database configured")


def _count(path):
    with _lock:
        _counts[path] = _counts.get(path, 0) + 1


def reply(status, body, ctype="application/json"):
    if ctype == "application/json":
        body = json.dumps(body)
    return status, ctype, body.encode() if isinstance(body, str) else body


def health(environ):
    body = {"status": "ok", "role": IMAGE["role"], "version": IMAGE["version"]}
    if database_configured():
        try:
            query("SELECT 1")
            body["database"] = "ok"
        except HttpError as exc:
            body["database"] = str(exc)
    else:
        body["database"] = "not configured"
    return reply("200 OK", body)


def metrics(environ):
    lines = [
        "# HELP kiln_app_info Image the app runs from.",
        "# TYPE kiln_app_info gauge",
        f'kiln_app_info{{role="{IMAGE["role"]}",version="{IMAGE["version"]}"}} 1',
        "# HELP kiln_app_uptime_seconds Seconds since this worker started.",
        "# TYPE kiln_app_uptime_seconds gauge",
        f"kiln_app_uptime_seconds {time.time() - STARTED:.1f}",
        "# HELP kiln_http_requests_total Requests served by this worker, by path.",
        "# TYPE kiln_http_requests_total counter",
    ]
    with _lock:
        lines += [f'kiln_http_requests_total{{path="{p}"}} {n}' for p, n in sorted(_counts.items())]
    return reply("200 OK", "\n".join(lines) + "\n", "text/plain; version=0.0.4")


def index(environ):
    return reply("200 OK", f"Kiln web {IMAGE['version']}\n", "text/plain")


def read_body(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise HttpError("400 Bad Request", "Content-Length is not a number") from exc
    if length > MAX_BODY:
        raise HttpError("413 Payload Too Large", f"at most {MAX_BODY} bytes")
    return environ["wsgi.input"].read(length) if length else b""


def records(environ):
    """POST a JSON record {customer, amount, note}; GET the newest record's id (an index
    lookup: a count would read the whole table, slow on a freshly restored database)."""
    require_database()
    if environ["REQUEST_METHOD"] == "POST":
        try:
            data = json.loads(read_body(environ) or b"{}")
            customer, amount = str(data["customer"]), float(data["amount"])
            note = str(data.get("note", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise HttpError("400 Bad Request", "expected JSON {customer, amount[, note]}") from exc
        ((rid, created),) = query(
            "INSERT INTO records (customer, amount, note) VALUES (%s, %s, %s) RETURNING id, created_at",
            (customer, amount, note),
            DB_PATIENCE,
        )
        return reply("201 Created", {"id": rid, "created_at": created.isoformat()})
    ((newest,),) = query("SELECT max(id) FROM records", (), DB_PATIENCE)
    return reply("200 OK", {"newest_id": newest})


def record(environ, rid):
    require_database()
    rows = query(
        "SELECT id, created_at, customer, amount, note, md5(payload) FROM records WHERE id = %s",
        (rid,),
        DB_PATIENCE,
    )
    if not rows:
        raise HttpError("404 Not Found", f"no record {rid}")
    rid, created, customer, amount, note, payload_md5 = rows[0]
    body = {
        "id": rid,
        "created_at": created.isoformat(),
        "customer": customer,
        "amount": str(amount),
        "note": note,
        "payload_md5": payload_md5,
    }
    return reply("200 OK", body)


def files(environ, name):
    if not FILE_NAME.match(name):
        raise HttpError("400 Bad Request", "file names are letters, digits, '.', '_' and '-'")
    path = os.path.join(UPLOADS, name)
    if environ["REQUEST_METHOD"] == "PUT":
        data = read_body(environ)
        # Written beside the target and renamed, so a reader (or a backup) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=UPLOADS, prefix=".upload-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        return reply(
            "201 Created", {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    try:
        with open(path, "rb") as src:
            return reply("200 OK", src.read(), "application/octet-stream")
    except FileNotFoundError as exc:
        raise HttpError("404 Not Found", f"no file {name}") from exc


ROUTES = {"/health": health, "/metrics": metrics, "/": index, "/records": records}


def route(environ):
    path = environ.get("PATH_INFO", "/")
    if path in ROUTES:
        return path, lambda: ROUTES[path](environ)
    match = RECORD_PATH.match(path)
    if match:
        return "/records/<id>", lambda: record(environ, int(match[1]))
    if path.startswith("/files/"):
        return "/files/<name>", lambda: files(environ, path.removeprefix("/files/"))
    return None, None


def application(environ, start_response):
    label, handler = route(environ)
    if handler is None:
        status, ctype, data = reply("404 Not Found", "not found\n", "text/plain")
    else:
        _count(label)
        try:
            status, ctype, data = handler()
        except HttpError as exc:
            status, ctype, data = reply(exc.status, {"error": str(exc)})
        except OSError as exc:  # an unreadable upload, a full disk: say so instead of dropping the worker
            print(f"kiln-web: {label}: {exc}", file=sys.stderr, flush=True)
            status, ctype, data = reply("500 Internal Server Error", {"error": type(exc).__name__})
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]
