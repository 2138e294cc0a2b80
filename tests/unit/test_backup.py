"""Parsing and decisions of the backup tools, on output captured from pgBackRest 2.45 and restic 0.14."""

import json

import pytest

from kiln.backup import pgbackrest, restic
from kiln.backup.base import (
    BackupFault,
    BackupSettings,
    Retention,
    S3Access,
    S3Repository,
    human_size,
)
from kiln.backup.dbcheck import TableSum, compare, parse_rows
from kiln.backup.operations import backup_settings, unreachable
from kiln.backup.secrets import ensure_secrets, secret, secrets_file
from kiln.config import parse
from kiln.errors import KilnError
from tests.unit.commandchannel import CommandOnlyChannel

INFO = [
    {
        "archive": [{"id": "15-1", "min": "000000010000000000000002", "max": "000000010000000000000007"}],
        "backup": [
            {
                "archive": {"start": "000000010000000000000002", "stop": "000000010000000000000002"},
                "info": {"size": 30755697, "repository": {"delta": 6071920, "size": 6071920}},
                "label": "20261121-235434F",
                "prior": None,
                "timestamp": {"start": 1795305274, "stop": 1795305277},
                "type": "full",
                "error": False,
            },
            {
                "archive": {"start": "000000010000000000000005", "stop": "000000010000000000000005"},
                "info": {"size": 30755697, "repository": {"delta": 1024, "size": 6071920}},
                "label": "20261121-235434F_20261121-235600I",
                "prior": "20261121-235434F",
                "timestamp": {"start": 1795305360, "stop": 1795305361},
                "type": "incr",
                "error": False,
            },
        ],
        "name": "main",
        "repo": [{"key": 1, "status": {"code": 0, "message": "ok"}}],
        "status": {"code": 0, "message": "ok"},
    }
]
WRONG_KEY_INFO = (
    '[{"archive":[],"backup":[],"name":"main","repo":[{"key":1,"status":{"code":99,"message":'
    "\"[FormatError] unable to load info file '/var/lib/pgbackrest/backup/main/backup.info' or "
    "'/var/lib/pgbackrest/backup/main/backup.info.copy':\\nFormatError: key/value found outside of "
    'section at line 1: W\x1dX\\t"}}],"status":{"code":99,"message":"other"}}]'
)


def test_info_lists_backups_oldest_first_with_sizes_and_wal_range():
    code, message, records, archive = pgbackrest.parse_info(json.dumps(INFO))
    assert (code, message) == (0, "ok")
    assert [r.kind for r in records] == ["full", "incr"]
    assert records[1].details["prior"] == "20261121-235434F"
    assert records[0].size == 30755697 and records[0].stored == 6071920
    assert archive == {"id": "15-1", "min": "000000010000000000000002", "max": "000000010000000000000007"}


def test_info_with_a_wrong_key_names_the_key_not_other():
    code, message, records, _ = pgbackrest.parse_info(WRONG_KEY_INFO)
    assert code == 99 and records == []
    assert pgbackrest.PgBackRest.classify(message) == "wrong-key"


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        (
            "ERROR: [055]: unable to load info file ...: FileMissingError: unable to open missing file",
            "repository-missing",
        ),
        ("status: error (missing stanza path)", "repository-missing"),
        ("INFO: invalid checksum '20261121-235434F/pg_data/base/16385/2838.lz4'", "corrupt-backup"),
        ("ERROR: [045]: unable to find WAL segment 000000010000000000000004", "missing-wal"),
        ("CryptoError: cipher header invalid", "wrong-key"),
        ("ERROR: [031]: option 'process-max' cannot be set multiple times", None),
    ],
)
def test_pgbackrest_output_is_classified_into_named_causes(output, cause):
    assert pgbackrest.PgBackRest.classify(output) == cause


def test_wal_gaps_finds_the_missing_segment_across_a_log_boundary():
    listing = [
        "0000000100000000/0000000100000000000000FE-" + "a" * 40 + ".lz4",
        "0000000100000000/0000000100000000000000FF-" + "b" * 40 + ".lz4",
        "0000000100000001/000000010000000100000001-" + "c" * 40 + ".lz4",
        "0000000100000000/0000000100000000000000FE.00000028.backup",
    ]
    assert pgbackrest.wal_gaps(listing, "0000000100000000000000FE") == ["000000010000000100000000"]
    assert pgbackrest.wal_gaps(listing[:2], "0000000100000000000000FE") == []
    assert pgbackrest.wal_gaps([], "0000000100000000000000FE") == ["0000000100000000000000FE"]


def test_segment_names_round_trip():
    for name in ("000000010000000000000002", "0000000200000003000000FF"):
        assert pgbackrest.segment_name(*pgbackrest.segment_number(name)) == name


def test_verify_findings_are_the_per_file_problems_only():
    output = (
        "2026-11-21 INFO: verify command begin 2.45: --repo1-cipher-pass=<redacted> --stanza=main\n"
        "2026-11-21 P01   INFO: invalid checksum '20261121-235434F/pg_data/base/16385/2838.lz4'\n"
        "2026-11-21 INFO: verify command end: completed successfully (817ms)\n"
    )
    assert pgbackrest.verify_findings(output) == [
        "invalid checksum '20261121-235434F/pg_data/base/16385/2838.lz4'"
    ]
    assert pgbackrest.verify_findings("INFO: verify command end: completed successfully") == []


def test_repository_conf_carries_cipher_retention_and_s3_settings():
    conf = pgbackrest.render_conf(BackupSettings(retention=Retention(full=3, diff=5)), "k" * 20)
    assert "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=" + "k" * 20 in conf
    assert "repo1-retention-full=3" in conf and "repo1-retention-diff=5" in conf
    assert "repo1-path=/var/lib/pgbackrest" in conf
    repo = S3Repository(bucket="b", endpoint="10.0.0.1:9000", uri_style="path")
    s3 = BackupSettings(repository="s3", s3=repo)
    conf = pgbackrest.render_conf(s3, "k" * 20, S3Access(repo, "AKID", "SECRET", b"PEM"))
    for line in (
        "repo1-type=s3",
        "repo1-s3-bucket=b",
        "repo1-s3-endpoint=10.0.0.1",
        "repo1-storage-port=9000",
        "repo1-s3-uri-style=path",
        "repo1-s3-verify-tls=y",
        "repo1-s3-key=AKID",
        "repo1-s3-ca-file=/etc/kiln/s3-ca.pem",
    ):
        assert line in conf.splitlines()


def test_backup_section_is_parsed_strictly():
    parsed = parse(
        BackupSettings, {"retention": {"full": 4}, "repository": "volume"}, "environments/x.yml", "backup"
    )
    assert parsed.retention.full == 4 and parsed.retention.diff == 4
    with pytest.raises(
        KilnError,
        match=r"environments/x.yml: field 'backup.retention.ful': unknown field; "
        r"did you mean 'full'\?",
    ):
        parse(BackupSettings, {"retention": {"ful": 4}}, "environments/x.yml", "backup")


def test_restic_snapshots_summary_and_times():
    text = json.dumps(
        [
            {
                "time": "2026-11-21T23:59:02.5+00:00",
                "short_id": "bbbb2222",
                "paths": ["/srv"],
                "hostname": "w",
            },
            {
                "time": "2026-11-21T23:59:01.123456789Z",
                "short_id": "aaaa1111",
                "paths": ["/srv"],
                "hostname": "w",
            },
        ]
    )
    records = restic.parse_snapshots(text)
    assert [r.id for r in records] == ["aaaa1111", "bbbb2222"]
    assert records[1].started - records[0].started == pytest.approx(1.376543211)
    summary = restic.parse_summary(
        '{"message_type":"status"}\n{"message_type":"summary","snapshot_id":"ab12"}\n'
    )
    assert summary["snapshot_id"] == "ab12"
    with pytest.raises(ValueError):
        restic.parse_time("yesterday")


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        ("Fatal: wrong password or no key found", "wrong-key"),
        (
            "Fatal: unable to open config file: stat /var/lib/kiln-restic/config: no such file or directory\n"
            "Is there a repository at the following location?",
            "repository-missing",
        ),
        ("Pack ID does not match, want 1a2b, got 3c4d\nFatal: repository contains errors", None),
        ("error for tree 5a7c: ciphertext verification failed", "corrupt-backup"),
    ],
)
def test_restic_output_is_classified(output, cause):
    assert restic.Restic.classify(output) == cause


def test_table_comparison_names_each_kind_of_difference():
    ref = {
        "kiln:public.a": TableSum("kiln", "public.a", 3, 10),
        "kiln:public.b": TableSum("kiln", "public.b", 1, 5),
        "kiln:public.c": TableSum("kiln", "public.c", 2, 7),
    }
    got = {
        "kiln:public.a": TableSum("kiln", "public.a", 3, 11),
        "kiln:public.b": TableSum("kiln", "public.b", 0, 0),
        "kiln:public.d": TableSum("kiln", "public.d", 1, 1),
    }
    assert compare(ref, got) == [
        "kiln:public.a: checksum differs (b restored, a in the source)",
        "kiln:public.b: 0 rows restored, 1 in the source",
        "kiln:public.c: missing from the restore",
        "kiln:public.d: in the restore but not in the source",
    ]
    assert compare(ref, dict(ref)) == []


def test_psql_rows_are_parsed_into_tables_and_the_newest_commit():
    tables, newest = parse_rows(
        "kiln", "table\tpublic.records\t12\t123456\npoint\t0/3000\ncommit\t1795305277.5\n"
    )
    assert tables == [TableSum("kiln", "public.records", 12, 123456)]
    assert newest == 1795305277.5
    sealed = "commit\t1795305280\npoint\t0/4000\ndatabase\tkiln\ntable\tpublic.a\t1\t2\ndatabase\tpostgres\n"
    sealed += "table\tpublic.b\t3\t4\n"
    tables, newest = parse_rows("", sealed)
    assert [(t.key, t.rows) for t in tables] == [("kiln:public.a", 1), ("postgres:public.b", 3)]
    assert newest == 1795305280


class _Echo(CommandOnlyChannel):
    def execute(self, argv, user, env, stdin, timeout):
        return 1, b"", " ".join(argv).encode()


def test_a_failing_tool_never_quotes_its_key():
    key = "s3cr3t-key-value-0123456789"
    tool = restic.Restic(_Echo("echo"), BackupSettings(), key)
    with pytest.raises(BackupFault) as exc:
        tool.run(["restic", f"--password={key}", "check"])
    assert key not in str(exc.value) and "********" in str(exc.value)


def test_secrets_file_is_created_encrypted_and_env_overrides(settings, monkeypatch):
    monkeypatch.delenv("KILN_BACKUP_KEY", raising=False)
    monkeypatch.delenv("KILN_DB_PASSWORD", raising=False)
    path = ensure_secrets(settings, "local")
    assert path == secrets_file(settings, "local") and path.name == "local.env.age"
    key = secret(settings, "local", "KILN_BACKUP_KEY")
    assert len(key) >= 32 and key not in path.read_text()
    assert ensure_secrets(settings, "local") is None  # complete: left alone
    monkeypatch.setenv("KILN_BACKUP_KEY", "from-the-environment-123")
    assert secret(settings, "local", "KILN_BACKUP_KEY") == "from-the-environment-123"


def test_a_malformed_secret_is_refused_without_showing_it(settings, monkeypatch):
    monkeypatch.setenv("KILN_BACKUP_KEY", "short key\n")
    with pytest.raises(KilnError) as exc:
        secret(settings, "local", "KILN_BACKUP_KEY")
    assert "short key" not in str(exc.value) and "variable KILN_BACKUP_KEY" in str(exc.value)
    monkeypatch.delenv("KILN_BACKUP_KEY")
    monkeypatch.delenv("KILN_DB_PASSWORD", raising=False)
    with pytest.raises(
        KilnError, match=r"KILN_DB_PASSWORD .* not set: export it or add it with `invoke secrets edit none`"
    ):
        secret(settings, "none", "KILN_DB_PASSWORD")


def test_human_sizes():
    assert [human_size(n) for n in (12, 2048, 5 * 1024**3)] == ["12 B", "2.0 KiB", "5.0 GiB"]


def test_restic_reaches_s3_through_files_and_options_never_argv_secrets():
    repo = S3Repository(bucket="kiln-b", endpoint="10.0.0.1:9000", path="/kiln", uri_style="path")
    access = S3Access(repo, "AKID-kilntest", "SECRET-kilntest", b"PEM")
    tool = restic.Restic(_Echo("echo"), BackupSettings(repository="s3", s3=repo), "k" * 20, access)
    assert tool.env["RESTIC_REPOSITORY"] == "s3:https://10.0.0.1:9000/kiln-b/kiln-restic"
    assert restic.s3_options(access) == ["--cacert", "/etc/kiln/s3-ca.pem", "-o", "s3.bucket-lookup=path"]
    assert {"AKID-kilntest", "SECRET-kilntest"} <= set(tool.shell.secrets)  # scrubbed from output
    assert not any("kilntest" in value for value in tool.env.values())


def test_an_s3_endpoint_with_a_scheme_is_refused_where_declared(settings):
    env_file = settings.project_root / "environments" / "offsite.yml"
    env_file.parent.mkdir()
    env_file.write_text(
        "provider: local\nzones: [z0]\ninstances: {db: 1, web: 1}\nfrontend: {port: 0}\n"
        "backup: {repository: s3, s3: {bucket: b, endpoint: 'https://s3.example.com'}}\n"
    )
    with pytest.raises(KilnError, match=r"offsite.yml: field 'backup.s3.endpoint': .* without https://"):
        backup_settings(settings, "offsite")
    env_file.write_text(
        env_file.read_text().replace(", s3: {bucket: b, endpoint: 'https://s3.example.com'}", "")
    )
    with pytest.raises(KilnError, match=r"offsite.yml: field 'backup.s3': required when repository is 's3'"):
        backup_settings(settings, "offsite")


def test_an_s3_repository_bounds_each_request_retries_a_job_once_and_bundles_small_files():
    repo = S3Repository(bucket="b", endpoint="10.0.0.1:9000", timeout_seconds=12.5)
    access = S3Access(repo, "A", "S")
    conf = pgbackrest.render_conf(BackupSettings(repository="s3", s3=repo), "k" * 20, access)
    assert {"io-timeout=12.5", "job-retry=1", "repo1-bundle=y"} <= set(conf.splitlines())
    assert "io-timeout=30" in pgbackrest.render_conf(
        BackupSettings(repository="s3", s3=S3Repository(bucket="b", endpoint="h")), "k" * 20,
        S3Access(S3Repository(bucket="b", endpoint="h"), "A", "S"),
    )  # fmt: skip
    volume = pgbackrest.render_conf(BackupSettings(), "k" * 20)
    # a volume keeps pgBackRest's own, and one file per file
    assert "io-timeout" not in volume and "job-retry" not in volume and "bundle" not in volume


@pytest.mark.parametrize("value", [0, -1, 601, "soon"])
def test_a_timeout_out_of_range_is_refused_where_declared(settings, value):
    env_file = settings.project_root / "environments" / "offsite.yml"
    env_file.parent.mkdir()
    env_file.write_text(
        "provider: local\nzones: [z0]\ninstances: {db: 1, web: 1}\nfrontend: {port: 0}\n"
        f"backup: {{repository: s3, s3: {{bucket: b, endpoint: h, timeout_seconds: {value}}}}}\n"
    )
    with pytest.raises(KilnError, match=r"^environments/offsite.yml: field 'backup.s3.timeout_seconds': "):
        backup_settings(settings, "offsite")


RETRY_LINE = (
    "Save(<data/5e1f0a2b9c>) returned error, retrying after 552.330144ms: Put "
    '"https://10.0.0.1:9000/b/kiln-restic/data/5e/5e1f0a2b9c": '
    "dial tcp 10.0.0.1:9000: connect: connection refused"
)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_retry_watch_stops_restic_once_it_has_retried_for_the_bound():
    clock = _Clock()
    watch = restic.RetryWatch(10, clock)
    assert watch('{"message_type":"summary"}') is None and watch(None) is None  # no trouble
    assert watch(RETRY_LINE) is None
    clock.now += 9.9
    assert watch(None) is None  # a tick with no output, still within the bound
    clock.now += 0.1
    reason = watch(None)  # the bound reached between two retry lines: stop now, not at the next
    assert reason == f"retried the repository for 10 s, last: {RETRY_LINE}"
    clock.now += 5
    later = watch(RETRY_LINE.replace("Save", "Load"))
    assert later.startswith("retried the repository for 15 s, last: Load(")


def test_the_retry_watch_forgets_an_outage_that_ended():
    clock = _Clock()
    watch = restic.RetryWatch(10, clock)
    watch(RETRY_LINE)
    clock.now += 5
    watch(RETRY_LINE)
    clock.now += restic.RECOVERED_AFTER + 1  # requests went through again: no retry line for long
    assert watch(None) is None
    assert watch(RETRY_LINE) is None  # a new outage counts from here
    clock.now += 9
    assert watch(None) is None
    clock.now += 1
    assert watch(None) is not None


def test_the_retry_watch_reads_only_restic_retry_lines():
    clock = _Clock()
    watch = restic.RetryWatch(1, clock)
    for line in ("Fatal: unable to save snapshot: connection refused", "a returned error, retrying after 1s"):
        watch(line)
        clock.now += 5
        assert watch(None) is None


def test_a_dead_s3_server_is_one_line_with_environment_tool_and_what_to_check():
    repo = S3Repository(bucket="kiln-b", endpoint="10.0.0.1:9000", timeout_seconds=10)
    said = "pgbackrest: ERROR: [104]: HostConnectError: unable to connect to '10.0.0.1:9000': [111] refused"
    said += " | more words" * 20  # more than a line should quote
    fault = unreachable("offsite", "pgbackrest", repo, BackupFault("repository-unreachable", said))
    message = str(fault)
    assert "\n" not in message and fault.cause == "repository-unreachable" and fault.exit_code == 1
    assert message.startswith(
        "the backup repository's server did not answer (repository-unreachable): environment 'offsite', "
        "pgbackrest backup: the S3 server 10.0.0.1:9000 (bucket kiln-b) stopped answering "
        "(timeout_seconds 10; ERROR: [104]: HostConnectError: unable to connect to"
    )
    assert message.endswith(
        "...); check that it runs and that the instances reach it (backup.s3 in environments/offsite.yml), "
        "then back up again: the next backup starts afresh"
    )


def test_pgbackrest_is_stopped_once_it_has_failed_and_only_waits_for_its_workers():
    clock = _Clock()
    watch = pgbackrest.FailedWatch(5, clock)
    assert watch("WARN: a warning is no failure") is None
    clock.now += 60
    assert watch(None) is None
    assert watch("ERROR: [049]: raised from local-2 protocol: unable to connect to '10.0.0.1:9000'") is None
    clock.now += 4.9
    assert watch("[HostConnectError] on retry after 0ms") is None
    clock.now += 0.1
    assert watch(None) == "pgbackrest still running 5 s after its error"
