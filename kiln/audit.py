"""Audit: Lynis and OpenSCAP (SSG Debian 12, ANSSI BP-028 intermediary) score an image.

Both run inside a throwaway container of the image; the tools are installed in that container
only, never in the image. Reports are kept as files under <state>/audit/<role>/<version>/,
the figures go on the image as `kiln.lynis-*` / `kiln.scap-*` labels, and missing a threshold
(KILN_AUDIT_MIN_LYNIS, KILN_AUDIT_MIN_SCAP, or any failed high-severity rule) fails the audit.

Debian 12's own ssg-debian package only carries Debian 10/11 content; the Debian 13 (trixie)
package has ssg-debian12-ds.xml, which bookworm's oscap evaluates. It is fetched once with apt
options that point every apt path into a scratch folder, so the machine's apt state is untouched.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.errors

from kiln import console
from kiln.container_options import run_options
from kiln.containerfiles import put_file, read_file
from kiln.errors import OperationFailed, require_tools
from kiln.files import write_atomic
from kiln.images import DockerImageStore, docker_client, require_image
from kiln.registry import for_target
from kiln.settings import Settings

PROFILE = "xccdf_org.ssgproject.content_profile_anssi_bp28_intermediary"
DATASTREAM = "ssg-debian12-ds.xml"
SSG_SUITE = "trixie"
XCCDF = "{http://checklists.nist.gov/xccdf/1.2}"
# The audit layer's tools, from the image's own Debian mirror; Lynis needs ps and ss to look at
# processes and sockets (a stock minbase image has neither).
AUDIT_PACKAGES = ["lynis", "openscap-scanner", "procps", "iproute2"]
REPORT_FILES = (
    "/tmp/oscap-results.xml",
    "/tmp/oscap-report.html",
    "/var/log/lynis-report.dat",
    "/var/log/lynis.log",
)


@dataclass
class LynisFigures:
    hardening_index: int
    warnings: list[str]  # "ID: text"
    suggestions: int
    tests_performed: int


@dataclass
class ScapFigures:
    profile: str
    score: float
    passed: int
    failed: list[str]  # rule ids without the xccdf_org.ssgproject.content_rule_ prefix
    failed_high: list[str]
    notapplicable: int
    other: dict[str, int]  # notchecked, error, unknown...


@dataclass
class Thresholds:
    min_lynis: int
    min_scap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(settings.audit_min_lynis, settings.audit_min_scap)


@dataclass
class AuditResult:
    role: str
    version: str
    image: str
    lynis: LynisFigures
    scap: ScapFigures
    thresholds: Thresholds
    seconds: float
    report_dir: Path
    misses: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.misses

    def as_json(self) -> dict:
        data = asdict(self)
        data["report_dir"] = str(self.report_dir)
        data["passed"] = self.passed
        return data

    def require_passed(self) -> None:
        """Below a threshold the audit fails, after its figures are printed and recorded."""
        if self.misses:
            raise OperationFailed(f"audit of {self.role} {self.version} missed: {'; '.join(self.misses)}")

    def labels(self) -> dict[str, str]:
        return {
            "kiln.lynis-index": str(self.lynis.hardening_index),
            "kiln.lynis-warnings": str(len(self.lynis.warnings)),
            "kiln.scap-profile": self.scap.profile.removeprefix("xccdf_org.ssgproject.content_profile_"),
            "kiln.scap-score": f"{self.scap.score:.1f}",
            "kiln.scap-failed": str(len(self.scap.failed)),
            "kiln.scap-failed-high": str(len(self.scap.failed_high)),
            "kiln.audit": "passed" if self.passed else "failed",
        }


def parse_lynis_report(text: str) -> LynisFigures:
    """Figures from /var/log/lynis-report.dat (key=value lines; lists as key[]=value)."""
    index, tests, warnings, suggestions = None, 0, [], 0
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "hardening_index":
            index = int(value)
        elif key == "lynis_tests_done":
            tests = int(value)
        elif key == "warning[]":
            test_id, _, rest = value.partition("|")
            warnings.append(f"{test_id}: {rest.split('|')[0]}")
        elif key == "suggestion[]":
            suggestions += 1
    if index is None:
        raise OperationFailed("the Lynis report has no hardening_index: the scan did not finish")
    return LynisFigures(index, warnings, suggestions, tests)


def parse_xccdf_results(text: str, profile: str = PROFILE) -> ScapFigures:
    """Score and rule outcomes from `oscap xccdf eval --results` (an XCCDF 1.2 TestResult)."""
    root = ET.fromstring(text)
    result = next(root.iter(f"{XCCDF}TestResult"), None)
    if result is None:
        raise OperationFailed("the OpenSCAP results have no TestResult: the evaluation did not finish")
    score_el = result.find(f"{XCCDF}score")
    score = float(score_el.text) if score_el is not None and score_el.text else 0.0
    passed, notapplicable, failed, failed_high, other = 0, 0, [], [], {}
    for rule in result.iter(f"{XCCDF}rule-result"):
        outcome = rule.findtext(f"{XCCDF}result", "")
        rule_id = rule.get("idref", "").removeprefix("xccdf_org.ssgproject.content_rule_")
        if outcome == "pass":
            passed += 1
        elif outcome == "fail":
            failed.append(rule_id)
            if rule.get("severity") == "high":
                failed_high.append(rule_id)
        elif outcome == "notapplicable":
            notapplicable += 1
        elif outcome != "notselected":
            other[outcome] = other.get(outcome, 0) + 1
    return ScapFigures(profile, score, passed, sorted(failed), sorted(failed_high), notapplicable, other)


def threshold_misses(lynis: LynisFigures, scap: ScapFigures, thresholds: Thresholds) -> list[str]:
    misses = []
    if lynis.hardening_index < thresholds.min_lynis:
        misses.append(
            f"Lynis hardening index {lynis.hardening_index} < {thresholds.min_lynis} (KILN_AUDIT_MIN_LYNIS)"
        )
    if scap.score < thresholds.min_scap:
        misses.append(
            f"ANSSI BP-028 intermediary score {scap.score:.1f} < {thresholds.min_scap} (KILN_AUDIT_MIN_SCAP)"
        )
    if scap.failed_high:
        misses.append(f"high-severity SCAP rules failed: {', '.join(scap.failed_high)}")
    return misses


def ensure_scap_content(settings: Settings) -> Path:
    """The SSG Debian 12 data stream, fetched once from the trixie ssg-debian package."""
    cached = settings.state_dir / "scap" / DATASTREAM
    if cached.exists():
        return cached
    require_tools("fetching SCAP content with apt (a Debian host)", "apt-get", "dpkg-deb")
    with tempfile.TemporaryDirectory(prefix="kiln-ssg-") as scratch:
        root = Path(scratch)
        (root / "sources").mkdir()
        (root / "lists" / "partial").mkdir(parents=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (root / "sources" / "trixie.list").write_text(
            f"deb [signed-by={keyring}] {settings.resolved_mirror()} {SSG_SUITE} main\n"
        )
        options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={root / 'sources'}",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        for step in (["update", "-qq"], ["download", "-qq", "ssg-debian"]):
            proc = subprocess.run(
                ["apt-get", *options, *step], cwd=root, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                tail = " ".join(proc.stderr.strip().splitlines()[-2:])
                raise OperationFailed(f"fetching ssg-debian from {SSG_SUITE} failed: {tail}")
        debs = sorted(root.glob("ssg-debian_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root / "x")], check=True)
        found = root / "x" / "usr" / "share" / "xml" / "scap" / "ssg" / "content" / DATASTREAM
        if not found.exists():
            raise OperationFailed(f"{debs[-1].name} has no {DATASTREAM}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        (cached.parent / "source.txt").write_text(debs[-1].name + "\n")
        write_atomic(cached, found.read_bytes())
    return cached


class Auditor:
    def __init__(self, settings: Settings, client: docker.DockerClient | None = None):
        self.settings = settings
        self.client = client or docker_client()
        self.store = DockerImageStore(self.client, settings)

    def audit(
        self, role: str, version: str | None = None, thresholds: Thresholds | None = None
    ) -> AuditResult:
        """Audit a baked image, record its figures on it, and say which thresholds it missed."""
        record = require_image(self.store, role, version)
        thresholds = thresholds or Thresholds.from_settings(self.settings)
        report_dir = self.settings.state_dir / "audit" / role / record.version
        started = time.monotonic()
        lynis, scap = self.scan(record.id, role, report_dir, label=record.image)
        result = AuditResult(
            role,
            record.version,
            record.image,
            lynis,
            scap,
            thresholds,
            time.monotonic() - started,
            report_dir,
        )
        result.misses = threshold_misses(lynis, scap, thresholds)
        summary = report_dir / "summary.json"
        write_atomic(summary, json.dumps(result.as_json(), indent=2) + "\n")
        self.store.update_labels(record, result.labels())
        return result

    def scan(
        self, image: str, what: str, report_dir: Path, label: str | None = None
    ) -> tuple[LynisFigures, ScapFigures]:
        """Run both tools on any image (a role's, or the stock bootstrap one) into report_dir;
        the containers carry the label kiln.audit=<label>, the image's name.

        The tools go into a throwaway layer committed from a container on the bake network;
        the scans then run in a container of that layer booted with the image's own init
        (services, first-boot host keys, firewall and network sysctls in its own namespace)
        and no network.
        """
        datastream = ensure_scap_content(self.settings)
        report_dir.mkdir(parents=True, exist_ok=True)
        config = self.client.images.get(image).attrs.get("Config") or {}
        # The stock image has no init of its own: it is audited idle.
        boot = config.get("Entrypoint") or ["sleep", "infinity"]
        name = f"{self.settings.name_prefix}-audit-{what}-{uuid.uuid4().hex[:8]}"
        layer = None
        try:
            with console.progress(f"auditing {what} ({image[:19]}) in {name}") as step:
                step("installing the audit tools in a throwaway layer")
                tools = self.client.containers.run(
                    image,
                    ["sleep", "infinity"],
                    entrypoint=[],
                    detach=True,
                    init=True,
                    name=f"{name}-tools",
                    network_mode=self.settings.bake_network,
                    labels={"kiln.audit": label or image},
                )
                self._exec(tools, ["sh", "-c", install_script()], "installing the audit tools")
                put_file(tools, f"/tmp/{DATASTREAM}", datastream.read_bytes())
                layer = tools.commit()
                tools.remove(force=True)
                container = self.client.containers.run(
                    layer.id,
                    config.get("Cmd") or [],
                    entrypoint=boot,
                    detach=True,
                    name=name,
                    network_mode="none",
                    labels={"kiln.audit": label or image},
                    # as instances run (an init: Lynis flags the zombies a PID 1 leaves unreaped)
                    **run_options(self.client, image, self.settings.name_prefix),
                )
                step("OpenSCAP: ANSSI BP-028 intermediary")
                self._exec(container, oscap_command(), "oscap", ok=(0, 2))  # 2: some rule failed
                step("Lynis audit system")
                self._exec(container, ["lynis", "audit", "system", "--quick", "--no-colors"], "lynis")
                for path in REPORT_FILES:
                    (report_dir / Path(path).name).write_bytes(read_file(container, path))
        finally:
            for leftover in (f"{name}-tools", name):
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.containers.get(leftover).remove(force=True)
            if layer is not None:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    self.client.images.remove(layer.id, force=True)
        lynis = parse_lynis_report((report_dir / "lynis-report.dat").read_text(errors="replace"))
        scap = parse_xccdf_results((report_dir / "oscap-results.xml").read_text())
        return lynis, scap

    def _exec(self, container, command: list[str], what: str, ok: tuple[int, ...] = (0,)) -> bytes:
        code, output = container.exec_run(command, demux=False)
        if code not in ok:
            tail = " ".join(output.decode(errors="replace").strip().splitlines()[-3:])
            raise OperationFailed(f"audit step '{what}' exited {code} in {container.name}: {tail}")
        return output


AUDITORS = {"docker": "kiln.audit:Auditor", "qemu": "kiln.vmaudit:VmAuditor"}


def auditor_for(settings: Settings, target: str = "docker") -> Auditor:
    return for_target(AUDITORS, target, "audits")(settings)


def install_script() -> str:
    packages = " ".join(AUDIT_PACKAGES)
    return (
        "export DEBIAN_FRONTEND=noninteractive; "
        "apt-get -qq -o Acquire::Languages=none update && "
        # A booted VM may be running its own apt job (apt-daily): wait for its lock. No fsync
        # per file: the layer or overlay is thrown away, and under TCG syncs cost minutes.
        "apt-get -qq -o APT::Install-Recommends=false -o DPkg::Lock::Timeout=300 "
        f"-o Dpkg::Options::=--force-unsafe-io install -y {packages} >/dev/null && "
        # The image ships without apt lists: audit it as shipped.
        "apt-get clean && rm -rf /var/lib/apt/lists/*"
    )


def oscap_command() -> list[str]:
    # Never --fetch-remote-resources: no traffic beyond the mirror.
    return [
        "oscap", "xccdf", "eval", "--profile", PROFILE,
        "--results", "/tmp/oscap-results.xml", "--report", "/tmp/oscap-report.html",
        f"/tmp/{DATASTREAM}",
    ]  # fmt: skip


def render(result: AuditResult) -> str:
    lines = [
        f"{result.role} {result.version} audited in {result.seconds:.0f} s (reports: {result.report_dir})",
        f"  Lynis hardening index {result.lynis.hardening_index} (min {result.thresholds.min_lynis}), "
        f"{len(result.lynis.warnings)} warnings, {result.lynis.suggestions} suggestions",
        *(f"    warning {w}" for w in result.lynis.warnings),
        f"  ANSSI BP-028 intermediary {result.scap.score:.1f} (min {result.thresholds.min_scap}): "
        f"{result.scap.passed} pass, {len(result.scap.failed)} fail, {len(result.scap.failed_high)} high",
        *(f"    failed {rule}" for rule in result.scap.failed),
        "  audit " + ("passed" if result.passed else "FAILED: " + "; ".join(result.misses)),
    ]
    return "\n".join(lines)
