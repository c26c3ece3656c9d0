"""The SQL of the Postgres driver: the schema, and one parameterized statement per operation.

``{s}`` is the quoted schema name (validated by the driver), ``{guard}`` the lease check of
a write (a constant row when unfenced, the locked lease row when fenced). Every value is a
parameter: no statement is ever built from data.
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
    "register_workflow": "INSERT INTO {s}.workflows VALUES ($1, $2, $3)"
    " ON CONFLICT (workflow_id) DO NOTHING RETURNING true",
    "set_index_state": "INSERT INTO {s}.workflows VALUES ($1, '', $2)"
    " ON CONFLICT (workflow_id) DO UPDATE SET state = EXCLUDED.state",
    "workflow_info": "SELECT name, state FROM {s}.workflows WHERE workflow_id = $1",
    "list_workflows": "SELECT workflow_id FROM {s}.workflows"
    " WHERE $1::text IS NULL OR state = $1 ORDER BY workflow_id LIMIT $2",
    # SKIP LOCKED lets workers claim side by side; the ON CONFLICT condition re-checks expiry
    # on the latest row version, so a lease taken meanwhile by another worker is never stolen.
    "claim_due": """WITH due AS (
    SELECT a.workflow_id, a.wake_at FROM {s}.alarms a
    LEFT JOIN {s}.leases l ON l.workflow_id = a.workflow_id
    WHERE a.wake_at <= $1 AND (l.workflow_id IS NULL OR l.expires_at <= $1)
    ORDER BY a.wake_at LIMIT $2 FOR UPDATE OF a SKIP LOCKED),
claimed AS (INSERT INTO {s}.leases AS l (workflow_id, owner, token, expires_at)
    SELECT workflow_id, $3, 1, $4 FROM due
    ON CONFLICT (workflow_id) DO UPDATE
        SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
        WHERE l.expires_at <= $1
    RETURNING workflow_id, token)
SELECT workflow_id, token, wake_at FROM claimed JOIN due USING (workflow_id)
ORDER BY wake_at""",
    "renew": "UPDATE {s}.leases SET expires_at = $4"
    " WHERE workflow_id = $1 AND token = $2 AND expires_at > $3 RETURNING true",
    # Expire rather than delete: the row keeps the token, so tokens never repeat.
    "release": "UPDATE {s}.leases SET expires_at = '-infinity' WHERE workflow_id = $1"
    " AND token = $2",
    # Compare-and-delete: an alarm set since the claim (new message, next deadline) survives.
    "settle_alarm": "DELETE FROM {s}.alarms WHERE workflow_id = $1 AND wake_at = $2",
    "notify": "SELECT pg_notify($1, $2)",
}
