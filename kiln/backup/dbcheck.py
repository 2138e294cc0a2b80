"""Row counts and checksums of every table, the same SQL in the source and in the restore.

A table's checksum is the sum of the first 60 bits of md5(row::text) over its rows: independent
of row order (no sort of a large table) and changed by any edited, added or lost row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kiln.channels.base import Channel
from kiln.errors import OperationFailed

LIST_DATABASES = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
USER_TABLES = """
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_(toast|temp)'
"""
CHECKSUMS = f"""
SELECT format('SELECT %L, %L, count(*), '
              'coalesce(sum((''x'' || left(md5(t::text), 15))::bit(60)::bigint), 0) FROM %s t',
              'table', format('%I.%I', n.nspname, c.relname), format('%I.%I', n.nspname, c.relname))
{USER_TABLES} ORDER BY n.nspname, c.relname \\gexec
"""
LOCK_TABLES = f"""
SELECT format('LOCK TABLE %s IN SHARE MODE', string_agg(format('%I.%I', n.nspname, c.relname), ', '))
{USER_TABLES} HAVING count(*) > 0 \\gexec
"""
NEWEST_COMMIT = "SELECT 'commit', coalesce(extract(epoch FROM (pg_last_committed_xact()).timestamp), 0);"
# A promoted restore keeps the time of the last transaction it replayed; its own commit
# timestamps start afresh.
NEWEST_REPLAYED = "SELECT 'commit', coalesce(extract(epoch FROM pg_last_xact_replay_timestamp()), 0);"


@dataclass(frozen=True)
class TableSum:
    database: str
    table: str
    rows: int
    checksum: int

    @property
    def key(self) -> str:
        return f"{self.database}:{self.table}"


@dataclass
class Snapshot:
    tables: dict[str, TableSum]
    newest_commit: float  # epoch seconds of the newest committed transaction, 0 if unknown


def psql(shell: Channel, database: str, script: str) -> str:
    """Run a script (\\gexec needs it on standard input) as postgres; tab-separated rows."""
    result = shell.run(
        [
            "sh",
            "-c",
            'printf "%s\\n" "$KILN_SQL" | psql -X -qAt -F "$(printf "\\t")" -v ON_ERROR_STOP=1 -d "$0"',
            database,
        ],
        user="postgres",
        env={"KILN_SQL": script},
    )
    if not result.ok:
        raise OperationFailed(f"psql in {shell.name} ({database}): {result.tail()}")
    return result.out


# The source's reference: one session per database takes share locks on its tables and reads
# them, then waits; once all have read, one more session notes the newest commit and writes the
# restore point, and only then do they commit. Writers wait throughout, so the restore point
# marks exactly the state the sums describe, across every database.
SEALED_SNAPSHOT = r"""
dir=$(mktemp -d)
trap 'touch "$dir/go"; rm -rf "$dir"' EXIT
count=0
for db in $KILN_DATABASES; do
  count=$((count + 1))
  { printf '%s\n' "BEGIN;" "SET LOCAL lock_timeout = '60s';" "$KILN_LOCK" "$KILN_SUMS" \
      "\\! touch $dir/ready-$db" "\\! until [ -f $dir/go ]; do sleep 0.02; done" "COMMIT;" |
      psql -X -qAt -F "$(printf '\t')" -v ON_ERROR_STOP=1 -d "$db" >"$dir/out-$db" 2>&1
    echo $? >"$dir/rc-$db"; } &
done
ready=0
for _ in $(seq 1 18000); do
  ready=$(find "$dir" -name 'ready-*' | wc -l)
  [ "$ready" -eq "$count" ] && break
  if [ -n "$(find "$dir" -name 'rc-*')" ]; then cat "$dir"/out-*; exit 1; fi
  sleep 0.1
done
[ "$ready" -eq "$count" ] || { echo "the reference sessions did not finish reading in 1800 s"; exit 1; }
printf '%s\n' "$KILN_SEAL" | psql -X -qAt -F "$(printf '\t')" -v ON_ERROR_STOP=1 -d postgres || exit 1
touch "$dir/go"
wait
for db in $KILN_DATABASES; do
  [ "$(cat "$dir/rc-$db")" = 0 ] || { cat "$dir/out-$db"; exit 1; }
  printf 'database\t%s\n' "$db"
  cat "$dir/out-$db"
done
"""


def parse_rows(database: str, output: str) -> tuple[list[TableSum], float | None]:
    """Rows of the checksum queries; a `database` line switches the database they belong to."""
    tables, newest = [], None
    for line in output.splitlines():
        parts = line.split("\t")
        if parts[0] == "database" and len(parts) == 2:
            database = parts[1]
        elif parts[0] == "table" and len(parts) == 4:
            tables.append(TableSum(database, parts[1], int(parts[2]), int(parts[3])))
        elif parts[0] == "commit" and len(parts) == 2:
            newest = float(parts[1])
    return tables, newest


def databases(shell: Channel) -> list[str]:
    return psql(shell, "postgres", LIST_DATABASES).split()


def standby_snapshot(shell: Channel, timeout: float = 30.0) -> tuple[Snapshot, str]:
    """On a streaming standby: replay paused, the checksums of what it has replayed, and the LSN
    where replay stopped (a restore targeted just before it holds exactly these rows); replay
    resumed after, also on failure. The primary takes no lock and never waits."""
    psql(shell, "postgres", "SELECT pg_wal_replay_pause();")
    try:
        deadline = time.monotonic() + timeout
        while psql(shell, "postgres", "SELECT pg_get_wal_replay_pause_state();").strip() != "paused":
            if time.monotonic() > deadline:
                raise OperationFailed(f"{shell.name}: replay did not pause within {timeout:g} s")
            time.sleep(0.05)
        lsn = psql(shell, "postgres", "SELECT pg_last_wal_replay_lsn();").strip()
        tables: dict[str, TableSum] = {}
        for database in databases(shell):
            rows, _ = parse_rows(database, psql(shell, database, CHECKSUMS))
            tables.update({row.key: row for row in rows})
        _, newest = parse_rows("", psql(shell, "postgres", NEWEST_REPLAYED))
    finally:
        psql(shell, "postgres", "SELECT pg_wal_replay_resume();")
    return Snapshot(tables, newest or 0.0), lsn


def snapshot(shell: Channel, restore_point: str | None = None) -> Snapshot:
    """Checksums of every table of every database; with `restore_point`, taken under locks and
    sealed by that named restore point (the source's reference, see SEALED_SNAPSHOT)."""
    names = databases(shell)
    if restore_point:
        seal = NEWEST_COMMIT + f"\nSELECT 'point', pg_create_restore_point('{restore_point}');"
        result = shell.run(
            ["sh", "-c", SEALED_SNAPSHOT],
            user="postgres",
            env={
                "KILN_DATABASES": " ".join(names),
                "KILN_LOCK": LOCK_TABLES,
                "KILN_SUMS": CHECKSUMS,
                "KILN_SEAL": seal,
            },
        )
        if not result.ok:
            raise OperationFailed(f"reference in {shell.name}: {result.tail()}")
        rows, newest = parse_rows("", result.out)
        return Snapshot({row.key: row for row in rows}, newest or 0.0)
    tables: dict[str, TableSum] = {}
    newest = 0.0
    for database in names:
        rows, _ = parse_rows(database, psql(shell, database, CHECKSUMS))
        tables.update({row.key: row for row in rows})
    return Snapshot(tables, newest)


def without_row(
    shell: Channel, tables: dict[str, TableSum], database: str, table: str, row_id: int
) -> dict[str, TableSum]:
    """`tables` as if the row with this id were not in `table` (a row the drill itself wrote)."""
    out = psql(
        shell,
        database,
        f"SELECT 'row', ('x' || left(md5(t::text), 15))::bit(60)::bigint "
        f"FROM {table} t WHERE id = {int(row_id)}",
    )
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("row\t")]
    key = f"{database}:{table}"
    if not rows or key not in tables:
        return tables
    old = tables[key]
    return {**tables, key: TableSum(database, table, old.rows - 1, old.checksum - int(rows[0][1]))}


def compare(reference: dict[str, TableSum], restored: dict[str, TableSum]) -> list[str]:
    """One line per table that is missing, extra, or differs in rows or checksum."""
    problems = []
    for key in sorted(set(reference) | set(restored)):
        ref, got = reference.get(key), restored.get(key)
        if got is None:
            problems.append(f"{key}: missing from the restore")
        elif ref is None:
            problems.append(f"{key}: in the restore but not in the source")
        elif ref.rows != got.rows:
            problems.append(f"{key}: {got.rows} rows restored, {ref.rows} in the source")
        elif ref.checksum != got.checksum:
            problems.append(
                f"{key}: checksum differs ({got.checksum:x} restored, {ref.checksum:x} in the source)"
            )
    return problems
