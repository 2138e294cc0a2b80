"""Which old images `invoke prune` removes: a pure plan over image records."""

import pytest

from kiln.images import ImageRecord, plan_prune


def record(role, version, built, status="verified", parent=""):
    labels = {"kiln.built": built, "kiln.bake-id": f"b-{version}", "kiln.parent-id": parent}
    return ImageRecord(role, version, status, f"kiln/{role}:{version}", f"sha256:{version}", labels)


def plan(records, in_use=frozenset(), keep=1):
    return {d.record.version: (d.keep, d.reason) for d in plan_prune(records, set(in_use), keep)}


def test_keeps_the_newest_per_role_and_removes_the_rest():
    decided = plan([record("base", "b1", "1"), record("base", "b2", "2"), record("lb", "l1", "1")], keep=1)
    assert decided == {
        "b2": (True, "among the 1 newest of base"),
        "b1": (False, "older than the 1 newest of base"),
        "l1": (True, "among the 1 newest of lb"),
    }


def test_promoted_and_running_images_stay_whatever_their_age():
    decided = plan(
        [record("web", "w1", "1", "promoted"), record("web", "w2", "2"), record("web", "w3", "3")],
        in_use={("web", "w2")},
        keep=1,
    )
    assert decided["w1"] == (True, "promoted")
    assert decided["w2"] == (True, "used by a container")
    assert decided["w3"][0]


def test_the_parents_of_kept_images_stay_down_the_whole_chain():
    records = [
        record("base", "b1", "1"),
        record("mid", "m1", "2", parent="base@b-b1"),
        record("base", "b2", "3"),
        record("mid", "m2", "4", parent="base@b-b2"),
        record("web", "w1", "5", "promoted", parent="mid@b-m1"),
    ]
    decided = plan(records, keep=1)
    assert decided["m1"] == (True, "parent of kiln/web:w1")
    assert decided["b1"] == (True, "parent of kiln/mid:m1")
    assert all(keep for keep, _ in decided.values())


@pytest.mark.parametrize("keep", [1, 2, 5])
def test_never_removes_more_than_the_surplus(keep):
    records = [record("web", f"w{i}", str(i)) for i in range(4)]
    removed = [v for v, (kept, _) in plan(records, keep=keep).items() if not kept]
    assert len(removed) == max(0, 4 - keep)
    assert all(int(v[1:]) < 4 - keep for v in removed)  # only the oldest go
