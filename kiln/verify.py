"""Verification: a role's testinfra suites run against a throwaway container of its image.

The suites are the `tests:` files of every role in the chain, root first, so base's hardening
suite checks every role. The container runs the image's own init (its services start as on an
instance) with no network and CAP_NET_ADMIN, so its firewall loads in its own namespace; it is
removed whatever happens. The outcome is the image's `kiln.status` label: `verified` or
`rejected`, with JUnit XML kept in the state directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from kiln import __version__, console
from kiln.container_options import run_options
from kiln.errors import KilnError, OperationFailed
from kiln.images import DockerImageStore, ImageRecord, docker_client, require_image
from kiln.registry import for_target
from kiln.roles import Role, RoleCatalog
from kiln.settings import Settings

# Longest a suite run may take before the verification counts as failed.
SUITE_TIMEOUT = 600
# Which suites an image passed (their digest): a rerun of the same suites can skip it.
SUITES_LABEL = "kiln.verified-suites"



@dataclass(frozen=True)
class Failure:
    control: str  # the test's name, e.g. test_sshd_option[permitrootlogin]
    suite: str  # the file it comes from, e.g. images/base/tests/test_hardening.py
    message: str


@dataclass
class VerifyResult:
    role: str
    version: str
    image: str
    status: str = "rejected"
    seconds: float = 0.0
    tests: int = 0
    failures: list[Failure] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # rejections that are not test failures
    junit: Path | None = None
    reused: bool = False  # already verified by the same suites: nothing ran

    def summary(self) -> str:
        if self.reused:
            return f"{self.role} {self.version} verified: already verified by these suites, nothing ran"
        if self.status == "verified":
            return f"{self.role} {self.version} verified: {self.tests} checks passed in {self.seconds:.1f} s"
        problems = [
            f"{self.role}: control {f.control} ({f.suite}) failed: {f.message}" for f in self.failures
        ]
        return "\n".join(
            [f"{self.role} {self.version} rejected ({self.seconds:.1f} s, JUnit: {self.junit})"]
            + [f"  {line}" for line in self.reasons + problems]
        )


def container_name(prefix: str, role: str) -> str:
    return f"{prefix}-verify-{role}-{uuid.uuid4().hex[:8]}"


def control_name(test_name: str) -> str:
    """A test's name without the host testinfra puts in its id: `test_x[docker://kiln-verify-
    web-1a2b3c4d-permitrootlogin]` (any name prefix) is control `test_x[permitrootlogin]`."""
    name = re.sub(r"(docker://[a-z0-9-]+?-verify-[a-z0-9-]+?-[0-9a-f]{8}|ssh://vm)-?", "", test_name)
    return name.removesuffix("[]")


def suite_files(chain: list[Role]) -> list[Path]:
    """The tests of every role in the chain, root first: a child must pass its parent's suites."""
    return [role.folder / "tests" / test for role in chain for test in role.spec.tests]


def suites_digest(suites: list[Path], runtime: str) -> str:
    """What a verification ran: Kiln's version, the runtime and every file of the suites' folders
    (their helpers and conftest too), by name and bytes."""
    digest = hashlib.sha256(f"{__version__}\0{runtime}\0".encode())
    for folder in dict.fromkeys(path.parent for path in suites):
        for path in sorted(folder.glob("*.py")):
            data = path.read_bytes()
            digest.update(f"{folder.parent.name}/{path.name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:16]


def security_pending_reason(role: Role, record: ImageRecord) -> str | None:
    """Why the image is too stale to ship, or None: the role's max_security_pending bound."""
    allowed = role.spec.max_security_pending
    if allowed is None:
        return None
    raw = record.labels.get("kiln.security-pending", "")
    if not raw.isdigit():
        return (
            f"security-pending was not recorded at bake (label kiln.security-pending={raw!r}) "
            f"but {role.display(role.role_file)} sets max_security_pending: {allowed}; rebake it"
        )
    pending = int(raw)
    if pending <= allowed:
        return None
    return (
        f"{pending} security updates were pending at bake, more than max_security_pending: "
        f"{allowed} ({role.display(role.role_file)}); refresh the lock with "
        f"`invoke lock {role.name} --update` and rebake"
    )


def parse_junit(path: Path) -> tuple[int, list[Failure]]:
    """(number of tests, failures and errors) from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests, failures = 0, []
    for suite in suites:
        for case in suite.iter("testcase"):
            tests += 1
            for kind in ("failure", "error"):
                problem = case.find(kind)
                if problem is not None:
                    failures.append(_failure(case, problem))
            if case.find("skipped") is not None:
                failures.append(
                    Failure(
                        control_name(case.get("name", "?")),
                        _suite_of(case),
                        "skipped: " + (case.find("skipped").get("message") or "no reason given"),
                    )
                )
    return tests, failures


def _suite_of(case: ET.Element) -> str:
    return case.get("file") or case.get("classname", "?").replace(".", "/") + ".py"


def _failure(case: ET.Element, problem: ET.Element) -> Failure:
    # pytest puts the assertion line in `message`; the first line of it names what was wrong.
    text = (problem.get("message") or problem.text or "").strip()
    first = text.splitlines()[0] if text else "no message"
    return Failure(control_name(case.get("name", "?")), _suite_of(case), first[:300])


class Verifier:
    """Docker: the suites run in a throwaway container of the image (testinfra's docker backend)."""

    runtime = "container"

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None):
        self.settings = settings
        self.catalog = RoleCatalog(settings)
        self.client = client or docker_client()
        self.store = DockerImageStore(self.client, settings)

    def suites(self, chain: list[Role]) -> list[Path]:
        return suite_files(chain)

    def verify(self, role_name: str, version: str | None = None, reuse: bool = False) -> VerifyResult:
        """Run the suites and label the image verified or rejected. With `reuse`, an image these
        very suites already verified is left as it is (a CI rerun of an unchanged image)."""
        chain = self.catalog.chain(role_name)
        role = chain[-1]
        record = require_image(self.store, role_name, version)
        suites = self.suites(chain)
        if not suites:
            raise KilnError(
                f"{role.display(role.role_file)}: field 'tests': no testinfra suite for {role_name} "
                "or its parents; add one under images/<role>/tests/"
            )
        result = VerifyResult(role.name, record.version, record.image)
        started = time.monotonic()
        reason = security_pending_reason(role, record)
        digest = suites_digest(suites, self.runtime)
        already = record.status in ("verified", "promoted") and record.labels.get(SUITES_LABEL) == digest
        if reuse and already and not reason:
            result.status, result.reused = "verified", True
            return result
        if reason:
            result.reasons.append(reason)
        result.junit = self._junit_path(role.name, record.version)
        with console.progress(f"verifying {record.image}") as step, self.host(record, role, step) as target:
            step(f"running {len(suites)} suites")
            hosts, env = target
            result.reasons.extend(self._run_suites(suites, hosts, env, role, record, result.junit))
        if result.junit.exists():
            result.tests, result.failures = parse_junit(result.junit)
        if result.tests == 0 and not result.reasons:
            result.reasons.append("no test ran (see the JUnit file)")
        result.status = "rejected" if result.failures or result.reasons else "verified"
        result.seconds = time.monotonic() - started
        self.store.update_labels(record, {"kiln.status": result.status, SUITES_LABEL: digest})
        return result

    @contextlib.contextmanager
    def host(self, record: ImageRecord, role: Role, step):
        """Yield (testinfra host options, extra environment) of a running instance of the image."""
        name = container_name(self.settings.name_prefix, role.name)
        try:
            step(f"starting {name}")
            self._start(record, name)
            yield [f"--hosts=docker://{name}"], {}
        finally:
            self._remove(name)

    def _start(self, record: ImageRecord, name: str) -> None:
        try:
            self._run_container(record, name)
        except docker.errors.APIError as exc:
            # The engine refused the container: nothing was learnt about the image, status unchanged.
            raise OperationFailed(
                f"could not start {name} from {record.image}: {exc.explanation or exc}"
            ) from exc

    def _run_container(self, record: ImageRecord, name: str) -> None:
        self.client.containers.run(
            record.id,
            detach=True,
            name=name,
            network_mode="none",
            labels={"kiln.verify": record.image},
            **run_options(self.client, record.id, self.settings.name_prefix),
        )

    def _run_suites(
        self,
        suites: list[Path],
        hosts: list[str],
        host_env: dict[str, str],
        role: Role,
        record: ImageRecord,
        junit: Path,
    ) -> list[str]:
        """Run pytest with testinfra against the host; return reasons beyond failed tests."""
        env = {
            **host_env,
            "KILN_VERIFY_RUNTIME": self.runtime,
            "KILN_VERIFY_ROLE": role.name,
            "KILN_VERIFY_VERSION": record.version,
            "KILN_VERIFY_PORTS": " ".join(str(p) for p in role.spec.ports),
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            *map(str, suites),
            *hosts,
            f"--junitxml={junit}",
            "--rootdir",
            str(self.settings.project_root),
            "-p",
            "no:cacheprovider",
            "-q",
            "--tb=line",
            "-o",
            "junit_family=xunit1",
        ]
        try:
            proc = subprocess.run(
                command,
                cwd=self.settings.project_root,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=SUITE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return [f"the suites took longer than {SUITE_TIMEOUT} s and were stopped"]
        (junit.with_suffix(".log")).write_text(proc.stdout + proc.stderr)
        # pytest: 0 all passed, 1 some failed (named in the JUnit file); anything else is an error.
        if proc.returncode not in (0, 1):
            tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-2:])
            return [f"pytest exited {proc.returncode}: {tail} (log: {junit.with_suffix('.log')})"]
        return []

    def _junit_path(self, role: str, version: str) -> Path:
        folder = self.settings.state_dir / "verify" / role
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{version}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.xml"

    def _remove(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)


VERIFIERS = {"docker": "kiln.verify:Verifier", "qemu": "kiln.vmverify:VmVerifier"}


def verifier_for(settings: Settings, target: str = "docker") -> Verifier:
    return for_target(VERIFIERS, target, "verifies")(settings)


def verify_chain(
    settings: Settings, roles: list[tuple[str, str]], target: str = "docker"
) -> list[VerifyResult]:
    """Verify each (role, version) whose image is not verified yet, root first."""
    verifier = verifier_for(settings, target)
    results = []
    for role, version in roles:
        record = verifier.store.find(role, version)
        if record is not None and record.status in ("verified", "promoted"):
            continue
        results.append(verifier.verify(role, version))
    return results


def report(results: list[VerifyResult]) -> None:
    """Say each outcome; a rejection anywhere fails the command (exit 1) naming its controls."""
    for result in results:
        console.say(result.summary())
    rejected = [r for r in results if r.status == "rejected"]
    if rejected:
        first = rejected[0]
        what = f"control {first.failures[0].control} failed" if first.failures else first.reasons[0]
        raise OperationFailed(
            f"{', '.join(f'{r.role} {r.version}' for r in rejected)} rejected: {first.role}: {what}"
            f" (JUnit: {first.junit})"
        )
