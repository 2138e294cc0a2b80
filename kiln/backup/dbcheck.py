"""Row counts and checksums of every table, the same SQL in the source and in the restore.

A table's checksum is the sum of the first 60 bits of md5(row::text) over its rows: independent
of row order (no sort of a large table) and changed by any edited, added or lost row.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.backup.base import DockerShell, OperationFailed

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
# Writers wait while the reference is read and the restore point is written, so the restore
# point marks exactly the state the checksums describe.
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


def psql(shell: DockerShell, database: str, script: str) -> str:
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


def parse_rows(database: str, output: str) -> tuple[list[TableSum], float | None]:
    tables, newest = [], None
    for line in output.splitlines():
        parts = line.split("\t")
        if parts[0] == "table" and len(parts) == 4:
            tables.append(TableSum(database, parts[1], int(parts[2]), int(parts[3])))
        elif parts[0] == "commit" and len(parts) == 2:
            newest = float(parts[1])
    return tables, newest


def databases(shell: DockerShell) -> list[str]:
    return psql(shell, "postgres", LIST_DATABASES).split()


def snapshot(shell: DockerShell, restore_point: str | None = None) -> Snapshot:
    """Checksums of every table of every database; with `restore_point`, taken under locks and
    sealed by a named restore point written while they are held (the source's reference)."""
    names = databases(shell)
    tables: dict[str, TableSum] = {}
    newest = 0.0
    for i, database in enumerate(names):
        script = CHECKSUMS
        if restore_point:
            script = "BEGIN;\nSET LOCAL lock_timeout = '60s';\n" + LOCK_TABLES + CHECKSUMS
            if i == len(names) - 1:
                script += NEWEST_COMMIT + f"\nSELECT 'point', pg_create_restore_point('{restore_point}');\n"
            script += "COMMIT;\n"
        elif i == len(names) - 1:
            script += NEWEST_COMMIT
        rows, commit = parse_rows(database, psql(shell, database, script))
        tables.update({row.key: row for row in rows})
        newest = commit if commit is not None else newest
    return Snapshot(tables, newest)


def without_row(
    shell: DockerShell, tables: dict[str, TableSum], database: str, table: str, row_id: int
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
