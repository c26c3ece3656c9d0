"""The SQL of the Postgres driver: the schema, and one parameterized statement per operation.

``{s}`` is the quoted schema name (validated by the driver), ``{guard}`` the lease check of
a write (a constant row when unfenced, the locked lease row when fenced); ``finish_run``,
fenced only, embeds the fenced guard itself. Every value is a parameter: no statement is
ever built from data.
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
    workflow_id text COLLATE "C" PRIMARY KEY, name text NOT NULL, state text NOT NULL);
CREATE INDEX IF NOT EXISTS workflows_state ON {s}.workflows (state, workflow_id);
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
# Creation inserts the index row and, only if it was new, the namespace and the alarm.
# Columns: created, the registered name (NULL when another creator committed after this
# statement's snapshot: ON CONFLICT sees that row, a SELECT here cannot) and a lease token.
_CREATE = """WITH ins AS (INSERT INTO {s}.workflows VALUES ($1, $2, 'pending')
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
    # $1 id, $2 name, $3 and $4 keys and values (each key once), $5 wake_at, $6 the alarm
    # channel: idle workers wake for the new alarm.
    "create_workflow": _CREATE + _CREATED + "    NULL::bigint, (SELECT pg_notify($6, $1) FROM ins)",
    # The same claimed for $6 (owner) until $7, without a wake-up: no one else may run it.
    # A lease row can only predate the index row if an alarm was set by hand; it is taken.
    "create_workflow claimed": _CREATE
    + """,
claim AS (INSERT INTO {s}.leases AS l (workflow_id, owner, token, expires_at)
    SELECT workflow_id, $6, 1, $7 FROM ins
    ON CONFLICT (workflow_id) DO UPDATE
        SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    RETURNING token)"""
    + _CREATED
    + "    (SELECT token FROM claim)",
}

# The end of a run, fenced like a kv write ($1 id, $2 token, $3 now): the batch ($4, $5
# upserts, $6 deletes, each key once), the index state $7, the alarm settled from the
# claimed $8 to the run's $9 (engine.store.settled_alarm) and the lease released. The alarm
# conditions sit in ON CONFLICT and WHERE, which Postgres re-checks on the latest row
# version, so an alarm set by a message meanwhile is never lost. An alarm set due wakes
# idle workers ($10 the alarm channel). Like a batch, each call uses only the parts it
# needs (no delete when nothing is deleted, one of the two alarm parts): unused CTEs
# still cost execution time.
_FINISH_PARTS = {
    "up": """up AS (INSERT INTO {s}.kv (workflow_id, key, value)
    SELECT $1, k, v FROM unnest($4::bytea[], $5::bytea[]) AS t(k, v)
    WHERE EXISTS (SELECT FROM guard)
    ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value)""",
    "del": """del AS (DELETE FROM {s}.kv WHERE workflow_id = $1 AND key = ANY($6::bytea[])
    AND EXISTS (SELECT FROM guard))""",
    "idx": """idx AS (INSERT INTO {s}.workflows SELECT $1, '', $7 FROM guard
    ON CONFLICT (workflow_id) DO UPDATE SET state = EXCLUDED.state)""",
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
    # Every parameter appears, so one argument list fits all four shapes.
    unused = "" if deletes else ", $6::bytea[] IS NULL"
    unused += "" if wake else ", $9::float8 IS NULL, $10::text IS NULL"
    return "WITH " + ",\n".join(parts) + f"\nSELECT (SELECT count(*) FROM guard), {notify}{unused}"


for _deletes in (False, True):
    for _wake in (False, True):
        STATEMENTS["finish_run" + (" del" if _deletes else "") + (" wake" if _wake else "")] = (
            _finish_run(_deletes, _wake)
        )
