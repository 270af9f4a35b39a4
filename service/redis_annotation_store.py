"""The webhook annotation store in Redis, for scale-out mode (``REDIS_URL``).

Every serving replica and every RQ worker sees the same annotations, label
configs and change counts, whichever replica a webhook reached. Same
interface and rules as ``service.annotation_store.AnnotationStore`` (SQLite, one
machine): an annotation is replaced only by a copy at least as new (its
``updated_at``, else ``created_at``; a copy without a time counts as new),
and a deleted annotation or task stays deleted (tombstones per project). Each check
and write is one atomic Lua script or transaction, so concurrent webhooks on
several replicas cannot interleave. Texts are stored as JSON with ASCII
escapes, so any Python text survives, a lone surrogate too.

Keys, per project ``P`` (``{P}`` is a Redis Cluster hash tag: one slot per project)::

    uie:ann:{P}:records   hash  annotation id -> {"task_id", "task", "annotation"} JSON
    uie:ann:{P}:updated   hash  annotation id -> its time (epoch seconds, "" if none)
    uie:ann:{P}:order     hash  annotation id -> sequence number of its last write
    uie:ann:{P}:deleted   hash  annotation id -> when it was deleted (tombstones)
    uie:ann:{P}:deleted_tasks  hash  task id -> when Label Studio deleted the task (tombstones)
    uie:ann:{P}:config    string  the project's label config
    uie:ann:{P}:changes   integer  annotation changes since the last TRAIN_EVERY_N trigger
    uie:ann:{P}:suggested     hash  [task id, model version] -> what /predict suggested (JSON)
    uie:ann:{P}:suggested_at  zset  [task id, model version] by when (the oldest dropped first)
    uie:ann:{P}:imported      hash  task id -> the text of a task Label Studio created (JSON)
    uie:ann:{P}:imported_at   zset  task id by when (the oldest dropped first)
"""

from __future__ import annotations

import json
import time

from service.annotation_store import (MAX_IMPORTED_TEXTS, MAX_SUGGESTIONS, _dumps, _key, check_label_config_text,
                                      group_tasks, incoming)

PREFIX = "uie:ann:"

# KEYS: records, updated, order, deleted, sequence, deleted_tasks.
# ARGV: id, time ("" = none), record JSON, task id.
UPSERT = """
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[6], ARGV[4]) == 1 then return 0 end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= '' and ARGV[2] ~= '' and tonumber(ARGV[2]) < tonumber(old) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], redis.call('INCR', KEYS[5]))
return 1
"""

# KEYS: a hash and its zset by time (suggested and suggested_at, or imported and imported_at).
# ARGV: now, cap, then field, record JSON, field, record JSON, ...
REMEMBER = """
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
  for _, field in ipairs(old) do redis.call('HDEL', KEYS[1], field) end
end
return (#ARGV - 2) / 2
"""


class RedisAnnotationStore:
    """``AnnotationStore``'s interface over a Redis connection (``redis.Redis``)."""

    def __init__(self, conn, prefix=PREFIX):
        self.conn = conn
        self.prefix = prefix
        self._upsert = conn.register_script(UPSERT)
        self._remember = conn.register_script(REMEMBER)

    def _k(self, project: str, what: str) -> str:
        return f"{self.prefix}{{{project}}}:{what}"

    def upsert(self, project: str, task: dict, annotation: dict) -> bool:
        """Store one annotation with its task, unless a newer copy is stored or it was deleted.

        Returns whether it was stored.
        """
        new = incoming(task, annotation)
        record = _dumps({"task_id": new.task_key, "task": new.task, "annotation": new.annotation})
        keys = [self._k(project, w) for w in ("records", "updated", "order", "deleted", "sequence", "deleted_tasks")]
        updated = "" if new.updated is None else repr(new.updated)
        return bool(self._upsert(keys=keys, args=[new.key, updated, record, new.task_key]))

    def delete(self, project: str, annotation_ids) -> int:
        """Delete annotations for good: later webhooks for these ids are ignored."""
        keys = [_key(i) for i in annotation_ids if i is not None]
        if not keys:
            return 0
        now = time.time()
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.hset(self._k(project, "deleted"), mapping={k: repr(now) for k in keys})
            pipe.hdel(self._k(project, "records"), *keys)
            pipe.hdel(self._k(project, "updated"), *keys)
            pipe.hdel(self._k(project, "order"), *keys)
            return pipe.execute()[1]

    def delete_tasks(self, project: str, task_ids) -> int:
        """Forget tasks Label Studio deleted (TASKS_DELETED): their annotations are deleted for
        good (``delete``), and so are the tasks; their texts and remembered suggestions are
        dropped. Returns how many annotations went. The tasks' tombstones are written first, so
        an annotation that races this call is either refused or found and deleted."""
        wanted = {_key(t) for t in task_ids if t is not None}
        if not wanted:
            return 0
        now = repr(time.time())
        self.conn.hset(self._k(project, "deleted_tasks"), mapping={k: now for k in wanted})
        records = self.conn.hgetall(self._k(project, "records"))
        ids = [field.decode("utf-8") for field, raw in records.items() if json.loads(raw)["task_id"] in wanted]
        imported = [_dumps(key) for key in wanted]
        suggested = [field for field in self.conn.hkeys(self._k(project, "suggested"))
                     if json.loads(field)[0] in wanted]
        with self.conn.pipeline(transaction=True) as pipe:
            for what, fields in (("imported", imported), ("suggested", suggested)):
                if fields:
                    pipe.hdel(self._k(project, what), *fields)
                    pipe.zrem(self._k(project, f"{what}_at"), *fields)
            pipe.execute()
        return self.delete(project, ids)

    def tasks(self, project: str) -> list[dict]:
        """The project's tasks, each with the annotations received for it (in the order
        they were last written; the newest copy of a task wins)."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._k(project, "records"))
            pipe.hgetall(self._k(project, "order"))
            records, order = pipe.execute()
        rows = [json.loads(raw) for _, raw in sorted(records.items(), key=lambda kv: int(order.get(kv[0], 0)))]
        return group_tasks((r["task_id"], r["task"], r["annotation"]) for r in rows)

    def count(self, project: str) -> int:
        return self.conn.hlen(self._k(project, "records"))

    def set_label_config(self, project: str, label_config: str):
        """Keep a project's label config; ``ValueError`` for text UTF-8 cannot hold."""
        check_label_config_text(label_config)
        self.conn.set(self._k(project, "config"), label_config.encode("utf-8"))

    def label_config(self, project: str) -> str | None:
        raw = self.conn.get(self._k(project, "config"))
        return raw.decode("utf-8") if raw is not None else None

    def add_changes(self, project: str, n: int) -> int:
        """Count ``n`` more changed annotations; returns the count since the last reset."""
        return int(self.conn.incrby(self._k(project, "changes"), n))

    def reset_changes(self, project: str):
        self.conn.set(self._k(project, "changes"), 0)

    def remember_suggestions(self, project: str, model_version: str, suggestions) -> int:
        """Keep what ``model_version`` suggested for tasks (``[(task id, regions[, text])]``),
        replacing what it suggested for them before, and drop the project's oldest past
        ``MAX_SUGGESTIONS``: one atomic script. Returns how many were kept."""
        now = time.time()
        args = [repr(now), str(MAX_SUGGESTIONS)]
        for task_id, regions, *text in suggestions:
            if task_id is not None:
                key = _key(task_id)
                args += [_dumps([key, model_version]),
                         _dumps({"task_id": key, "model_version": model_version, "at": now, "regions": regions,
                                 "text": (text or [None])[0]})]
        if len(args) == 2:
            return 0
        keys = [self._k(project, "suggested"), self._k(project, "suggested_at")]
        return int(self._remember(keys=keys, args=args))

    def remember_texts(self, project: str, texts) -> int:
        """Keep the texts of tasks Label Studio created (``[(task id, text)]``), replacing a
        task's earlier one, and drop the project's oldest past ``MAX_IMPORTED_TEXTS``: one
        atomic script. Returns how many were kept."""
        now = time.time()
        args = [repr(now), str(MAX_IMPORTED_TEXTS)]
        for task_id, text in texts:
            if task_id is not None:
                args += [_dumps(_key(task_id)), _dumps({"text": text, "at": now})]
        if len(args) == 2:
            return 0
        return int(self._remember(keys=[self._k(project, "imported"), self._k(project, "imported_at")], args=args))

    def texts(self, project: str, limit: int) -> list[str]:
        """The texts of the project's remembered suggestions and created tasks, each once, the
        most recent first, at most ``limit``."""
        rows = [json.loads(raw) for what in ("suggested", "imported")
                for raw in self.conn.hvals(self._k(project, what))]
        texts = dict.fromkeys(r["text"] for r in sorted(rows, key=lambda r: -r["at"])
                              if isinstance(r.get("text"), str))
        return list(texts)[:limit]

    def suggestions(self, project: str, task_ids=None) -> dict[str, list[dict]]:
        """``{task key: [{"model_version", "at", "regions"}, ...]}`` (newest first) of the
        project's remembered suggestions (of ``task_ids`` only, when given)."""
        wanted = None if task_ids is None else {_key(t) for t in task_ids}
        rows = [json.loads(raw) for raw in self.conn.hvals(self._k(project, "suggested"))]
        out: dict[str, list[dict]] = {}
        for row in sorted(rows, key=lambda r: -r["at"]):
            if wanted is None or row["task_id"] in wanted:
                out.setdefault(row["task_id"], []).append(
                    {"model_version": row["model_version"], "at": row["at"], "regions": row["regions"]})
        return out
