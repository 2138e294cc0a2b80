"""One state store shared by separate checkouts: two git clones, real processes, real stores.

The S3 store runs against moto's server over TLS on loopback (tests/s3server.py; moto honours
PutObject If-None-Match: *, checked below); the folder store is a KILN_STATE_STORE folder both
clones point at. No Docker: a refused rollout stops at the lock, before any instance is touched.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from kiln import secrets as sealed
from kiln.backup.base import S3Access, S3Repository
from kiln.errors import KilnError, OperationFailed
from kiln.settings import Settings
from kiln.statestore import FolderStore, S3Store, for_environment, s3_client
from tests.conftest import copy_project
from tests.s3server import S3Server

ENV = "offsite"
CONTENDERS = 6  # processes racing for the lock, half from each checkout

# Runs in a checkout: hold the environment lock exactly as `invoke rollout` takes it, until stdin closes.
HOLD = textwrap.dedent(
    """
    import sys
    from kiln.rollout.state import Store
    from kiln.settings import Settings
    with Store(Settings.from_env(), sys.argv[1]).lock("rollout"):
        print("held", flush=True)
        sys.stdin.read()
    """
)
# Runs in a checkout: add a drill report to the environment's store, as a drill does.
RECORD_DRILL = textwrap.dedent(
    """
    import json, sys
    from kiln.settings import Settings
    from kiln.statestore import for_environment
    env, report = sys.argv[1], sys.argv[2]
    key = f"drills/{env}/{json.loads(report)['id']}.json"
    for_environment(Settings.from_env(), env).put(key, report)
    """
)
# Runs in a checkout: wait for the start time, try the lock once, say when it was held if it was.
RACE = textwrap.dedent(
    """
    import sys, time
    from kiln.errors import KilnError, OperationFailed
    from kiln.rollout.state import Store
    from kiln.settings import Settings
    store = Store(Settings.from_env(), sys.argv[1])
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    try:
        with store.lock("rollout"):
            taken = time.time()
            time.sleep(1.5)
            released = time.time()
        print("held", taken, released, flush=True)
    except KilnError as exc:
        print("refused:", exc, flush=True)
    """
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server("127.0.0.1", tmp_path_factory.mktemp("s3"), f"kilntest{os.getpid()}-state")
    yield server
    server.close()


@pytest.fixture(params=["s3", "folder"])
def checkouts(request, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """Two git clones of one repository holding `environments/offsite.yml` and its secrets."""
    origin = copy_project(tmp_path / "origin")
    spec = {"provider": "local", "zones": ["z0"], "instances": {"web": 1}, "frontend": {"port": 0}}
    env = {"KILN_IMAGE_REPO": "kilnh7", "KILN_STATE_STORE": ""}
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        spec["backup"] = {
            "repository": "s3",
            "s3": {"endpoint": server.endpoint, "bucket": server.bucket, "uri_style": "path",
                   "ca_file": str(server.ca)},
        }  # fmt: skip
        settings = Settings(project_root=origin)
        sealed.write(
            settings, ENV, {"KILN_S3_KEY": "kilntest-s3-key-id", "KILN_S3_KEY_SECRET": "kilntest-s3-secret"}
        )
    else:
        env["KILN_STATE_STORE"] = str(tmp_path / "shared-state")
    (origin / "environments").mkdir()
    (origin / "environments" / f"{ENV}.yml").write_text(yaml.safe_dump(spec))
    git = ["git", "-c", "user.name=kiln", "-c", "user.email=kiln@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=origin, check=True)
    subprocess.run([*git, "add", "-A"], cwd=origin, check=True)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=origin, check=True)
    clones = tmp_path / "a", tmp_path / "b"
    for clone in clones:
        subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    yield *clones, env
    if request.param == "s3":  # the next test starts from an empty store
        store = for_environment(Settings(project_root=clones[0]), ENV)
        for key in store.keys(""):
            store.delete(key)


def run_in(checkout: Path, env: dict[str, str], argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=checkout,
        env={**os.environ, "KILN_PROJECT_ROOT": str(checkout), **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_a_rollout_from_another_checkout_is_refused_naming_the_holder_and_its_start(checkouts):
    first, second, env = checkouts
    holder = run_in(first, env, [sys.executable, "-c", HOLD, ENV], stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        refused = run_in(second, env, [sys.executable, "-m", "invoke", "rollout", ENV])
        out, err = refused.communicate(timeout=120)
    finally:
        holder.communicate(input="", timeout=30)
    assert refused.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"kiln: environment {ENV} is locked by rollout (")
    assert f" pid {holder.pid} in {first}) since 20" in lines[0]

    after = run_in(second, env, [sys.executable, "-m", "invoke", "rollout", ENV])
    _, err = after.communicate(timeout=120)
    assert "is locked by" not in err  # released: the second checkout gets past the lock now


def test_checkouts_racing_for_the_lock_never_both_hold_it(checkouts):
    first, second, env = checkouts
    start = time.time() + 4  # every process imported and waiting by then
    racers = [
        run_in(clone, env, [sys.executable, "-c", RACE, ENV, str(start)])
        for clone in (first, second) * (CONTENDERS // 2)
    ]
    outcomes = [racer.communicate(timeout=120)[0].strip().split(" ") for racer in racers]
    held = sorted((float(o[1]), float(o[2])) for o in outcomes if o[0] == "held")
    assert held and all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(held)), outcomes
    assert len(held) < CONTENDERS  # they did meet: someone was refused while another held it


def test_a_drill_history_both_checkouts_append_to(checkouts):
    first, second, env = checkouts
    for number, clone in enumerate((first, second)):
        report = {
            "id": f"2026120{number}-000000-{number}",
            "env": ENV,
            "ok": True,
            "failures": [],
            "started": f"2026-12-0{number + 1}T00:00:00Z",
            "rto_seconds": 10 + number,
            "rpo_seconds": 1,
        }
        record = [sys.executable, "-c", RECORD_DRILL, ENV, json.dumps(report)]
        assert run_in(clone, env, record).wait(timeout=60) == 0
    for clone in (first, second):
        proc = run_in(clone, env, [sys.executable, "-m", "invoke", "drills", "--json"])
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert [r["rto_seconds"] for r in json.loads(out) if r["env"] == ENV] == [10, 11]


def test_moto_honours_if_none_match_so_the_lock_is_a_real_conditional_write(s3, tmp_path):
    store = S3Store(s3.client(), s3.bucket, prefix=f"probe-{os.getpid()}/")
    with (
        store.lock("lock", ENV, {"what": "first"}),
        pytest.raises(KilnError, match=r"locked by first"),
        store.lock("lock", ENV, {"what": "second"}),
    ):
        pass
    assert store.keys("") == []  # released
    no_bucket = Settings(project_root=tmp_path, state_dir=tmp_path)
    assert isinstance(for_environment(no_bucket, "local"), FolderStore)


def test_a_store_gone_while_the_lock_is_held_is_one_clear_error(s3):
    """Not botocore's traceback: the lock's object is named, to delete once the store answers;
    and when the locked work failed first, its error is the one raised."""
    repository = S3Repository(bucket=s3.bucket, endpoint=s3.endpoint, uri_style="path")
    through_tls = s3_client(S3Access(repository, "kilntest", "kilntest"), verify=str(s3.ca))
    store = S3Store(through_tls, s3.bucket, prefix=f"gone-{os.getpid()}/")

    def held_while_the_store_stops(failure: Exception | None) -> None:
        try:
            with store.lock("lock", ENV, {"what": "work"}):
                s3.stop()
                if failure is not None:
                    raise failure
        finally:
            s3.start()
            assert store.keys("") == ["lock"]  # left for the user, as the message says
            store.delete("lock")

    gone = r"the lock was not released \(.*\); delete s3://.*/gone-\d+/lock once the store answers"
    with pytest.raises(OperationFailed, match=gone):
        held_while_the_store_stops(None)
    with pytest.raises(KilnError, match=r"^the work failed$"):
        held_while_the_store_stops(KilnError("the work failed"))
