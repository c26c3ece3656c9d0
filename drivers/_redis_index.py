"""The Redis store's index, read: ``workflow_info``, ``list_workflows``, ``workflow_rows``
and ``workflow_row`` (``engine.store.WorkflowIndex``), mixed into ``RedisStore``.

A row joins what the store keeps apart: name and state (``info``), a live lease (the
workflow's ``lease`` hash: ``exp`` after now makes it ``running``), the alarm (``alarms``)
and the last update (``updated``, scored by ``-updated_at``, so that rank order is newest
first and then by id, the order every store lists in). Listing walks ``updated`` in pages of
``PAGE`` ids, one script call per page, so however few rows match a filter no call holds
Redis for longer than a page; then, once, the ids registered before ``updated`` existed (in
``all`` but not scored: ``updated_at`` 0.0), in id order. A state other than ``running``
whose set holds at most a page of ids is read whole instead, in one call.
"""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis

from drivers._common import ErrorMap
from drivers._redis_batching import ScriptCalls
from drivers._redis_scripts import HEX
from engine.store import WorkflowRow

PAGE = 1000
"""Index entries one script call looks at, at most (about a millisecond of Redis time)."""

# Phases of a listing: 0 the small-state-set shortcut, 1 ``updated`` in rank order, 2 ids
# without an update time, 3 done.
_DONE = 3

# index_row(info, alarms, updated, id, now, head, tail): {id, name, state, alarm, updated
# score} ('' for no alarm, no score), or false for an id the index does not hold.
INDEX_ROW = (
    HEX
    + """
local function index_row(info, alarms, updated, id, now, head, tail)
  local fields = redis.call('HMGET', info, 'n' .. id, 's' .. id)
  if not fields[1] then return false end
  local state = fields[2] or ''
  local exp = redis.call('HGET', head .. hex(id) .. tail .. ':lease', 'exp')
  if exp and tonumber(exp) > now then state = 'running' end
  local alarm = redis.call('ZSCORE', alarms, id) or ''
  return {id, fields[1], state, alarm, redis.call('ZSCORE', updated, id) or ''}
end
"""
)

# KEYS: info, alarms, updated. ARGV: id, now, workflow key head ('N:w:{#'), its tail ('}').
ROW = (
    INDEX_ROW
    + """
return index_row(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4])
"""
)

# KEYS: info, alarms, updated, all, the state's set (all when no state is asked for). ARGV:
# now, key head, key tail, state ('' = any), '1' to match the name, the name, limit, phase,
# offset, page. Returns {phase, offset, {row, ...}}: the call to make next (phase 3: none).
# The shortcut (phase 0) returns every match of the state's set, unsorted.
ROWS = (
    INDEX_ROW
    + """
local now, head, tail = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local state, by_name, name = ARGV[4], ARGV[5] == '1', ARGV[6]
local limit, phase, offset = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local page = tonumber(ARGV[10])
local out = {}
local function take(id)
  local row = index_row(KEYS[1], KEYS[2], KEYS[3], id, now, head, tail)
  if row and (state == '' or row[3] == state) and ((not by_name) or row[2] == name) then
    out[#out + 1] = row
  end
  return #out >= limit
end
if phase == 0 then
  if state ~= '' and state ~= 'running' and redis.call('ZCARD', KEYS[5]) <= page then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do take(id) end
    return {3, 0, out}
  end
  phase = 1
end
if phase == 1 then
  local ids = redis.call('ZRANGE', KEYS[3], offset, offset + page - 1)
  for i, id in ipairs(ids) do
    if take(id) then return {1, offset + i, out} end
  end
  if #ids == page then return {1, offset + page, out} end
  if redis.call('ZCARD', KEYS[3]) >= redis.call('ZCARD', KEYS[4]) then return {3, 0, out} end
  return {2, 0, out}
end
local ids = redis.call('ZRANGE', KEYS[4], offset, offset + page - 1)
for i, id in ipairs(ids) do
  if (not redis.call('ZSCORE', KEYS[3], id)) and take(id) then return {2, offset + i, out} end
end
if #ids == page then return {2, offset + page, out} end
return {3, 0, out}
"""
)


def _parse_row(raw: list[bytes]) -> WorkflowRow:
    workflow_id, name, state, alarm, score = raw
    return WorkflowRow(
        workflow_id.decode(),
        name.decode(),
        state.decode(),
        float(alarm) if alarm else None,  # Redis prints 17 digits: the float comes back exact
        -float(score) if score else 0.0,
    )


def _newest_first(row: WorkflowRow) -> tuple[float, str]:
    return -row.updated_at, row.workflow_id


class IndexReads:
    """What ``RedisStore`` reads of its index; it provides these attributes."""

    _client: aioredis.Redis
    _scripts: ScriptCalls
    _errors: ErrorMap
    _info: str
    _alarms: str
    _all: str
    _updated: str
    _state_head: str
    _key_parts: list[str]  # a workflow key's head and tail, around the id's hex

    async def workflow_info(self, workflow_id: str) -> tuple[str, str] | None:
        with self._errors("workflow_info"):
            fields = await self._client.hmget(self._info, "n" + workflow_id, "s" + workflow_id)
        name, state = cast("list[bytes | None]", fields)
        if name is None:
            return None
        return name.decode(), (state or b"").decode()

    async def list_workflows(self, state: str | None = None, limit: int = 1000) -> list[str]:
        key = self._all if state is None else self._state_head + state
        with self._errors("list_workflows"):
            ids: list[bytes] = await self._client.zrangebylex(  # type: ignore[assignment]
                key, "-", "+", start=0, num=limit
            )
        return [member.decode() for member in ids]

    async def workflow_rows(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRow]:
        """The pages are separate calls: a workflow updated meanwhile moves to the front of
        ``updated`` and shifts the ids behind it, so a later page may see an id again (kept
        once); none is skipped."""
        keys = [self._info, self._alarms, self._updated, self._all]
        keys.append(self._all if state is None else self._state_head + state)
        fixed = [repr(time.time()), *self._key_parts, state or "", "0" if name is None else "1"]
        fixed.append(name or "")
        rows: dict[str, WorkflowRow] = {}
        phase, offset = 0, 0
        while phase != _DONE and len(rows) < limit:
            args = [*fixed, limit - len(rows), phase, offset, PAGE]
            with self._errors("workflow_rows"):
                phase, offset, found = await self._scripts("rows", keys, args)
            for raw in found:
                row = _parse_row(raw)
                rows.setdefault(row.workflow_id, row)
        return sorted(rows.values(), key=_newest_first)[: max(limit, 0)]

    async def workflow_row(self, workflow_id: str) -> WorkflowRow | None:
        keys = [self._info, self._alarms, self._updated]
        args = [workflow_id, repr(time.time()), *self._key_parts]
        with self._errors("workflow_row"):
            raw = await self._scripts("row", keys, args)
        return None if raw is None else _parse_row(raw)
