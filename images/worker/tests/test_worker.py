"""worker role: the queue worker runs unprivileged and beats; without a database it idles."""

import time


def wait_healthy(host, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        result = host.run("/usr/local/bin/kiln-worker-alive")
        if result.rc == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_health_command_passes_once_the_worker_beats(host):
    assert wait_healthy(host).rc == 0


def test_worker_runs_unprivileged(host):
    wait_healthy(host)
    workers = [p for p in host.process.filter(comm="python3") if "worker.py" in p.args]
    assert workers and {p.user for p in workers} == {"kiln-worker"}


def test_a_stale_heartbeat_fails_the_health_command(host):
    """What a hung worker looks like: the loop stopped beating 11 s ago."""
    wait_healthy(host)
    stale = host.run(
        "touch -d '-11 seconds' /tmp/kiln-beat && KILN_WORKER_HEARTBEAT=/tmp/kiln-beat "
        "/usr/local/bin/kiln-worker-alive"
    )
    assert stale.rc == 1, stale.stderr


def test_queue_settings_are_private_to_the_worker(host):
    """cloud-init writes /etc/kiln/worker.env 0600 root (the service manager reads it); here, no
    database: no file."""
    assert not host.file("/etc/kiln/worker.env").exists
    assert host.file("/var/lib/kiln-worker").user == "kiln-worker"
    assert host.file("/var/lib/kiln-worker").mode == 0o750
