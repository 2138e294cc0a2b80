"""db role: PostgreSQL 15 accepts a local connection; pgBackRest is present and configured."""

import time


def test_postgresql_accepts_a_local_connection(host):
    # The cluster starts with the container: give it a moment.
    deadline = time.monotonic() + 30
    while True:
        result = host.run("runuser -u postgres -- psql -XAtc 'SELECT 1'")
        if result.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (result.rc, result.stdout.strip()) == (0, "1"), result.stderr


def test_postgresql_listens_on_5432(host):
    assert host.run("pg_isready -q -h 127.0.0.1 -p 5432").rc == 0
    assert host.socket("tcp://0.0.0.0:5432").is_listening


def test_pgbackrest_present(host):
    assert host.package("pgbackrest").is_installed
    assert host.run("pgbackrest version").stdout.startswith("pgBackRest ")


def test_data_directory_private(host):
    data = host.file("/var/lib/postgresql/15/main")
    assert (data.user, data.mode) == ("postgres", 0o700)


def test_role_agent_tells_the_load_balancer_it_is_the_primary(host):
    # HAProxy's agent check reads one line: a cluster running with no standby.signal is the primary.
    ask = "timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5433 && cat <&3'"
    deadline = time.monotonic() + 20
    while (answer := host.run(ask)).stdout.strip() != "up" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert answer.stdout.strip() == "up", answer.stderr
