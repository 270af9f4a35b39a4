"""Durable store of what Label Studio's webhooks delivered (SQLite under MODEL_DIR).

Annotations are kept per project. Webhooks may arrive out of order, so an
annotation is replaced only by a copy at least as new (its ``updated_at``,
else ``created_at``), and a deleted annotation stays deleted: its id is
kept as a tombstone that later webhooks for it cannot bring back, and so is
a deleted task's id (Label Studio never reuses one). Each
project's label config and its count of annotation changes since the last
training trigger live here too, and what ``/predict`` suggested per task and model version
(``remember_suggestions``; ``service.corrections`` compares it with the annotations made
from it), and the texts of the tasks Label Studio created (``remember_texts``: with those
``/predict`` answered, a small scratch project's teacher reads them). Any Python text is stored as sent (JSON
with ASCII escapes, so even a lone surrogate survives). Safe for several
threads and several gunicorn workers (one short transaction per call).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from checks import require_unicode
from convert import parse_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    project TEXT NOT NULL,
    annotation_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    task_json TEXT NOT NULL,
    annotation_json TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE TABLE IF NOT EXISTS deleted (
    project TEXT NOT NULL,
    annotation_id TEXT NOT NULL,
    deleted REAL NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE TABLE IF NOT EXISTS deleted_tasks (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    deleted REAL NOT NULL,
    PRIMARY KEY (project, task_id)
);
CREATE TABLE IF NOT EXISTS projects (
    project TEXT PRIMARY KEY,
    label_config TEXT,
    changes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS suggestions (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    regions_json TEXT NOT NULL,
    at REAL NOT NULL,
    text TEXT,
    PRIMARY KEY (project, task_id, model_version)
);
CREATE INDEX IF NOT EXISTS suggestions_at ON suggestions (project, at);
CREATE TABLE IF NOT EXISTS imported (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (project, task_id)
);
"""
# added after the first release: databases made before get the columns on open
MIGRATIONS = (("annotations", "updated", "ALTER TABLE annotations ADD COLUMN updated REAL"),
              ("suggestions", "text", "ALTER TABLE suggestions ADD COLUMN text TEXT"))
# What /predict suggested, per project: at most this many (task, model version) rows, the
# oldest dropped first (``remember_suggestions``).
MAX_SUGGESTIONS = 20_000
# The texts of tasks Label Studio created (its TASKS_CREATED webhook), per project: at most
# this many, the oldest dropped first (``remember_texts``). A small scratch project's job
# reads 1,000 unannotated texts (``training_examples.TEACHER_TEXTS``), annotated ones aside.
MAX_IMPORTED_TEXTS = 5_000
# Seconds ``remember_suggestions`` waits for another writer (then it fails, and /predict logs it).
SUGGESTION_WAIT = 1.0
# The SQLite store counts a project's suggestions (and drops the oldest past MAX_SUGGESTIONS)
# once this process has written this many since it last counted: counting costs a scan.
PRUNE_EVERY = 64


def _key(value) -> str:
    """An id as a key: its text, with characters UTF-8 cannot hold escaped."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=True)


def check_label_config_text(label_config: str):
    """``ValueError`` for a label config UTF-8 cannot hold (a lone surrogate)."""
    require_unicode(label_config, "the label config")


@dataclass(frozen=True)
class Incoming:
    """One webhook annotation as both stores keep it (``incoming``)."""

    key: str                  # the annotation's id as a key
    task_key: str             # its task's id as a key
    task: dict                # the task without its annotations, predictions and drafts
    annotation: dict
    updated: float | None     # ``annotation_time``: a copy without one counts as new


def incoming(task: dict, annotation: dict) -> Incoming:
    """What ``upsert`` stores of a webhook's task and annotation; ``ValueError`` without an id."""
    if annotation.get("id") is None:
        raise ValueError("annotation has no id")
    task = {k: v for k, v in task.items() if k not in ("annotations", "predictions", "drafts")}
    return Incoming(_key(annotation["id"]), _key(task.get("id", annotation.get("task"))), task,
                    annotation, annotation_time(annotation))


def group_tasks(rows: Iterable[tuple[str, dict, dict]]) -> list[dict]:
    """``(task key, task, annotation)`` rows, oldest write first, as tasks with their
    annotations (the newest copy of a task wins)."""
    tasks: dict[str, dict] = {}
    for task_key, task, annotation in rows:
        task["annotations"] = tasks.get(task_key, {}).get("annotations", [])
        task["annotations"].append(annotation)
        tasks[task_key] = task
    return list(tasks.values())


def annotation_time(annotation: dict) -> float | None:
    """When an annotation was last changed (``updated_at``, else ``created_at``), epoch seconds."""
    for field in ("updated_at", "created_at"):
        moment = parse_time(annotation.get(field))
        if moment is not None:
            return moment.timestamp()
    return None


def _use_wal(db, wait: float) -> None:
    """Put the database in WAL mode (kept in the file: the first connection switches it).
    Switching needs the whole database, and SQLite then answers "locked" at once instead of
    waiting its timeout (another worker opening a new store at the same moment): tried again
    for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _migrate(db) -> None:
    """Bring a store written by an older version up to ``SCHEMA`` (``MIGRATIONS``), holding the
    database's write lock: the workers of one server open the same file at once, and two
    that both saw the column missing would both add it."""
    db.execute("BEGIN IMMEDIATE")
    for table, column, statement in MIGRATIONS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(statement)
    db.commit()


def _delete_annotations(db, project: str, keys: list[str]) -> int:
    """Tombstone the annotation ``keys`` of ``project`` and delete them; how many were stored."""
    now = time.time()
    db.executemany("INSERT OR REPLACE INTO deleted VALUES (?, ?, ?)", [(project, k, now) for k in keys])
    cur = db.executemany("DELETE FROM annotations WHERE project = ? AND annotation_id = ?",
                         [(project, k) for k in keys])
    return cur.rowcount


class AnnotationStore:
    def __init__(self, path):
        self.path = Path(path)
        self._unpruned: dict[str, int] = {}     # project -> suggestions written since it was pruned
        self._local = threading.local()         # each thread's connection for remember_suggestions
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)
            _migrate(db)

    @contextmanager
    def _db(self):
        db = sqlite3.connect(self.path, timeout=30)
        try:
            _use_wal(db, 30)
            with db:
                yield db
        finally:
            db.close()

    def upsert(self, project: str, task: dict, annotation: dict) -> bool:
        """Store one annotation with its task, unless a newer copy is stored or it was deleted.

        Returns whether it was stored. A copy without a time counts as new. An annotation of a
        deleted task is not stored, even one that arrives after the task's TASKS_DELETED.
        """
        new = incoming(task, annotation)
        with self._db() as db:
            if db.execute("SELECT 1 FROM deleted WHERE project = ? AND annotation_id = ? UNION ALL "
                          "SELECT 1 FROM deleted_tasks WHERE project = ? AND task_id = ?",
                          (project, new.key, project, new.task_key)).fetchone():
                return False
            cur = db.execute(
                "INSERT INTO annotations (project, annotation_id, task_id, task_json, annotation_json,"
                " received, updated) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(project, annotation_id) DO UPDATE SET task_id = excluded.task_id, "
                "task_json = excluded.task_json, annotation_json = excluded.annotation_json, "
                "received = excluded.received, updated = excluded.updated "
                "WHERE excluded.updated IS NULL OR annotations.updated IS NULL "
                "OR excluded.updated >= annotations.updated",
                (project, new.key, new.task_key, _dumps(new.task), _dumps(new.annotation), time.time(),
                 new.updated))
            return cur.rowcount > 0

    def delete(self, project: str, annotation_ids) -> int:
        """Delete annotations for good: later webhooks for these ids are ignored."""
        with self._db() as db:
            return _delete_annotations(db, project, [_key(i) for i in annotation_ids if i is not None])

    def delete_tasks(self, project: str, task_ids) -> int:
        """Forget tasks Label Studio deleted (its TASKS_DELETED webhook, which comes without an
        ANNOTATIONS_DELETED): their annotations are deleted for good (``delete``), and so are the
        tasks (a later annotation of one is ignored); their texts and remembered suggestions are
        dropped, in one transaction. Returns how many annotations went."""
        keys = sorted({_key(t) for t in task_ids if t is not None})
        deleted = 0
        with self._db() as db:
            now = time.time()
            db.executemany("INSERT OR REPLACE INTO deleted_tasks VALUES (?, ?, ?)", [(project, k, now) for k in keys])
            for first in range(0, len(keys), 500):
                part = keys[first:first + 500]
                where = f"project = ? AND task_id IN ({','.join('?' * len(part))})"
                ids = [row[0] for row in db.execute(f"SELECT annotation_id FROM annotations WHERE {where}",
                                                    (project, *part))]
                deleted += _delete_annotations(db, project, ids)
                for table in ("imported", "suggestions"):
                    db.execute(f"DELETE FROM {table} WHERE {where}", (project, *part))
        return deleted

    def tasks(self, project: str) -> list[dict]:
        """The project's tasks, each with the annotations received for it."""
        with self._db() as db:
            rows = db.execute("SELECT task_id, task_json, annotation_json FROM annotations "
                              "WHERE project = ? ORDER BY received", (project,)).fetchall()
        return group_tasks((task_id, json.loads(task), json.loads(annotation))
                           for task_id, task, annotation in rows)

    def count(self, project: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM annotations WHERE project = ?",
                              (project,)).fetchone()[0]

    def set_label_config(self, project: str, label_config: str):
        """Keep a project's label config; ``ValueError`` for text UTF-8 cannot hold."""
        check_label_config_text(label_config)
        with self._db() as db:
            db.execute("INSERT INTO projects (project, label_config) VALUES (?, ?) "
                       "ON CONFLICT(project) DO UPDATE SET label_config = excluded.label_config",
                       (project, label_config))

    def label_config(self, project: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT label_config FROM projects WHERE project = ?",
                             (project,)).fetchone()
        return row[0] if row else None

    def add_changes(self, project: str, n: int) -> int:
        """Count ``n`` more changed annotations; returns the count since the last reset."""
        with self._db() as db:
            db.execute("INSERT INTO projects (project, changes) VALUES (?, ?) "
                       "ON CONFLICT(project) DO UPDATE SET changes = changes + excluded.changes",
                       (project, n))
            return db.execute("SELECT changes FROM projects WHERE project = ?",
                              (project,)).fetchone()[0]

    def reset_changes(self, project: str):
        with self._db() as db:
            db.execute("UPDATE projects SET changes = 0 WHERE project = ?", (project,))

    def remember_suggestions(self, project: str, model_version: str, suggestions) -> int:
        """Keep what ``model_version`` suggested for tasks (``[(task id, regions[, text])]``,
        regions as ``suggested_items`` makes them, the task's text if known), replacing what it
        suggested for them before, in one short transaction; every ``PRUNE_EVERY`` rows (per
        process) it also drops the project's oldest rows past ``MAX_SUGGESTIONS``. Returns how
        many were kept."""
        now = time.time()
        rows = [(project, _key(task_id), model_version, _dumps(regions), now, (text or [None])[0])
                for task_id, regions, *text in suggestions if task_id is not None]
        if not rows:
            return 0
        written = self._unpruned.get(project, PRUNE_EVERY) + len(rows)   # a new process counts at once
        with self._suggestion_db() as db:
            db.executemany("INSERT OR REPLACE INTO suggestions (project, task_id, model_version, "
                           "regions_json, at, text) VALUES (?, ?, ?, ?, ?, ?)", rows)
            if written >= PRUNE_EVERY:
                extra = db.execute("SELECT COUNT(*) FROM suggestions WHERE project = ?",
                                   (project,)).fetchone()[0] - MAX_SUGGESTIONS
                if extra > 0:
                    db.execute("DELETE FROM suggestions WHERE rowid IN (SELECT rowid FROM suggestions "
                               "WHERE project = ? ORDER BY at, rowid LIMIT ?)", (project, extra))
                written = 0
        self._unpruned[project] = written
        return len(rows)

    def _suggestion_db(self) -> sqlite3.Connection:
        """This thread's connection for ``remember_suggestions``, kept open (closing a database's
        last connection checkpoints its WAL, an fsync per request), commits not synced (WAL:
        a crash loses the last ones, never consistency), waiting ``SUGGESTION_WAIT`` at most for
        another writer; opened anew in a forked process."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.db = sqlite3.connect(self.path, timeout=SUGGESTION_WAIT)
            _use_wal(local.db, SUGGESTION_WAIT)
            local.db.execute("PRAGMA synchronous=NORMAL")
            local.pid = os.getpid()
        return local.db

    def remember_texts(self, project: str, texts) -> int:
        """Keep the texts of tasks Label Studio created (``[(task id, text)]``), replacing a
        task's earlier one, and drop the project's oldest past ``MAX_IMPORTED_TEXTS``, in one
        transaction. Returns how many were kept."""
        now = time.time()
        rows = [(project, _key(task_id), text, now) for task_id, text in texts if task_id is not None]
        if not rows:
            return 0
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO imported (project, task_id, text, at) VALUES (?, ?, ?, ?)", rows)
            db.execute("DELETE FROM imported WHERE rowid IN (SELECT rowid FROM imported WHERE project = ? "
                       "ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)", (project, MAX_IMPORTED_TEXTS))
        return len(rows)

    def texts(self, project: str, limit: int) -> list[str]:
        """The texts of the project's remembered suggestions (``remember_suggestions``) and
        created tasks (``remember_texts``), each once, the most recent first, at most ``limit``."""
        with self._db() as db:
            rows = db.execute("SELECT text FROM (SELECT text, at FROM suggestions WHERE project = ? AND "
                              "text IS NOT NULL UNION ALL SELECT text, at FROM imported WHERE project = ?) "
                              "GROUP BY text ORDER BY MAX(at) DESC LIMIT ?", (project, project, limit)).fetchall()
        return [row[0] for row in rows]

    def suggestions(self, project: str, task_ids=None) -> dict[str, list[dict]]:
        """``{task key: [{"model_version", "at", "regions"}, ...]}`` (newest first) of the
        project's remembered suggestions (of ``task_ids`` only, when given)."""
        select = "SELECT task_id, model_version, at, regions_json FROM suggestions WHERE project = ?"
        with self._db() as db:
            if task_ids is None:
                rows = db.execute(select, (project,)).fetchall()
            else:
                keys, rows = sorted({_key(t) for t in task_ids}), []
                for k in range(0, len(keys), 500):
                    part = keys[k:k + 500]
                    rows += db.execute(f"{select} AND task_id IN ({','.join('?' * len(part))})",
                                       (project, *part)).fetchall()
        out: dict[str, list[dict]] = {}
        for task_key, version, at, regions in sorted(rows, key=lambda row: -row[2]):
            out.setdefault(task_key, []).append({"model_version": version, "at": at, "regions": json.loads(regions)})
        return out
