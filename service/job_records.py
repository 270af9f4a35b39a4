"""Job records: what ``GET /jobs`` and ``/metrics`` report, one ``state.json`` per job.

Each training job has a directory ``MODEL_DIR/<project>/jobs/<id>/``; its
``state.json`` (a JSON object, written whole with ``files.atomic_write_json``)
says its state (``queued``, ``running``, ``failed``, ``done``), why it was
triggered, when it was created, started and finished, where its log is, and its
outcome. ``JobRecords`` reads, writes, lists and prunes them; it takes no lock
(the runner holds the project's queue lock around read-modify-write sequences)
and imports nothing heavy: an RQ worker's main process uses it without Paddle.

A running job's listed record also holds its ``progress`` (``with_progress``), read
from the ``progress.json`` the job's processes write in its directory, wherever they
run (``train_job.Progress``): ``phase``, ``step`` of ``total``, ``ratio``,
``best_dev_f1`` and ``eta_seconds``, the estimate less the time since it was written.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path

import files
from train_job import read_progress

STATES = ("queued", "running", "failed", "done")
FINISHED = ("done", "failed")
STATE_FILE = "state.json"
# A job directory with no readable state.json this much older than now was left by a trigger
# that failed (a full disk): it is listed as failed and pruned. A younger one may be a job
# being created (its directory is made before its state is written): it is skipped.
STATELESS_GRACE_SECONDS = 60.0
NO_STATE = ("its state.json is missing or unreadable: the trigger that created this job "
            "failed (a full disk?)")
# Terminal escape sequences (colours, cursor moves, window titles) and other control characters
# but tab and newline: a job's log may carry them (Paddle colours its warnings), its state not.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI: colours, cursor moves
                      r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, links
                      r"|\x1b[ -/]*[0-~]?"                  # other escapes
                      r"|\x9b[0-?]*[ -/]*[@-~]"               # 8-bit CSI
                      r"|[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (tab, newline kept)."""
    return _ESCAPES.sub("", text)


def with_progress(job_dir: Path, state: dict) -> dict:
    """``state`` with ``progress`` (``progress_of``) when it is a running job that wrote some."""
    if state.get("state") == "running":
        progress = progress_of(read_progress(job_dir))
        if progress:
            state["progress"] = progress
    return state


def progress_of(written: dict | None, now: float | None = None) -> dict | None:
    """What ``/jobs`` shows of a ``progress.json``: the ETA counted down since it was written."""
    if not written or not isinstance(written.get("phase"), str):
        return None
    step, total, eta = written.get("step"), written.get("total"), written.get("eta_seconds")
    if isinstance(eta, (int, float)) and isinstance(written.get("updated"), (int, float)):
        eta = round(max(0.0, eta - ((now or time.time()) - written["updated"])), 1)
    ratio = round(min(1.0, step / total), 4) if isinstance(step, int) and isinstance(total, int) and total else None
    return {"phase": written["phase"], "step": step, "total": total, "ratio": ratio,
            "best_dev_f1": written.get("best_dev_f1"), "eta_seconds": eta,
            "phase_started": written.get("phase_started"), "updated": written.get("updated")}


class JobRecords:
    """The job directories and states of every project under a store's ``MODEL_DIR``.

    ``store`` gives ``projects()`` and ``project_dir(project)``; ``keep`` is how
    many finished jobs of a project ``prune`` keeps (``KEEP_JOBS``).
    """

    def __init__(self, store, keep: int):
        self.store, self.keep = store, keep

    # -- one job -------------------------------------------------------------------
    def job_dir(self, project: str, job_id: str) -> Path:
        return self.jobs_dir(project) / job_id

    def jobs_dir(self, project: str) -> Path:
        return self.store.project_dir(project) / "jobs"

    def read(self, job_dir: Path) -> dict | None:
        """A job's state; None if it has none (yet) or it is unreadable. Its ``error`` is
        plain text (also one written before escapes were removed)."""
        try:
            state = json.loads((job_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        if isinstance(state.get("error"), str):
            state["error"] = plain_text(state["error"])
        return state

    def write(self, job_dir: Path, state: dict):
        """Write a job's state whole; its ``error`` as plain text (``plain_text``)."""
        if isinstance(state.get("error"), str):
            state["error"] = plain_text(state["error"])
        files.atomic_write_json(job_dir / STATE_FILE, state, ensure_ascii=False)

    def update(self, job_dir: Path, **changes) -> dict:
        """Change some fields of a job's state; the new state."""
        state = self.read(job_dir) or {}
        state.update(changes)
        self.write(job_dir, state)
        return state

    def create(self, project: str, reason: str) -> dict:
        """A new queued job of ``project`` (its directory and state); its state."""
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job_dir = self.job_dir(project, job_id)
        job_dir.mkdir(parents=True)
        state = {"id": job_id, "project": project, "state": "queued", "reasons": [reason],
                 "created": time.time(), "log": str(job_dir / "job.log")}
        self.write(job_dir, state)
        return state

    def get(self, project: str, job_id: str) -> dict | None:
        return self.read(self.job_dir(project, job_id))

    # -- many jobs -----------------------------------------------------------------
    def list(self, project: str | None = None) -> list[dict]:
        """The jobs of a project (of all projects), oldest first."""
        projects = [project] if project else self.store.projects()
        jobs = [job for p in projects for job in self._of(p)]
        return sorted(jobs, key=lambda job: job.get("created", 0))

    def _of(self, project: str) -> list[dict]:
        """The states of a project's jobs; a directory without a readable state (older than
        ``STATELESS_GRACE_SECONDS``) as a failed job (``_stateless``)."""
        jobs_dir = self.jobs_dir(project)
        if not jobs_dir.is_dir():
            return []
        jobs = []
        for job_dir in sorted(jobs_dir.iterdir()):
            if not job_dir.is_dir():
                continue
            state = self.read(job_dir) or self._stateless(project, job_dir)
            if state:
                jobs.append(with_progress(job_dir, state))
        return jobs

    @staticmethod
    def _stateless(project: str, job_dir: Path) -> dict | None:
        """A failed job's state for a directory without a readable ``state.json``, or None
        while it may still be a job being created."""
        try:
            created = job_dir.stat().st_mtime
        except OSError:
            return None             # removed meanwhile
        if time.time() - created < STATELESS_GRACE_SECONDS:
            return None
        state = {"id": job_dir.name, "project": project, "state": "failed", "reasons": [],
                 "created": created, "finished": created, "error": NO_STATE}
        if (job_dir / "job.log").is_file():
            state["log"] = str(job_dir / "job.log")
        return state

    def in_state(self, project: str, *states: str) -> list[dict]:
        """The jobs of a project in one of ``states``, oldest first."""
        return [job for job in self.list(project) if job.get("state") in states]

    def summary(self) -> dict:
        """How many jobs of all projects are in each state (a state-less one counts as failed)."""
        counts = dict.fromkeys(STATES, 0)
        for job in self.list():
            state = job.get("state", "failed")
            counts[state] = counts.get(state, 0) + 1
        return counts

    def prune(self, project: str):
        """Delete the directories of a project's finished jobs but the newest ``keep`` (a
        directory without a readable state, past its grace, counts as a failed job)."""
        finished = self.in_state(project, *FINISHED)
        for job in finished[: max(0, len(finished) - self.keep)]:
            shutil.rmtree(self.job_dir(project, job["id"]), ignore_errors=True)
