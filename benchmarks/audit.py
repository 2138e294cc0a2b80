"""Hardening figures from one run: the stock bootstrap image vs. each role's baked image.

For each: Lynis hardening index and warnings, ANSSI BP-028 intermediary score (OpenSCAP, SSG
Debian 12) and failed rules, and `invoke verify` time; then all roles verified in parallel.
Images must be baked first (`invoke bake <role> --no-verify` for each, or a normal bake). Run
with the same KILN_* settings as the bake, e.g.

    KILN_IMAGE_REPO=kiln .venv/bin/python benchmarks/audit.py [--roles base,web] [--skip-audit]

Goals (issue 3): Lynis >= 85, ANSSI intermediary >= 95, verify < 15 s per role.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from kiln.audit import Auditor
from kiln.bootstrap import bootstrap_ref
from kiln.errors import KilnError
from kiln.images import docker_client
from kiln.roles import RoleCatalog
from kiln.settings import Settings
from kiln.verify import Verifier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", help="comma-separated roles (default: every role)")
    parser.add_argument("--skip-audit", action="store_true", help="only time verification")
    args = parser.parse_args()
    settings = Settings.from_env()
    roles = args.roles.split(",") if args.roles else RoleCatalog(settings).names()
    client = docker_client()
    rows: list[dict[str, str]] = []

    if not args.skip_audit:
        auditor = Auditor(settings, client)
        stock = bootstrap_ref(settings)
        started = time.monotonic()
        lynis, scap = auditor.scan(stock, "stock", settings.state_dir / "audit" / "stock")
        rows.append(row(f"stock ({stock})", lynis, scap, time.monotonic() - started, None))

    verify_seconds: dict[str, float] = {}
    for role in roles:
        result = Verifier(settings, client).verify(role)
        verify_seconds[role] = result.seconds
        print(f"verify {role}: {result.status} in {result.seconds:.1f} s", file=sys.stderr)
        if args.skip_audit:
            rows.append(row(role, None, None, None, result.seconds, result.status))
            continue
        audit = Auditor(settings, client).audit(role)
        rows.append(row(role, audit.lynis, audit.scap, audit.seconds, result.seconds, result.status))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        statuses = list(pool.map(lambda r: Verifier(settings, docker_client()).verify(r).status, roles))
    parallel = time.monotonic() - started

    columns = ["image", "lynis", "warnings", "anssi-bp28-int", "scap-failed", "audit-s", "verify-s", "status"]
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r.get(c, "").ljust(widths[c]) for c in columns))
    print(
        f"\nverify, {len(roles)} roles in parallel: {parallel:.1f} s "
        f"(sequential sum {sum(verify_seconds.values()):.1f} s; goal per role < 15 s); "
        f"statuses: {', '.join(f'{r}={s}' for r, s in zip(roles, statuses, strict=True))}"
    )
    print("goals: Lynis >= 85, ANSSI BP-028 intermediary >= 95 with no failed high-severity rule")
    return 0


def row(image, lynis, scap, audit_seconds, verify_seconds, status="") -> dict[str, str]:
    def fmt(value, pattern):
        return "" if value is None else format(value, pattern)

    return {
        "image": image,
        "lynis": fmt(lynis and lynis.hardening_index, "d"),
        "warnings": fmt(lynis and len(lynis.warnings), "d"),
        "anssi-bp28-int": fmt(scap and scap.score, ".1f"),
        "scap-failed": "" if scap is None else f"{len(scap.failed)} ({len(scap.failed_high)} high)",
        "audit-s": fmt(audit_seconds, ".0f"),
        "verify-s": fmt(verify_seconds, ".1f"),
        "status": status,
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KilnError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
