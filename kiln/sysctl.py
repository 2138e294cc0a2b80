"""sysctl.d files as data: what both container runs and VM checks read from an image."""

from __future__ import annotations


def parse_sysctl_conf(text: str) -> dict[str, str]:
    """key -> value of one sysctl.d file; a/b/c keys read as a.b.c, as sysctl itself does."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith(("#", ";")):
            values[key.strip().replace("/", ".")] = " ".join(value.split())
    return values
