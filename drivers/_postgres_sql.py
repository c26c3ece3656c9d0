"""The SQL of the Postgres driver: the schema, and one parameterized statement per operation.

``{s}`` is the quoted schema name (validated by the driver), ``{guard}`` the lease check of
a write (a constant row when unfenced, the locked lease row when fenced); ``finish_run``,
fenced only, embeds the fenced guard itself. Every value is a parameter: no statement is
ever built from data.

Lock order (ARCHITECTURE.md, "Postgres lock order"): fenced writes, ``finish_run``,
``claim`` and ``cancel`` take the workflow's lease row first, then kv, the index row and the
alarm, in that order. ``claim_due`` finds its candidates by their alarm, so it locks the
alarm first (SKIP LOCKED), then the lease. ``cancel`` therefore never waits for an alarm
row: it skips one a claim holds (that claim then finds the workflow cancelled, and its
``finish_run`` settles the alarm), so the two cannot deadlock. ``create_workflow`` inserts
the index row first: an eager start (``create_workflow`` with an owner) and a ``claim`` of
the same new id at the same instant can deadlock, and Postgres fails one of them after
``deadlock_timeout`` (a ``StorageError``, nothing half-written).
"""

DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.kv (
    workflow_id text COLLATE "C" NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (workflow_id, key));
CREATE TABLE IF NOT EXISTS {s}.alarms (
    workflow_id text COLLATE "C" PRIMARY KEY, wake_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS alarms_wake_at ON {s}.alarms (wake_at);
CREATE TABLE IF NOT EXISTS {s}.leases (
    workflow_id text COLLATE "C" PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL,
    expires_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.workflows (
    workflow_id text COLLATE "C" PRIMARY KEY, name text NOT NULL, state text NOT NULL,
    updated_at double precision NOT NULL DEFAULT 0);
-- Version 3 added updated_at: a version-2 table gains it in place (a constant default
-- rewrites nothing); its rows read 0, the oldest possible update.
ALTER TABLE {s}.workflows ADD COLUMN IF NOT EXISTS updated_at double precision NOT NULL
    DEFAULT 0;
CREATE INDEX IF NOT EXISTS workflows_state ON {s}.workflows (state, workflow_id);
CREATE INDEX IF NOT EXISTS workflows_updated ON {s}.workflows (updated_at DESC, workflow_id);
CREATE OR REPLACE FUNCTION {s}.claim_due(
    p_now float8, p_limit integer, p_owner text, p_expires float8)
RETURNS TABLE (claimed_id text, claimed_token bigint, claimed_wake float8,
    ns_keys bytea[], ns_vals bytea[])
LANGUAGE plpgsql AS $fn$
DECLARE ids text[]; tokens bigint[]; wakes float8[];
BEGIN
    -- SKIP LOCKED lets workers claim side by side; the ON CONFLICT condition re-checks
    -- expiry on the latest row version, so a lease taken meanwhile is never stolen.
    WITH due AS (
        SELECT a.workflow_id, a.wake_at FROM {s}.alarms a
        LEFT JOIN {s}.leases l ON l.workflow_id = a.workflow_id
        WHERE a.wake_at <= p_now AND (l.workflow_id IS NULL OR l.expires_at <= p_now)
        ORDER BY a.wake_at LIMIT p_limit FOR UPDATE OF a SKIP LOCKED),
    claimed AS (INSERT INTO {s}.leases AS l (workflow_id, owner, token, expires_at)
        SELECT due.workflow_id, p_owner, 1, p_expires FROM due
        ON CONFLICT (workflow_id) DO UPDATE
            SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
            WHERE l.expires_at <= p_now
        RETURNING l.workflow_id, l.token)
    SELECT array_agg(c.workflow_id ORDER BY d.wake_at), array_agg(c.token ORDER BY d.wake_at),
        array_agg(d.wake_at ORDER BY d.wake_at)
    INTO ids, tokens, wakes FROM claimed c JOIN due d ON d.workflow_id = c.workflow_id;
    -- A second statement takes a fresh snapshot: it sees a write by the previous holder
    -- that committed while the claim above waited for that lease row's lock.
    RETURN QUERY SELECT u.id, u.token, u.wake, ns.keys, ns.vals
    FROM unnest(ids, tokens, wakes) WITH ORDINALITY AS u(id, token, wake, ord)
    CROSS JOIN LATERAL (SELECT array_agg(kv.key ORDER BY kv.key) AS keys,
        array_agg(kv.value ORDER BY kv.key) AS vals
        FROM {s}.kv WHERE kv.workflow_id = u.id) ns
    ORDER BY u.ord;
END
$fn$;
-- One workflow's lease, due or not (run_workflow's): the same two statements as claim_due.
-- The index row is registered (or its updated_at set) only once the lease is taken.
CREATE OR REPLACE FUNCTION {s}.claim(
    p_id text, p_owner text, p_expires float8, p_now float8, p_name text)
RETURNS TABLE (claimed_token bigint, claimed_wake float8, ns_keys bytea[], ns_vals bytea[])
LANGUAGE plpgsql AS $fn$
DECLARE taken bigint;
BEGIN
    INSERT INTO {s}.leases AS l (workflow_id, owner, token, expires_at)
    VALUES (p_id, p_owner, 1, p_expires)
    ON CONFLICT (workflow_id) DO UPDATE
        SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
        WHERE l.expires_at <= p_now
    RETURNING l.token INTO taken;
    IF taken IS NULL THEN
        RETURN;  -- a live lease: nothing changes
    END IF;
    INSERT INTO {s}.workflows AS w (workflow_id, name, state, updated_at)
    VALUES (p_id, p_name, 'pending', p_now)
    ON CONFLICT (workflow_id) DO UPDATE SET updated_at = EXCLUDED.updated_at;
    -- A fresh snapshot, as in claim_due: the previous holder's last write is in it.
    RETURN QUERY SELECT taken, (SELECT a.wake_at FROM {s}.alarms a WHERE a.workflow_id = p_id),
        array_agg(kv.key ORDER BY kv.key), array_agg(kv.value ORDER BY kv.key)
    FROM {s}.kv WHERE kv.workflow_id = p_id;
END
$fn$;
"""

# Every kv write runs behind a ``guard`` CTE ($1 workflow id, $2 token, $3 now) that has one
# row when the write may happen: a constant row when unfenced, the locked lease when fenced.
GUARDS = {
    "": "guard AS (SELECT $2::bigint AS token, $3::float8 AS now)",
    " fenced": "guard AS (SELECT token FROM {s}.leases"
    " WHERE workflow_id = $1 AND token = $2 AND expires_at > $3 FOR SHARE)",
}
# Prefix scans have two spellings ("... to end" has no upper bound) so that each prepared
# plan is a plain index range scan.
KV_WRITES = {
    # A batch uses the shape it needs: an empty DELETE CTE alone cost ~0.23 ms per statement
    # (measured), and most flushes delete nothing.
    "upsert": """WITH {guard},
up AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM unnest($4::bytea[], $5::bytea[]) AS t(k, v)
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value)
SELECT count(*) FROM guard""",
    "delete_keys": """WITH {guard},
del AS (DELETE FROM {s}.kv WHERE workflow_id = $1 AND key = ANY($4::bytea[])
    AND EXISTS (SELECT FROM guard))
SELECT count(*) FROM guard""",
    # Collapsed batch: each key appears once, so no CTE touches a row twice.
    "batch": """WITH {guard},
up AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM unnest($4::bytea[], $5::bytea[]) AS t(k, v)
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value),
del AS (DELETE FROM {s}.kv WHERE workflow_id = $1 AND key = ANY($6::bytea[])
    AND EXISTS (SELECT FROM guard))
SELECT count(*) FROM guard""",
    "delete_range": """WITH {guard}, del AS (DELETE FROM {s}.kv
    WHERE workflow_id = $1 AND key >= $4 AND key < $5 AND EXISTS (SELECT FROM guard))
SELECT count(*) FROM guard""",
    "delete_range to end": """WITH {guard}, del AS (DELETE FROM {s}.kv
    WHERE workflow_id = $1 AND key >= $4 AND $5::bytea IS NULL AND EXISTS (SELECT FROM guard))
SELECT count(*) FROM guard""",
}
# Creation inserts the index row (updated at $6) and, only if it was new, the namespace and
# the alarm. Columns: created, the registered name (NULL when another creator committed after
# this statement's snapshot: ON CONFLICT sees that row, a SELECT here cannot), a lease token.
_CREATE = """WITH ins AS (INSERT INTO {s}.workflows (workflow_id, name, state, updated_at)
    VALUES ($1, $2, 'pending', $6)
    ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id),
kv AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT workflow_id, k, v FROM ins, unnest($3::bytea[], $4::bytea[]) AS t(k, v)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value),
alarm AS (INSERT INTO {s}.alarms SELECT workflow_id, $5 FROM ins
    ON CONFLICT (workflow_id) DO UPDATE SET wake_at = EXCLUDED.wake_at)"""
_CREATED = """
SELECT EXISTS (SELECT FROM ins),
    coalesce((SELECT $2::text FROM ins), (SELECT name FROM {s}.workflows WHERE workflow_id = $1)),
"""
STATEMENTS = {
    # The most frequent write of all (an unfenced flush that deletes nothing) without the
    # guard CTE, which for an unfenced driver is a constant row.
    "upsert unfenced": """INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value""",
    "get": "SELECT value FROM {s}.kv WHERE workflow_id = $1 AND key = $2",
    "list": "SELECT key, value FROM {s}.kv WHERE workflow_id = $1 AND key >= $2 AND key < $3"
    " ORDER BY key",
    "list to end": "SELECT key, value FROM {s}.kv WHERE workflow_id = $1 AND key >= $2"
    " AND $3::bytea IS NULL ORDER BY key",
    "set_alarm": "WITH up AS (INSERT INTO {s}.alarms VALUES ($1, $2) ON CONFLICT (workflow_id)"
    " DO UPDATE SET wake_at = EXCLUDED.wake_at) SELECT pg_notify($3, $1)",
    "clear_alarm": "DELETE FROM {s}.alarms WHERE workflow_id = $1",
    "due_alarms": "SELECT workflow_id, wake_at FROM {s}.alarms WHERE wake_at <= $1"
    " ORDER BY wake_at, workflow_id LIMIT $2",
    "workflow_info": "SELECT name, state FROM {s}.workflows WHERE workflow_id = $1",
    "list_workflows": "SELECT workflow_id FROM {s}.workflows"
    " WHERE $1::text IS NULL OR state = $1 ORDER BY workflow_id LIMIT $2",
    # The claim runs in a function (schema above) because it needs two statements, and so
    # two snapshots, in one round trip. Each claim carries its namespace (keys and values
    # in key order, NULL when empty), so the run needs no other round trip to start.
    "claim_due": "SELECT * FROM {s}.claim_due($1, $2, $3, $4)",
    "renew": "UPDATE {s}.leases SET expires_at = $4"
    " WHERE workflow_id = $1 AND token = $2 AND expires_at > $3 RETURNING true",
    # Expire rather than delete: the row keeps the token, so tokens never repeat.
    "release": "UPDATE {s}.leases SET expires_at = '-infinity' WHERE workflow_id = $1"
    " AND token = $2",
    "notify": "SELECT pg_notify($1, $2)",
    # $1 id, $2 name, $3 and $4 keys and values (each key once), $5 wake_at, $6 now, $7 the
    # alarm channel: idle workers wake for the new alarm.
    "create_workflow": _CREATE + _CREATED + "    NULL::bigint, (SELECT pg_notify($7, $1) FROM ins)",
    # The same claimed for $7 (owner) until $8, without a wake-up: no one else may run it.
    # A lease row can only predate the index row if an alarm was set by hand; it is taken.
    "create_workflow claimed": _CREATE
    + """,
claim AS (INSERT INTO {s}.leases AS l (workflow_id, owner, token, expires_at)
    SELECT workflow_id, $7, 1, $8 FROM ins
    ON CONFLICT (workflow_id) DO UPDATE
        SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    RETURNING token)"""
    + _CREATED
    + "    (SELECT token FROM claim)",
    # $1 id, $2 owner, $3 expires_at, $4 now, $5 name (schema above): token, alarm, namespace.
    "claim": "SELECT * FROM {s}.claim($1, $2, $3, $4, $5)",
    # A message ($2 a fresh key, $3 its value) lands with its alarm $4, or neither does;
    # both wake-ups ($5 the alarm channel, $6 the messages channel with the payload $7) are
    # sent at commit, so only for what landed.
    "post_message": """WITH msg AS (INSERT INTO {s}.kv (workflow_id, key, value) VALUES ($1, $2, $3)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value),
alarm AS (INSERT INTO {s}.alarms (workflow_id, wake_at) VALUES ($1, $4)
    ON CONFLICT (workflow_id) DO UPDATE SET wake_at = EXCLUDED.wake_at)
SELECT pg_notify($6, $7), pg_notify($5, $1)""",
    # $1 id, $2 now, $3 and $4 upserts, $5 deletes, $6 and $7 the messages channel and
    # payload. The lease is revoked first (the main query reads it, every other part waits
    # for it through ``gate``), as every holder's write takes it first; an expiry of
    # -infinity keeps the token, so the next claim's is higher. The alarm is deleted unless
    # a claim holds it (SKIP LOCKED, see the module docstring).
    "cancel": """WITH rev AS (UPDATE {s}.leases SET expires_at = '-infinity' WHERE workflow_id = $1
    RETURNING token),
gate AS (SELECT count(*) AS revoked FROM rev),
up AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM gate, unnest($3::bytea[], $4::bytea[]) AS t(k, v)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value),
del AS (DELETE FROM {s}.kv WHERE workflow_id = $1 AND key = ANY($5::bytea[])
    AND EXISTS (SELECT FROM gate)),
idx AS (UPDATE {s}.workflows SET state = 'cancelled', updated_at = $2 WHERE workflow_id = $1
    AND EXISTS (SELECT FROM gate)),
held AS (SELECT workflow_id FROM {s}.alarms WHERE workflow_id = $1
    AND EXISTS (SELECT FROM gate) FOR UPDATE SKIP LOCKED),
unalarm AS (DELETE FROM {s}.alarms WHERE workflow_id IN (SELECT workflow_id FROM held))
SELECT pg_notify($6, $7) FROM gate""",
}

# The index as rows ($1 now): a live lease (expires_at > now) reads as ``running``, so
# ``running`` selects by lease, the other states by the index (and no live lease).
_ROWS = """SELECT w.workflow_id, w.name, {state}, a.wake_at, w.updated_at FROM {{s}}.workflows w
{lease} JOIN {{s}}.leases l ON l.workflow_id = w.workflow_id AND l.expires_at > $1
LEFT JOIN {{s}}.alarms a ON a.workflow_id = w.workflow_id
"""
_EITHER = "CASE WHEN l.workflow_id IS NULL THEN w.state ELSE 'running' END"
# Most recently updated first ($2 the name or NULL, $3 the limit, $4 a state): the order of
# the workflows_updated index, so a listing reads only its first rows.
_LATEST = "AND ($2::text IS NULL OR w.name = $2) ORDER BY w.updated_at DESC, w.workflow_id LIMIT $3"
STATEMENTS |= {
    "workflow_row": _ROWS.format(state=_EITHER, lease="LEFT") + "WHERE w.workflow_id = $2",
    "workflow_rows": _ROWS.format(state=_EITHER, lease="LEFT") + "WHERE true " + _LATEST,
    "workflow_rows running": _ROWS.format(state="'running'", lease="") + "WHERE true " + _LATEST,
    "workflow_rows state": _ROWS.format(state="w.state", lease="LEFT")
    + "WHERE w.state = $4 AND l.workflow_id IS NULL "
    + _LATEST,
}

# The end of a run, fenced like a kv write ($1 id, $2 token, $3 now): the batch ($4, $5
# upserts, $6 deletes, each key once), the index state $7, the alarm settled from the
# claimed $8 to the run's $9 (engine.store.settled_alarm) and the lease released. The alarm
# conditions sit in ON CONFLICT and WHERE, which Postgres re-checks on the latest row
# version, so an alarm set by a message meanwhile is never lost. An alarm set due wakes
# idle workers ($10 the alarm channel); the run's end wakes its subscribers ($11 the
# messages channel, $12 the payload naming the workflow), at commit. Like a batch, each
# call uses only the parts it needs (no delete when nothing is deleted, one of the two alarm
# parts): unused CTEs still cost execution time.
_FINISH_PARTS = {
    "up": """up AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM unnest($4::bytea[], $5::bytea[]) AS t(k, v)
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value)""",
    "del": """del AS (DELETE FROM {s}.kv WHERE workflow_id = $1 AND key = ANY($6::bytea[])
    AND EXISTS (SELECT FROM guard))""",
    "idx": """idx AS (INSERT INTO {s}.workflows (workflow_id, name, state, updated_at)
    SELECT $1, '', $7, $3 FROM guard
    ON CONFLICT (workflow_id) DO UPDATE
        SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at)""",
    "alarm": """alarm AS (INSERT INTO {s}.alarms AS a SELECT $1, $9::float8 FROM guard
    ON CONFLICT (workflow_id) DO UPDATE SET wake_at = EXCLUDED.wake_at
        WHERE a.wake_at = $8::float8 OR a.wake_at > EXCLUDED.wake_at
    RETURNING wake_at)""",
    "unalarm": """unalarm AS (DELETE FROM {s}.alarms WHERE workflow_id = $1 AND wake_at = $8
    AND EXISTS (SELECT FROM guard))""",
    "rel": """rel AS (UPDATE {s}.leases SET expires_at = '-infinity' WHERE workflow_id = $1
    AND token = $2 AND EXISTS (SELECT FROM guard))""",
}


def _finish_run(deletes: bool, wake: bool) -> str:
    parts = [GUARDS[" fenced"], _FINISH_PARTS["up"]]
    parts += [_FINISH_PARTS["del"]] if deletes else []
    parts += [_FINISH_PARTS["idx"], _FINISH_PARTS["alarm" if wake else "unalarm"]]
    parts += [_FINISH_PARTS["rel"]]
    notify = "(SELECT pg_notify($10, $1) FROM alarm WHERE wake_at <= $3)" if wake else "NULL"
    # Only a run that ended for good wakes the workflow's subscribers (a waiting client):
    # a NOTIFY holds a cluster-wide lock until its commit is on disk, so concurrent run
    # ends would queue behind each other for every suspension too.
    notify += ", (SELECT pg_notify($11, $12) FROM guard"
    notify += " WHERE $7::text IN ('completed', 'failed', 'cancelled'))"
    # Every parameter appears, so one argument list fits all four shapes.
    unused = "" if deletes else ", $6::bytea[] IS NULL"
    unused += "" if wake else ", $9::float8 IS NULL, $10::text IS NULL"
    return "WITH " + ",\n".join(parts) + f"\nSELECT (SELECT count(*) FROM guard), {notify}{unused}"


for _deletes in (False, True):
    for _wake in (False, True):
        STATEMENTS["finish_run" + (" del" if _deletes else "") + (" wake" if _wake else "")] = (
            _finish_run(_deletes, _wake)
        )
