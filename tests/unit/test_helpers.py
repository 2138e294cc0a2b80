"""The small shared helpers: atomic writes, bounded polling, ids and timestamps."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from kiln.errors import OperationFailed
from kiln.files import write_atomic
from kiln.polling import max_looks, poll, wait_for_service
from kiln.stamps import new_id, utc_iso


def test_write_atomic_replaces_the_file_whole_and_leaves_nothing_else(tmp_path: Path):
    path = tmp_path / "sub" / "haproxy.cfg"
    write_atomic(path, "one\n")
    write_atomic(path, b"two\n", mode=0o600)
    assert path.read_text() == "two\n" and [p.name for p in path.parent.iterdir()] == ["haproxy.cfg"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path: Path):
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_poll_returns_the_first_truthy_answer():
    answers = iter([None, "", "ready"])
    assert poll(lambda: next(answers), timeout=5, interval=0, what="x") == "ready"


def test_poll_gives_up_with_one_line_naming_what_and_the_last_error():
    looks = []

    def check():
        looks.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(OperationFailed, match=r"^timed out after 0.05 s waiting for db \(hint\): refused$"):
        poll(check, timeout=0.05, interval=0.01, what="db", tolerate=(OSError,), hint=" (hint)")
    assert 1 <= len(looks) <= max_looks(0.05, 0.01)


def test_poll_lets_unexpected_errors_through():
    with pytest.raises(KeyError):
        poll(lambda: {}["x"], timeout=1, interval=0, what="x", tolerate=(OSError,))


def test_ids_and_timestamps_are_utc_and_sortable():
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", new_id())
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", new_id(6))
    assert new_id() != new_id()
    assert utc_iso(0) == "1970-01-01T00:00:00Z"


def test_a_starting_service_may_fail_in_any_way_until_it_answers():
    answers = iter([ConnectionResetError("reset"), ValueError("half a reply"), "up"])

    def check():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for_service(check, "web", timeout=5, interval=0) == "up"
