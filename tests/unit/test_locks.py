import pytest

from kiln import locks
from kiln.errors import KilnError
from kiln.roles import RoleCatalog

SIMULATION = """\
NOTE: This is only a simulation!
Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst nginx-common (1.22.1-9+deb12u1 Debian:12.11/stable [all])
Inst nginx (1.22.1-9+deb12u1 Debian:12.11/stable [amd64])
Conf nginx (1.22.1-9+deb12u1 Debian:12.11/stable [amd64])
"""


def parse_simulation(text):
    matches = (locks.INST_LINE.match(line) for line in text.splitlines())
    return {m["name"]: (m["version"], m["suites"]) for m in matches if m}


def test_simulation_lines_give_versions_and_suites():
    parsed = parse_simulation(SIMULATION)
    assert parsed["libssl3"][0] == "3.0.17-1~deb12u2"
    assert "Security" in parsed["libssl3"][1]
    assert parsed["nginx"][0] == "1.22.1-9+deb12u1"
    assert set(parsed) == {"libssl3", "nginx-common", "nginx"}


def test_lock_round_trips_through_its_file(settings):
    role = RoleCatalog(settings).get("web")
    lock = locks.Lock(tuple(role.spec.packages), {"nginx": "1.2", "zlib1g": "1:1.2.13"})
    locks.write_lock(role, lock)
    assert locks.read_lock(role) == lock
    assert "invoke lock web --update" in role.lock_file.read_text()
    assert locks.lock_is_current(role, lock)
    assert not locks.lock_is_current(role, locks.Lock(("nginx", "other"), lock.packages))


def test_malformed_lock_line_names_file_line_and_fix(settings):
    role = RoleCatalog(settings).get("web")
    role.lock_file.write_text("# requested: nginx\nnginx 1.2\n")
    with pytest.raises(KilnError, match=r"images/web/packages.lock: line 2: expected name=version.*--update"):
        locks.read_lock(role)


def test_diff_marks_security_upgrades():
    old = locks.Lock(("a",), {"a": "1", "gone": "1", "libssl3": "3.0.15"})
    new = locks.Resolution(
        locks.Lock(("a",), {"a": "2", "new": "1", "libssl3": "3.0.17"}), frozenset({"libssl3"})
    )
    diff = locks.diff(old, new)
    assert diff.render().splitlines() == [
        "+ new 1",
        "- gone 1",
        "~ a 1 -> 2",
        "~ libssl3 3.0.15 -> 3.0.17  [security]",
    ]
    assert locks.diff(new.lock, new).render() == "no change"


def test_lock_digest_follows_content():
    a = locks.Lock(("x",), {"x": "1"})
    assert a.digest() == locks.Lock(("x",), {"x": "1"}).digest()
    assert a.digest() != locks.Lock(("x",), {"x": "2"}).digest()
