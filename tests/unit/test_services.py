"""Services declared once in role.yml: refused when one runtime could not run them, rendered as
systemd units (into a scratch root, by the script the image runs; checked by `systemd-analyze
verify`) and run by kiln-init's supervisor (real processes, no Docker)."""

import base64
import importlib.machinery
import importlib.util
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import services
from kiln.errors import KilnError
from kiln.roles import RoleCatalog

REPO = Path(__file__).resolve().parents[2]
IMAGE_LIB = REPO / "images/base/files/usr/local/lib/kiln"
# No bytecode next to the image's files: it would be copied into the image and change its version.
sys.dont_write_bytecode = True
sys.path.insert(0, str(IMAGE_LIB))
import kiln_services  # noqa: E402  (the module baked into every image)

PACKAGED = (
    "rsyslog.service",
    "prometheus-node-exporter.service",
    "nginx.service",
    "postgresql@.service",
    "haproxy.service",
)


def write_role(project: Path, body: str) -> None:
    (project / "images" / "extra").mkdir(parents=True, exist_ok=True)
    (project / "images" / "extra" / "role.yml").write_text(
        "name: extra\ndescription: d\nparent: base\nservices:\n" + body
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  - {name: app, unit: app.service}\n",
            r"field 'services\[0\].command': unit app.service alone runs only under systemd; add",
        ),
        ("  - {name: app}\n", r"field 'services\[0\].command': required"),
        (
            "  - {name: app, command: /bin/app, restart: on-watchdog}\n",
            r"field 'services\[0\].restart': 'on-watchdog': only systemd knows it",
        ),
        (
            "  - {name: app, command: app --serve}\n",
            r"field 'services\[0\].command': start with the program's absolute path",
        ),
        (
            "  - {name: app, command: '/bin/app a\\b'}\n",
            r"field 'services\[0\].command': no backslashes",
        ),
        (
            "  - {name: app, command: /bin/app, oneshot: true, restart: always}\n",
            r"field 'services\[0\].restart': a oneshot step runs once",
        ),
        (
            "  - {name: app, command: /bin/app, readiness: {port: 80, command: /bin/true}}\n",
            r"field 'services\[0\].readiness': give either `port`",
        ),
        (
            "  - {name: app, command: /bin/app, stop_signal: KILL}\n",
            r"field 'services\[0\].stop_signal': 'KILL'",
        ),
        (
            "  - {name: app, command: /bin/app, readiness: {port: 8000, timeout: 0}}\n",
            r"field 'services\[0\].readiness.timeout': 0",
        ),
        (
            "  - {name: app, command: /bin/app}\n  - {name: app, command: /bin/other}\n",
            r"field 'services\[1\].name': 'app' is declared twice",
        ),
        ("  - {name: app, command: /bin/app, restat: no}\n", r"field 'services\[0\].restat': unknown"),
    ],
)
def test_declarations_one_runtime_could_not_run_are_refused(project, settings, body, message):
    write_role(project, body)
    with pytest.raises(KilnError, match=r"^images/extra/role.yml: " + message):
        RoleCatalog(settings).get("extra")


def test_a_child_cannot_reuse_a_parent_service_name(project, settings):
    write_role(project, "  - {name: firewall, command: /bin/app}\n")
    with pytest.raises(KilnError, match=r"services\[0\].name': 'firewall' is already a service of base"):
        RoleCatalog(settings).chain("extra")


def install_chain(settings, role: str, root: Path) -> dict[str, list[str]]:
    """What services.sh does in each bake of the chain, into a scratch root."""
    for unit in PACKAGED:
        (root / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
        (root / "lib/systemd/system" / unit).write_text("[Service]\nExecStart=/bin/true\n")
    installed = {}
    for member in RoleCatalog(settings).chain(role):
        declared = json.loads(base64.b64decode(services.payload(member.spec.services)))
        installed[member.name] = kiln_services.install(member.name, declared, root)
    return installed


def unit_settings(path: Path) -> dict[str, str]:
    lines = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in lines}


def test_web_units_are_rendered_enabled_and_ordered(settings, tmp_path):
    installed = install_chain(settings, "web", tmp_path)
    assert installed == {
        "base": [
            "kiln-ssh-hostkeys.service",
            "kiln-firewall.service",
            "prometheus-node-exporter.service",
            "rsyslog.service",
        ],
        "web": ["kiln-web-app.service", "nginx.service"],
    }
    units = tmp_path / "etc/systemd/system"
    app = unit_settings(units / "kiln-web-app.service")
    assert app["ExecStart"].startswith("/usr/bin/gunicorn --bind 127.0.0.1:8000")
    assert (app["User"], app["WorkingDirectory"]) == ("kiln-web", "/opt/kiln-web")
    assert (app["Restart"], app["RestartSec"], app["TimeoutStopSec"]) == ("on-failure", "2", "10")
    assert (app["NoNewPrivileges"], app["ProtectSystem"]) == ("yes", "full")
    assert app["After"] == "network.target rsyslog.service"  # after base's last service
    assert app["ExecStartPost"] == "/usr/local/sbin/kiln-services ready web-app"
    assert app["WantedBy"] == "multi-user.target"
    # A packaged unit keeps its own ExecStart; Kiln adds a drop-in with the declared policy.
    nginx = unit_settings(units / "nginx.service.d/kiln.conf")
    assert "ExecStart" not in nginx and nginx["After"] == "network.target kiln-web-app.service"
    assert nginx["Restart"] == "on-failure"
    wants = units / "multi-user.target.wants"
    assert (wants / "kiln-web-app.service").readlink() == Path("/etc/systemd/system/kiln-web-app.service")
    assert (wants / "nginx.service").readlink() == Path("/lib/systemd/system/nginx.service")
    manifests = sorted(p.name for p in (tmp_path / "etc/kiln/services").iterdir())
    assert manifests == ["10-base.json", "20-web.json"]
    assert [s["name"] for s in kiln_services.load_all(tmp_path)][-2:] == ["web-app", "nginx"]


def test_db_units_carry_condition_and_template_instance(settings, tmp_path):
    install_chain(settings, "db", tmp_path)
    units = tmp_path / "etc/systemd/system"
    postgres = unit_settings(units / "postgresql@15-main.service.d/kiln.conf")
    assert postgres["ExecCondition"] == '/bin/sh -c "! grep -qsx KILN_DB_HOLD=1 /etc/kiln/db.env"'
    assert postgres["TimeoutStopSec"] == "60"
    wanted = units / "multi-user.target.wants/postgresql@15-main.service"
    assert wanted.readlink() == Path("/lib/systemd/system/postgresql@.service")
    bootstrap = unit_settings(units / "kiln-db-bootstrap.service")
    assert (bootstrap["Type"], bootstrap["RemainAfterExit"]) == ("oneshot", "yes")
    assert "Restart" not in bootstrap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze comes with systemd")
@pytest.mark.parametrize("role", ["web", "db", "lb", "worker"])
def test_systemd_analyze_verifies_every_unit_and_drop_in(settings, tmp_path, role):
    """systemd's own checker, on a scratch root holding this host's systemd units, the rendered
    units and stand-in executables (their programs are the image's, not this host's)."""
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    installed = [unit for units in install_chain(settings, role, tmp_path).values() for unit in units]
    commands = [
        s[key] for s in kiln_services.load_all(tmp_path) for key in ("command", "condition") if s[key]
    ]
    for program in {shlex.split(c)[0] for c in commands} | {"/usr/local/sbin/kiln-services", "/bin/true"}:
        (tmp_path / program.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / program.lstrip("/")).write_text("#!/bin/sh\n")
        (tmp_path / program.lstrip("/")).chmod(0o755)
    for unit in installed:
        # A rendered unit is checked as a file; a packaged one (a stand-in here) with Kiln's drop-in.
        name = f"/etc/systemd/system/{unit}" if unit.startswith("kiln-") else unit
        proc = subprocess.run(
            ["systemd-analyze", "verify", f"--root={tmp_path}", name], capture_output=True, text=True
        )
        assert (proc.returncode, proc.stderr) == (0, ""), f"{unit}: {proc.stderr}"


def test_systemd_reads_commands_as_kiln_init_does(tmp_path):
    service = {**declared("x", "/bin/echo '100%' $HOME"), "environment": {"GREETING": "a $b"}}
    rendered = unit_settings(write_unit(tmp_path, service))
    assert rendered["ExecStart"] == "/bin/echo '100%%' $$HOME"
    assert rendered["Environment"] == '"GREETING=a $$b"'


def test_a_missing_packaged_unit_fails_the_bake(tmp_path):
    nginx = {**declared("nginx", "/usr/sbin/nginx"), "unit": "nginx.service"}
    with pytest.raises(SystemExit, match=r"no packaged unit nginx\.service in the image"):
        kiln_services.install("web", [nginx], tmp_path)


def declared(name: str, command: str, **overrides) -> dict:
    service = services.Service(name=name, command=command, **overrides)
    return json.loads(base64.b64decode(services.payload([service])))[0]


def write_unit(root: Path, service: dict) -> Path:
    kiln_services.install("t", [service], root)
    return root / "etc/systemd/system" / f"kiln-{service['name']}.service"


# ---- kiln-init's supervisor, on real processes ---------------------------------------------------


@pytest.fixture
def kiln_init(monkeypatch):
    path = REPO / "images/base/files/usr/local/sbin/kiln-init"
    loader = importlib.machinery.SourceFileLoader("kiln_init", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("kiln_init", loader))
    loader.exec_module(module)
    monkeypatch.setattr(module.ks, "RESTART_SEC", 0.1)
    return module


def run_until(supervised, done, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        supervised.check()
        time.sleep(0.05)
    return done()


def test_a_failing_service_is_restarted_then_given_up_like_systemd(kiln_init, tmp_path):
    count = tmp_path / "count"
    supervised = kiln_init.Supervised(declared("flaky", f"/bin/sh -c 'echo x >> {count}; exit 3'"))
    supervised.start()
    assert run_until(supervised, lambda: supervised.process is None)
    assert len(count.read_text().splitlines()) == kiln_services.START_LIMIT_BURST


def test_a_clean_exit_is_not_restarted_on_failure_policy(kiln_init, tmp_path):
    count = tmp_path / "count"
    supervised = kiln_init.Supervised(declared("once", f"/bin/sh -c 'echo x >> {count}'"))
    supervised.start()
    assert run_until(supervised, lambda: supervised.process is None)
    time.sleep(0.3)
    supervised.check()
    assert count.read_text() == "x\n"


def test_stop_sends_the_declared_signal_then_kills_after_the_timeout(kiln_init, tmp_path):
    said = tmp_path / "said"
    script = f"trap 'echo usr1 > {said}; exit 0' USR1; while :; do sleep 0.05; done"
    polite = kiln_init.Supervised(declared("polite", f'/bin/sh -c "{script}"', stop_signal="USR1"))
    polite.start()
    time.sleep(0.3)  # let the shell install its trap
    polite.stop()
    assert said.read_text() == "usr1\n" and polite.process.returncode == 0
    stubborn = kiln_init.Supervised(
        declared("stubborn", "/bin/sh -c \"trap '' TERM; while :; do sleep 0.05; done\"", stop_timeout=1)
    )
    stubborn.start()
    time.sleep(0.3)
    started = time.monotonic()
    stubborn.stop()
    assert stubborn.process.returncode == -9 and 0.9 < time.monotonic() - started < 5


def test_readiness_waits_for_the_http_path_and_gives_up_at_its_timeout(kiln_init, tmp_path):
    (tmp_path / "health").write_text("ok")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {tmp_path}"
    ready = services.Readiness(port=port, path="/health")
    web = kiln_init.Supervised(declared("web", server, readiness=ready))
    try:
        web.start()  # returns once /health answers
        assert kiln_services.is_ready(web.service)
    finally:
        web.stop()
    gone = {**web.service, "readiness": {**web.service["readiness"], "timeout": 1}}
    started = time.monotonic()
    assert kiln_services.wait_ready(gone) is False  # the server is stopped: nothing answers
    assert time.monotonic() - started < 3


def test_condition_skips_a_held_service(tmp_path):
    env = tmp_path / "db.env"
    env.write_text("KILN_DB_HOLD=1\n")
    held = declared("pg", "/bin/true", condition=f'/bin/sh -c "! grep -qsx KILN_DB_HOLD=1 {env}"')
    assert kiln_services.allowed_to_start(held) is False
    env.write_text("KILN_DB_NAME=kiln\n")
    assert kiln_services.allowed_to_start(held) is True


def test_environment_file_is_read_as_systemd_does(tmp_path):
    env = tmp_path / "app.env"
    env.write_text("# comment\nA=1\nB='two words'\n")
    service = declared("app", "/bin/true", environment_file=str(env), environment={"C": "3"})
    values = kiln_services.environment(service)
    assert (values["A"], values["B"], values["C"]) == ("1", "two words", "3")
