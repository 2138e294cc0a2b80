"""Every task takes a version as `invoke images` and `invoke status` print it (kiln/versions.py)."""

from __future__ import annotations

import pytest

from kiln.errors import KilnError
from kiln.versions import resolve

KNOWN = ["3f2a9c0d1e4b", "3f2a11111111", "9bc0d1e2f3a4"]


@pytest.mark.parametrize(
    ("given", "version"),
    [
        ("3f2a9c0d1e4b", "3f2a9c0d1e4b"),  # the version
        ("3f2a9c", "3f2a9c0d1e4b"),  # a unique prefix
        ("kiln/web:9bc0d1e2f3a4", "9bc0d1e2f3a4"),  # the reference `invoke images` prints
        ("kilntest1/web:9bc0", "9bc0d1e2f3a4"),  # a reference with a short version
        ("ffff00001111", "ffff00001111"),  # unknown: the caller says it is missing
        (None, None),  # the newest
    ],
)
def test_a_version_a_prefix_or_a_reference(given, version):
    assert resolve("web", given, KNOWN) == version


def test_an_ambiguous_prefix_or_another_roles_image_is_one_clear_line():
    ambiguous = r"'3f2a' is the start of 2 web versions \(3f2a9c0d1e4b, 3f2a11111111\)"
    with pytest.raises(KilnError, match=ambiguous):
        resolve("web", "3f2a", KNOWN)
    with pytest.raises(KilnError, match="'kiln/db:9bc0d1e2f3a4' is an image of db, not of web"):
        resolve("web", "kiln/db:9bc0d1e2f3a4", KNOWN)
