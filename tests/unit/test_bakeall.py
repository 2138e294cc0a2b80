"""`invoke bake --all`'s order and summary; the bakes themselves are Baker's (integration tests)."""

from __future__ import annotations

import pytest

from kiln.bakeall import RoleRow, bake_roles, parents_first, require_none_rejected
from kiln.errors import KilnError, OperationFailed
from kiln.roles import RoleCatalog


def test_every_role_comes_after_its_parent_and_once(settings):
    catalog = RoleCatalog(settings)
    order = parents_first(catalog, ["web", "lb", "db"])
    assert order == ["base", "web", "lb", "db"]
    assert parents_first(catalog, catalog.names()) == ["base", "db", "lb", "web", "worker"]


def test_a_rejected_image_fails_after_the_summary_naming_it():
    rows = [RoleRow("base", "a1", "up to date", 0.4, "verified", "k/base:a1"),
            RoleRow("web", "b2", "baked", 61.0, "rejected", "k/web:b2")]  # fmt: skip
    assert rows[1].as_row()["seconds"] == "61.0"
    with pytest.raises(OperationFailed, match=r"rejected by verification: web b2;"):
        require_none_rejected(rows)
    require_none_rejected(rows[:1])


@pytest.mark.parametrize("extra", [{"role": "web"}, {"target": "qemu"}])
def test_all_refuses_a_role_or_another_target_before_baking_anything(settings, extra):
    with pytest.raises(KilnError, match="--all bakes every role on the docker target"):
        bake_roles(settings, **extra)
