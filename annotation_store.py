"""Durable store of what Label Studio's webhooks delivered (SQLite under MODEL_DIR).

Annotations are kept per project and replaced on update; deletions remove
them. Each project's label config and its count of annotation changes since
the last training trigger live here too. Safe for several threads and
several gunicorn workers (one short transaction per call).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS projects (
    project TEXT PRIMARY KEY,
    label_config TEXT,
    changes INTEGER NOT NULL DEFAULT 0
);
"""


class AnnotationStore:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self):
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def upsert(self, project: str, task: dict, annotation: dict):
        """Store (or replace) one annotation with the task it belongs to."""
        if annotation.get("id") is None:
            raise ValueError("annotation has no id")
        task = {k: v for k, v in task.items() if k not in ("annotations", "predictions", "drafts")}
        task_id = task.get("id", annotation.get("task"))
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?)",
                (project, str(annotation["id"]), str(task_id), json.dumps(task, ensure_ascii=False),
                 json.dumps(annotation, ensure_ascii=False), time.time()))

    def delete(self, project: str, annotation_ids) -> int:
        with self._db() as db:
            cur = db.executemany("DELETE FROM annotations WHERE project = ? AND annotation_id = ?",
                                 [(project, str(i)) for i in annotation_ids if i is not None])
            return cur.rowcount

    def tasks(self, project: str) -> list[dict]:
        """The project's tasks, each with the annotations received for it."""
        with self._db() as db:
            rows = db.execute("SELECT task_id, task_json, annotation_json FROM annotations "
                              "WHERE project = ? ORDER BY received", (project,)).fetchall()
        tasks: dict[str, dict] = {}
        for task_id, task_json, annotation_json in rows:
            task = json.loads(task_json)                      # newest task copy wins
            task["annotations"] = tasks.get(task_id, {}).get("annotations", [])
            task["annotations"].append(json.loads(annotation_json))
            tasks[task_id] = task
        return list(tasks.values())

    def count(self, project: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM annotations WHERE project = ?",
                              (project,)).fetchone()[0]

    def set_label_config(self, project: str, label_config: str):
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
