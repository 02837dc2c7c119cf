"""The PostgreSQL database: schema and migrations, the statements, the error mapping.

Schema (version 2), in a PostgreSQL schema of its own (`aruntime` unless the URL says
`?schema=...`), so that aruntime's tables never mix with an application's::

    meta    (key PRIMARY KEY, value)             application name, schema version
    runs    (run_id PRIMARY KEY, id UNIQUE, workflow, status, version, created_at,
             updated_at, parked_reason,
             epoch, owner, lease_until, due_at,   the fleet's ownership of the run
             queue, priority, partition_key,      its place in a queue (version 2)
             admitted_at, admit_turn)
    queues  (name PRIMARY KEY, last_turn)         one row per queue: its admission lock
    queue_partitions (queue, partition_key, turn) each partition's latest turn
    queue_admissions (queue, at)                  admission times inside a rate's window
    events  (run_id, sequence) PRIMARY KEY, type, at, data, checksum,
             epoch, writer, written_at            who wrote the row, under which claim
    inbox   (id bigserial PRIMARY KEY, kind, run_id, at, data, checksum)
    workers (worker_id PRIMARY KEY, pid, host, workflows, seen_at)
    claims  (run_id, epoch) PRIMARY KEY, worker, at    every claim ever made, for audits
    changes (a sequence)                          moved by every change a waiter cares for

`runs` is the index of runs and also the fleet's lease table: `owner` is the worker that
holds the run, `lease_until` when its lease ends on the database's clock (`now()`),
`epoch` the fencing token that every claim bumps, and `due_at` (epoch seconds) when a run
that holds no lease (a sleeping one) becomes runnable again. `events` records with every
row the epoch and worker it was appended under, so that "no write by a worker whose
lease was taken over" can be checked from the database alone: along a run's log, epochs
never go down, every row's writer is the worker that claimed its epoch, and every row of
an epoch was written before the next epoch's claim (`written_at` and `claims.at` are
both `clock_timestamp()`, taken after the row lock that orders the two). `claims` keeps
the history of who held which epoch.

A run started on a queue has its `queue`, `priority` and `partition_key` (`''` when it
has none) and waits, claimable by nobody, until an admission (`aruntime.store._pg_queues`)
sets `admitted_at` (epoch seconds on the database's clock) and `admit_turn`; a run on no
queue has NULL in all three but `priority` (0).

Every write of the fleet is one statement, so that the check and the write cannot be
separated: an append updates the run's row only where its version and epoch are what the
writer holds, and inserts its events only for the rows that update returned (a
data-modifying CTE), all in one round trip and one implicit transaction.

A database records its schema version in `meta`. Opening one of an older version
migrates it in one transaction under an advisory lock (several workers may start at
once); a newer version raises `StoreVersionError` and changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from aruntime.errors import (
    ConfigError,
    StoreConnectionError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreVersionError,
)
from aruntime.store._rows import RUN_COLUMNS

__all__ = [
    "SCHEMA_VERSION",
    "Statements",
    "check_schema_name",
    "map_error",
    "migrate",
]

_APPLICATION = "aruntime"

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE {s}.runs (
            run_id text PRIMARY KEY,
            id bigserial UNIQUE,
            workflow text NOT NULL,
            status text NOT NULL,
            version bigint NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            parked_reason text,
            epoch bigint NOT NULL DEFAULT 0,
            owner text,
            lease_until timestamptz,
            due_at double precision
        )""",
        "CREATE INDEX runs_by_status ON {s}.runs (status)",
        "CREATE INDEX runs_by_owner ON {s}.runs (owner) WHERE owner IS NOT NULL",
        "CREATE INDEX runs_claimable ON {s}.runs (due_at) "
        "WHERE status IN ('pending', 'running') AND parked_reason IS NULL",
        """CREATE TABLE {s}.events (
            run_id text NOT NULL,
            sequence bigint NOT NULL,
            type text NOT NULL,
            at double precision NOT NULL,
            data text NOT NULL,
            checksum bigint,
            epoch bigint NOT NULL DEFAULT 0,
            writer text,
            written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (run_id, sequence)
        )""",
        """CREATE TABLE {s}.inbox (
            id bigserial PRIMARY KEY,
            kind text NOT NULL,
            run_id text NOT NULL,
            at double precision NOT NULL,
            data text NOT NULL,
            checksum bigint NOT NULL
        )""",
        "CREATE INDEX inbox_by_run ON {s}.inbox (run_id)",
        """CREATE TABLE {s}.workers (
            worker_id text PRIMARY KEY,
            pid integer NOT NULL,
            host text NOT NULL,
            workflows text[] NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE {s}.claims (
            run_id text NOT NULL,
            epoch bigint NOT NULL,
            worker text NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (run_id, epoch)
        )""",
        "CREATE SEQUENCE {s}.changes",
    ),
    # 1 -> 2: queues. Existing runs are on no queue (NULL queue, priority 0).
    (
        """ALTER TABLE {s}.runs
            ADD COLUMN queue text,
            ADD COLUMN priority integer NOT NULL DEFAULT 0,
            ADD COLUMN partition_key text,
            ADD COLUMN admitted_at double precision,
            ADD COLUMN admit_turn bigint""",
        "CREATE TABLE {s}.queues (name text PRIMARY KEY, last_turn bigint NOT NULL)",
        "CREATE INDEX runs_by_queue ON {s}.runs (queue, status, admitted_at) "
        "WHERE queue IS NOT NULL",
        "CREATE TABLE {s}.queue_partitions (queue text NOT NULL, partition_key text NOT NULL, "
        "turn bigint NOT NULL, PRIMARY KEY (queue, partition_key))",
        "CREATE TABLE {s}.queue_admissions (queue text NOT NULL, at double precision NOT NULL)",
        "CREATE INDEX queue_admissions_by_time ON {s}.queue_admissions (queue, at)",
        "CREATE INDEX runs_waiting ON {s}.runs "
        '(queue, priority, partition_key, created_at, run_id COLLATE "C") '
        "WHERE queue IS NOT NULL AND admitted_at IS NULL AND status IN ('pending', 'running')",
    ),
)
"""`_MIGRATIONS[v]` takes a database from schema version `v` to `v + 1`."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this aruntime writes."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(name: str) -> str:
    """Return `name` if it can name a PostgreSQL schema unquoted.

    Raises:
        ConfigError: it cannot.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} cannot name aruntime's PostgreSQL schema: use lower-case letters, "
            "digits and underscores, starting with a letter (at most 63)"
        )
    return name


async def migrate(conn: Any, schema: str) -> int:
    """Bring `schema` to `SCHEMA_VERSION` in one transaction; returns the version found.

    Raises:
        StoreVersionError: a newer aruntime wrote it; nothing was changed.
        StoreCorruptError: the schema holds tables but is not aruntime's.
    """
    async with conn.transaction():
        # One migrator at a time across the fleet; the lock ends with the transaction.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"aruntime:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                schema,
            )
        }
        found = 0
        if tables:
            meta: dict[str, str] = {}
            if "meta" in tables:
                meta = dict(await conn.fetch(f"SELECT key, value FROM {schema}.meta"))
            recorded = meta.get("schema_version", "")
            if meta.get("application") != _APPLICATION or not recorded.isdigit():
                raise StoreCorruptError(
                    f"the PostgreSQL schema {schema!r} holds the tables "
                    f"{', '.join(sorted(tables))} but is not an aruntime store; give "
                    "aruntime a schema of its own (?schema=...)"
                )
            found = int(recorded)
        if found > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the PostgreSQL schema {schema!r} has schema version {found}, written by a "
                f"newer aruntime; this one reads up to version {SCHEMA_VERSION}, so upgrade "
                "aruntime to open it"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in _MIGRATIONS[version]:
                await conn.execute(statement.format(s=schema))
        if found < SCHEMA_VERSION:
            await conn.executemany(
                f"INSERT INTO {schema}.meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
            )
    return found


_TERMINAL = "('completed', 'failed', 'cancelled')"


class Statements:
    """Every statement of the store, with its schema's name filled in once."""

    def __init__(self, schema: str) -> None:
        s = schema
        self.channel = f"aruntime_{schema}"
        run_columns = RUN_COLUMNS
        self.events = (
            f"SELECT sequence, type, at, data, checksum FROM {s}.events "
            "WHERE run_id = $1 AND sequence > $2 ORDER BY sequence"
        )
        self.run = f"SELECT {run_columns} FROM {s}.runs WHERE run_id = $1"
        self.runs_by_id = f"SELECT {run_columns} FROM {s}.runs WHERE run_id = ANY($1::text[])"
        self.list_runs = f"SELECT {run_columns} FROM {s}.runs"

        # -- appends -------------------------------------------------------------------
        waiting = "r.queue IS NOT NULL AND r.admitted_at IS NULL"
        # $1-$7: the existing runs' appends; $8-$15 and $24-$26: the new runs'; $16-$21:
        # every row; $22: this worker; $23: the lease in seconds.
        # A run whose update or insert is not returned was refused: its rows are not
        # inserted (the join), and the caller reads the row to say why.
        # A run waiting for its queue's admission is claimed by nobody: an append to it by
        # a worker that does not hold it (a cancel, a resume) commits if it is free, as
        # for any run, but leaves it free (and unadmitted) unless the append ends it.
        self.append = f"""
WITH moved AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[],
                         $5::float8[], $6::bigint[], $7::bigint[])
        AS m(run_id, expected, last, status, updated_at, epoch, consume)
), created AS (
    SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::bigint[],
                         $12::float8[], $13::float8[], $14::bool[], $15::bigint[],
                         $24::text[], $25::integer[], $26::text[])
        AS c(run_id, workflow, status, version, created_at, updated_at, owned, consume,
             queue, priority, partition_key)
), updated AS (
    UPDATE {s}.runs r SET
        version = m.last,
        updated_at = m.updated_at,
        status = coalesce(m.status, r.status),
        epoch = CASE WHEN m.epoch = 0 THEN r.epoch + 1 ELSE r.epoch END,
        owner = CASE WHEN coalesce(m.status, r.status) IN {_TERMINAL} THEN NULL
                     WHEN {waiting} THEN NULL
                     ELSE $22::text END,
        lease_until = CASE WHEN coalesce(m.status, r.status) IN {_TERMINAL} THEN NULL
                           WHEN {waiting} THEN NULL
                           WHEN m.epoch = 0 OR r.lease_until IS NULL
                               -- held again after a release it raced: a lease that ends
                               THEN now() + $23::float8 * interval '1 second'
                           ELSE r.lease_until END,
        due_at = NULL
    FROM moved m
    WHERE r.run_id = m.run_id AND r.version = m.expected
      AND CASE WHEN m.epoch = 0
               THEN r.owner IS NULL OR r.lease_until < now() OR r.owner = $22::text
               ELSE r.epoch = m.epoch END
    RETURNING r.run_id, r.epoch, r.owner, m.consume,
        r.queue IS NOT NULL AND r.admitted_at IS NOT NULL AND r.status IN {_TERMINAL}
            AS freed
), inserted AS (
    INSERT INTO {s}.runs AS r (run_id, workflow, status, version, created_at, updated_at,
                               epoch, owner, lease_until, queue, priority, partition_key)
    SELECT run_id, workflow, status, version, created_at, updated_at,
           CASE WHEN owned THEN 1 ELSE 0 END,
           CASE WHEN owned THEN $22::text END,
           CASE WHEN owned THEN now() + $23::float8 * interval '1 second' END,
           queue, priority, partition_key
    FROM created
    ON CONFLICT (run_id) DO NOTHING
    RETURNING r.run_id, r.epoch, r.owner
), accepted AS (
    SELECT run_id, epoch, owner, consume, freed FROM updated
    UNION ALL
    SELECT i.run_id, i.epoch, i.owner, c.consume, false
    FROM inserted i JOIN created c USING (run_id)
), rows AS (
    INSERT INTO {s}.events (run_id, sequence, type, at, data, checksum, epoch, writer)
    SELECT e.run_id, e.sequence, e.type, e.at, e.data, e.checksum, a.epoch, $22::text
    FROM unnest($16::text[], $17::bigint[], $18::text[], $19::float8[], $20::text[],
                $21::bigint[]) AS e(run_id, sequence, type, at, data, checksum)
    JOIN accepted a USING (run_id)
    RETURNING 1
), consumed AS (
    DELETE FROM {s}.inbox WHERE id IN (SELECT consume FROM accepted WHERE consume IS NOT NULL)
    RETURNING 1
), claimed AS (
    INSERT INTO {s}.claims (run_id, epoch, worker)
    SELECT a.run_id, a.epoch, $22::text FROM accepted a
    WHERE a.owner IS NOT NULL AND (
        a.run_id IN (SELECT run_id FROM created)
        OR a.run_id IN (SELECT run_id FROM moved WHERE epoch = 0))
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT a.run_id, a.epoch, a.owner IS NOT NULL AS held, a.freed,
       (SELECT count(*) FROM rows) AS row_count,
       (SELECT count(*) FROM consumed) AS consumed_count,
       (SELECT count(*) FROM claimed) AS claimed_count
FROM accepted a"""
        self.why_refused = (
            f"SELECT run_id, version, epoch, owner, lease_until < now() AS expired "
            f"FROM {s}.runs WHERE run_id = ANY($1::text[])"
        )
        self.notify = "SELECT pg_notify($1, $2), nextval($3::regclass)"
        self.changes = f"SELECT last_value, is_called FROM {s}.changes"
        self.changes_name = f"{s}.changes"

        # -- the index ----------------------------------------------------------------
        # A park ($3: the epoch the worker holds, 0 for none) is fenced as an append is:
        # a worker whose claim was taken over must not park the run, nor clear the live
        # holder's lease. An unpark ($3 NULL) only clears the mark.
        self.park = f"""
WITH target AS (SELECT epoch FROM {s}.runs WHERE run_id = $1), done AS (
    UPDATE {s}.runs SET parked_reason = $2,
        owner = CASE WHEN $2::text IS NULL THEN owner END,
        lease_until = CASE WHEN $2::text IS NULL THEN lease_until END
    WHERE run_id = $1 AND CASE
        WHEN $3::bigint IS NULL THEN true
        WHEN $3::bigint = 0 THEN owner IS NULL OR owner = $4::text
        ELSE epoch = $3::bigint END
    RETURNING run_id
)
SELECT (SELECT epoch FROM target) AS epoch, EXISTS (SELECT 1 FROM done) AS done
WHERE EXISTS (SELECT 1 FROM target)"""

        # -- the inbox ----------------------------------------------------------------
        self.post = (
            f"INSERT INTO {s}.inbox (kind, run_id, at, data, checksum) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id"
        )
        self.pending = f"SELECT id, kind, run_id, at, data, checksum FROM {s}.inbox"
        # The requests this worker applies: starts, and cancels and resumes of the runs
        # it holds or that no live lease holds and that no worker of the fleet would claim
        # for it (parked, ended, gone, waiting for its queue's admission, or of a workflow
        # this worker does not run). A cancel of a runnable run that this worker could run
        # makes the run claimable (see `claim`) and is applied by whoever claims it.
        self.pending_for = f"""
SELECT i.id, i.kind, i.run_id, i.at, i.data, i.checksum FROM {s}.inbox i
LEFT JOIN {s}.runs r ON r.run_id = i.run_id
WHERE (i.kind IN ('start', 'fork')
   OR r.run_id IS NULL
   OR r.owner = $1
   OR ((r.owner IS NULL OR r.lease_until < now())
       AND (r.parked_reason IS NOT NULL OR r.status IN {_TERMINAL}
            OR ({waiting}) OR NOT (r.workflow = ANY($2::text[])))))
  AND i.id > $4 AND ($5::text[] IS NULL OR i.kind = ANY($5::text[]))
ORDER BY i.id LIMIT $3"""
        self.consume = f"DELETE FROM {s}.inbox WHERE id = $1"

        # -- removal ------------------------------------------------------------------
        self.delete_run = (
            f"WITH gone AS (DELETE FROM {s}.runs WHERE run_id = $1 AND status IN {_TERMINAL} "
            "RETURNING run_id), "
            f"ev AS (DELETE FROM {s}.events WHERE run_id IN (SELECT run_id FROM gone)), "
            f"cl AS (DELETE FROM {s}.claims WHERE run_id IN (SELECT run_id FROM gone)) "
            "SELECT count(*) FROM gone"
        )
        self.status_of = f"SELECT status FROM {s}.runs WHERE run_id = $1"
        self.prune = (
            f"WITH gone AS (DELETE FROM {s}.runs WHERE status = ANY($1::text[]) "
            "AND updated_at < $2 RETURNING run_id), "
            f"ev AS (DELETE FROM {s}.events WHERE run_id IN (SELECT run_id FROM gone)), "
            f"cl AS (DELETE FROM {s}.claims WHERE run_id IN (SELECT run_id FROM gone)) "
            "SELECT count(*) FROM gone"
        )

        # -- workers ------------------------------------------------------------------
        self.register = (
            f"INSERT INTO {s}.workers (worker_id, pid, host, workflows) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (worker_id) DO UPDATE SET "
            "pid = excluded.pid, host = excluded.host, workflows = excluded.workflows, "
            "seen_at = now()"
        )
        self.unregister = f"DELETE FROM {s}.workers WHERE worker_id = $1"
        self.live_workers = (
            f"SELECT pid, workflows FROM {s}.workers "
            "WHERE seen_at > now() - $1::float8 * interval '1 second' ORDER BY seen_at DESC"
        )

        # -- leases -------------------------------------------------------------------
        # Claim runnable runs: new or orphaned (no live lease), due (sleeps and retries
        # whose time came, within `lookahead` seconds), or with a cancel or resume waiting
        # in the inbox. SKIP LOCKED: two workers claiming at once take different runs.
        # A worker takes at most its fair share: each runnable or running run of its
        # workflows counts for 1 / the live workers that run that workflow (a run only
        # this worker can run counts whole), less what it holds, so that a burst of
        # new runs spreads over the fleet instead of going to whoever looked first.
        # A run on a queue is runnable once admitted, and until it ends.
        runnable = (
            "r.status IN ('pending', 'running') AND r.parked_reason IS NULL "
            "AND r.workflow = ANY($2::text[]) AND (r.queue IS NULL OR r.admitted_at IS NOT NULL)"
        )
        due = (
            "(r.due_at IS NULL OR r.due_at <= extract(epoch FROM now()) + $4::float8 "
            f"OR EXISTS (SELECT 1 FROM {s}.inbox i WHERE i.run_id = r.run_id))"
        )
        self.claim = f"""
WITH share AS (
    SELECT greatest(0, least($3::bigint,
        ceil(coalesce((
            SELECT sum(g.runs::numeric / greatest(1, (
                SELECT count(*) FROM {s}.workers w
                WHERE w.seen_at > now() - $5::float8 * interval '1 second'
                  AND g.workflow = ANY(w.workflows))))
            FROM (SELECT r.workflow, count(*) AS runs FROM {s}.runs r
                  WHERE {runnable} AND {due}
                  GROUP BY r.workflow) g), 0)
        )::bigint - (SELECT count(*) FROM {s}.runs WHERE owner = $1))) AS n
), c AS (
    SELECT r.run_id FROM {s}.runs r
    WHERE {runnable}
      AND (r.owner IS NULL OR r.lease_until < now())
      AND {due}
    ORDER BY r.due_at NULLS FIRST, r.id
    LIMIT (SELECT n FROM share)
    FOR UPDATE OF r SKIP LOCKED
), taken AS (
    UPDATE {s}.runs r SET owner = $1, epoch = r.epoch + 1,
        lease_until = now() + $5::float8 * interval '1 second', due_at = NULL
    FROM c WHERE r.run_id = c.run_id
    RETURNING r.run_id, r.epoch
), logged AS (
    INSERT INTO {s}.claims (run_id, epoch, worker) SELECT run_id, epoch, $1 FROM taken
)
SELECT run_id, epoch FROM taken"""
        # Renew every lease this worker holds, in one statement; the rows not returned
        # were taken over (or ended, or removed).
        self.renew = f"""
WITH held AS (
    SELECT * FROM unnest($2::text[], $3::bigint[]) AS h(run_id, epoch)
), renewed AS (
    UPDATE {s}.runs r SET lease_until = now() + $4::float8 * interval '1 second'
    FROM held h WHERE r.run_id = h.run_id AND r.epoch = h.epoch AND r.owner = $1
    RETURNING r.run_id
), seen AS (
    UPDATE {s}.workers SET seen_at = now() WHERE worker_id = $1
)
SELECT run_id FROM renewed"""
        # Let go of runs this worker holds: at once claimable, or due at `due_at`.
        self.release = f"""
WITH let AS (
    SELECT * FROM unnest($2::text[], $3::bigint[], $4::float8[]) AS l(run_id, epoch, due_at)
)
UPDATE {s}.runs r SET owner = NULL, lease_until = NULL, due_at = l.due_at
FROM let l WHERE r.run_id = l.run_id AND r.epoch = l.epoch AND r.owner = $1
RETURNING r.run_id"""
        self.release_all = (
            f"UPDATE {s}.runs SET owner = NULL, lease_until = NULL WHERE owner = $1 "
            "RETURNING run_id"
        )
        self.next_due = (
            f"SELECT min(due_at) - extract(epoch FROM now()) FROM {s}.runs "
            "WHERE status IN ('pending', 'running') AND parked_reason IS NULL "
            "AND owner IS NULL AND due_at IS NOT NULL AND workflow = ANY($1::text[])"
        )


def map_error(exc: BaseException, where: str, run_id: str | None = None) -> StoreError:
    """The `StoreError` that says what a driver error means for the store.

    This is the only place where asyncpg and OS errors become aruntime errors.
    """
    if isinstance(exc, StoreError):
        return exc
    import asyncpg  # noqa: PLC0415 - the driver is loaded with the store only

    detail = str(exc) or type(exc).__name__
    code = getattr(exc, "sqlstate", None) or ""
    if is_connection_error(exc):
        return StoreConnectionError(
            f"{where}: the connection to PostgreSQL failed ({type(exc).__name__}: {detail}); "
            "check that the server runs and is reachable (an append that failed so may have "
            "been committed: the run's log says)",
            run_id=run_id,
        )
    if isinstance(
        exc,
        asyncpg.exceptions.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
    ):
        return StoreConnectionError(
            f"{where}: PostgreSQL refused the login: {detail}", run_id=run_id
        )
    if code.startswith("53"):  # insufficient resources: disk full, out of memory, ...
        return StoreFullError(
            f"{where}: {detail}; PostgreSQL is out of resources (everything acknowledged "
            "before is intact)",
            run_id=run_id,
        )
    if code == "25006" or code.startswith("42501"):
        return StoreReadOnlyError(
            f"{where}: {detail}; the database or role cannot write", run_id=run_id
        )
    if code in ("55P03", "40P01", "57014"):
        return StoreLockedError(f"{where}: {detail}", run_id=run_id)
    if code.startswith("XX"):
        return StoreCorruptError(f"{where}: {detail}", run_id=run_id)
    return StoreError(f"{where}: {type(exc).__name__}: {detail}", run_id=run_id)


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says the link to the server is down (and may come back)."""
    import asyncpg  # noqa: PLC0415 - the driver is loaded with the store only

    if isinstance(exc, OSError | ConnectionError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return "connection" in text or "closed" in text or "closing" in text
    code = getattr(exc, "sqlstate", None) or ""
    # 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot
    # connect now (the server is starting or stopping).
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")
