"""What a user may type for an image: what `invoke images` and `invoke status` print.

A version (`3f2a9c0d1e4b`), a unique prefix of one (`3f2a9c`), or a full image reference
(`kiln/web:3f2a9c0d1e4b`, any repository prefix). Every task that takes a version goes through
`resolve`, so they all accept the same forms.
"""

from __future__ import annotations

from collections.abc import Iterable

from kiln.errors import KilnError

SHORTEST_PREFIX = 4  # shorter prefixes match too much to be meant


def resolve(role: str, given: str | None, known: Iterable[str]) -> str | None:
    """The version `given` names among the role's `known` versions; None stays None (the newest).
    A version nothing matches is returned as it is: the caller says the image is missing."""
    if not given:
        return None
    repository, colon, tag = given.rpartition(":")
    if colon and "/" in repository:
        named = repository.rpartition("/")[2]
        if named != role:
            raise KilnError(f"'{given}' is an image of {named}, not of {role}")
        given = tag
    known = list(dict.fromkeys(known))
    if given in known or len(given) < SHORTEST_PREFIX:
        return given
    matches = [version for version in known if version.startswith(given)]
    if len(matches) > 1:
        raise KilnError(
            f"'{given}' is the start of {len(matches)} {role} versions ({', '.join(matches[:4])}): "
            "give more of it (`invoke images` lists them)"
        )
    return matches[0] if matches else given
