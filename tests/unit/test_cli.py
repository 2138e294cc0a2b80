"""The task wrapper: SIGTERM interrupts a task as Ctrl-C does, so its clean-up runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

TASK = textwrap.dedent(
    """
    import time
    from invoke import Exit
    from kiln.cli import kiln_task

    @kiln_task
    def task(c):
        try:
            print("started", flush=True)
            time.sleep(60)
        finally:
            print("cleaned up", flush=True)

    try:
        task(None)
    except Exit as exc:
        print(exc.message, exc.code, flush=True)
    """
)


def test_sigterm_interrupts_a_task_and_runs_its_clean_up():
    proc = subprocess.Popen([sys.executable, "-c", TASK], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.splitlines() == ["cleaned up", "kiln: interrupted 130"]
