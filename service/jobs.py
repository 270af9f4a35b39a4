"""Background training jobs: one at a time per project, never in a request.

A trigger (START_TRAINING, ``POST /train``, every ``TRAIN_EVERY_N``
annotation changes) writes a *queued* job and returns at once; triggers that
arrive while a job is queued collapse into it. A worker thread runs the
project's jobs one after another while holding ``<project>/train.lock`` (an
``flock``, so several gunicorn workers never train the same project twice).
A job is one process, ``train_job.py JOB_DIR``, in its own process group,
logging to ``job.log``: it reads ``spec.json`` (label config, tasks, served
model, settings) and writes ``result.json``; then ``ModelStore.promote`` moves
the checked model in atomically. A job that fails, or whose process dies,
leaves the served model as it was; its state says why. A server restarted
after a crash stops a job process that outlived it and removes its checkpoint.

The locks and where a queued job is run are the runner's parts: ``FileLocks``
and a thread in the server here; ``service.job_queue.QueueRunner`` (``REDIS_URL``)
takes Redis locks and hands each job to an RQ worker, which runs it with
``run_queued`` in its own work-horse process, through the same ``_run``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from label_config import LabelConfigError, parse_label_config
from train_job import RESULT, JobError, JobSpec

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]   # where train_job.py is
STATES = ("queued", "running", "failed", "done")
# upper bounds (seconds) of the training-duration histogram buckets (GET /metrics)
TRAINING_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)


@contextmanager
def flock(path: Path, blocking=True):
    """An exclusive ``flock`` on ``path``; yields whether it was taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class FileLocks:
    """A project's queue and train locks as ``flock`` files in its directory (one machine)."""

    def __init__(self, store):
        self.store = store

    def queue(self, project):
        """Held while the project's queue is read and changed (short)."""
        return flock(self.store.project_dir(project) / "queue.lock")

    def train(self, project, blocking=True):
        """Held while a job of the project runs; yields whether it was taken."""
        return flock(self.store.project_dir(project) / "train.lock", blocking=blocking)


class JobRunner:
    """Queues, runs and reports training jobs for every project."""

    warm_up = True      # load a promoted model in this process (it serves it next)

    def __init__(self, store, annotations, python=sys.executable, locks=None, recover=True,
                 on_finish=None):
        self.store = store
        self.settings = store.settings
        self.annotations = annotations
        self.python = python
        self.locks = locks or FileLocks(store)
        self.on_finish = on_finish      # on_finish(project, state, seconds): metrics
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        if recover:
            self._cleanup_partial()
            for project in store.projects():
                self._recover(project)

    def _cleanup_partial(self):
        self.store.cleanup_partial()

    # -- paths and state ---------------------------------------------------
    def _jobs_dir(self, project) -> Path:
        return self.store.project_dir(project) / "jobs"

    def _read(self, job_dir: Path) -> dict | None:
        try:
            return json.loads((job_dir / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write(self, job_dir: Path, state: dict):
        tmp = job_dir / f".state.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, job_dir / "state.json")

    def _update(self, job_dir: Path, **changes) -> dict:
        state = self._read(job_dir) or {}
        state.update(changes)
        self._write(job_dir, state)
        return state

    def list(self, project=None) -> list[dict]:
        """The jobs of a project (of all projects), oldest first."""
        return self._jobs(project)

    def _jobs(self, project=None) -> list[dict]:
        projects = [project] if project else self.store.projects()
        out = []
        for p in projects:
            jdir = self._jobs_dir(p)
            if jdir.is_dir():
                out += [s for d in sorted(jdir.iterdir()) if d.is_dir() and (s := self._read(d))]
        return sorted(out, key=lambda s: s.get("created", 0))

    def summary(self) -> dict:
        counts = {s: 0 for s in STATES}
        for job in self.list():
            counts[job.get("state", "failed")] = counts.get(job.get("state", "failed"), 0) + 1
        return counts

    # -- triggers ----------------------------------------------------------
    def trigger(self, project: str, reason: str, label_config=None, tasks=None) -> dict:
        """Queue a job (or join the queued one) and make sure a worker runs it."""
        jdir = self._jobs_dir(project)
        created = False
        with self.locks.queue(project):
            queued = [s for s in self._jobs(project) if s.get("state") == "queued"]
            if queued:
                job = queued[-1]
                job_dir = jdir / job["id"]
                job = self._update(job_dir, reasons=job.get("reasons", []) + [reason])
            else:
                created = True
                job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
                job_dir = jdir / job_id
                job_dir.mkdir(parents=True)
                job = {"id": job_id, "project": project, "state": "queued", "reasons": [reason],
                       "created": time.time(), "log": str(job_dir / "job.log")}
                self._write(job_dir, job)
            if tasks is not None:   # the legacy /train body carries its own annotations
                (job_dir / "request_tasks.json").write_text(json.dumps(tasks, ensure_ascii=False),
                                                             encoding="utf-8")
            if label_config:
                (job_dir / "label_config.xml").write_text(label_config, encoding="utf-8")
        log.info("project %s: training job %s %s (%s)", project, job["id"],
                 "queued" if created else "joined", reason)
        self._ensure_worker(project)
        return {k: job[k] for k in ("id", "project", "state", "created")}

    def annotation_changed(self, project: str, n: int) -> dict | None:
        """Count changes; every ``TRAIN_EVERY_N`` of them triggers a job."""
        every = self.settings.train_every_n
        if every <= 0 or n <= 0:
            return None
        if self.annotations.add_changes(project, n) < every:
            return None
        self.annotations.reset_changes(project)
        return self.trigger(project, f"TRAIN_EVERY_N={every}")

    # -- worker ------------------------------------------------------------
    def _ensure_worker(self, project):
        with self._lock:
            thread = self._threads.get(project)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._work, args=(project,),
                                          name=f"train-{project}", daemon=True)
                self._threads[project] = thread
                thread.start()

    def _next_queued(self, project, job_id=None, **running):
        """Mark the oldest queued job (or ``job_id``, if it is still queued) running; its directory."""
        with self.locks.queue(project):
            queued = [s for s in self._jobs(project) if s.get("state") == "queued"
                      and (job_id is None or s["id"] == job_id)]
            if not queued:
                return None
            job_dir = self._jobs_dir(project) / queued[0]["id"]
            self._update(job_dir, state="running", started=time.time(), runner_pid=os.getpid(),
                         **running)
            return job_dir

    def _work(self, project):
        while True:
            with self.locks.train(project, blocking=False) as mine:
                if not mine:
                    return      # another process is training this project; it drains the queue
                while (job_dir := self._next_queued(project)) is not None:
                    self._run(project, job_dir)
            # a trigger may have queued a job after our last look but before the unlock
            if not any(s.get("state") == "queued" for s in self._jobs(project)):
                return

    def run_queued(self, project, job_id) -> bool:
        """Run one queued job of a project, waiting for the project's train lock first.

        What an RQ worker calls (``service.job_queue.run_job``). Holding the lock, any job
        still marked running belongs to a process that died: it is failed first.
        Returns whether the job was run (it may have been run or failed already).
        """
        with self.locks.train(project, blocking=True) as held:
            self._fail_interrupted(project)
            job_dir = self._next_queued(project, job_id, **self._running_fields(held))
            if job_dir is None:
                return False
            self._run(project, job_dir)
            return True

    def _running_fields(self, held) -> dict:
        """What the state of a job started under the train lock ``held`` records about its runner."""
        return {}

    def _recover(self, project):
        """Fail the jobs of a process that died (stopping what is left of them); restart queued ones."""
        with self.locks.train(project, blocking=False) as mine:
            if not mine:
                return      # a live process holds the lock: its jobs are not interrupted
            self._fail_interrupted(project)
        if any(j.get("state") == "queued" for j in self._jobs(project)):
            self._ensure_worker(project)

    def _fail_interrupted(self, project, why="the process running this job stopped") -> list[str]:
        """Under the project's train lock: fail its jobs still marked running (their process
        died), stopping a job process that outlived it and removing its checkpoint."""
        failed = []
        for job in self._jobs(project):
            if job.get("state") == "running":
                job_dir = self._jobs_dir(project) / job["id"]
                stopped = stop_job_process(job.get("job_pid"), job_dir)
                shutil.rmtree(job_dir / "work" / "ckpt", ignore_errors=True)
                self._update(job_dir, state="failed", finished=time.time(),
                             error=f"interrupted: {why}")
                log.error("project %s: job %s was interrupted%s; the served model is unchanged",
                          project, job["id"], " (its training process was stopped)" if stopped else "")
                self._finished(project, "failed", job)
                failed.append(job["id"])
        return failed

    def _finished(self, project, state, job):
        """Tell ``on_finish`` (metrics) how long a finished job ran."""
        if self.on_finish is None:
            return
        started = job.get("started") or job.get("created") or time.time()
        try:
            self.on_finish(project, state, max(0.0, time.time() - started))
        except Exception:   # noqa: BLE001  metrics never fail a job
            log.exception("project %s: recording job metrics failed", project)

    # -- one job -------------------------------------------------------------
    def _run(self, project, job_dir: Path):
        started = time.time()
        try:
            spec = self._spec(project, job_dir)
            spec.write(job_dir)
            result = self._execute(job_dir)
            result = self._finish(project, job_dir, spec, result)
            self._update(job_dir, state="done", finished=time.time(), **result)
            log.info("project %s: job %s done in %.0fs: %s", project, job_dir.name,
                     time.time() - started, result.get("summary"))
            self._finished(project, "done", {"started": started})
        except Exception as exc:   # a failed job must never take the server down
            message = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
            with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
                logf.write(f"\nFAILED: {message}\n")
            self._update(job_dir, state="failed", finished=time.time(), error=message)
            log.error("project %s: job %s failed: %s (log: %s); the served model is unchanged",
                      project, job_dir.name, message, job_dir / "job.log")
            self._finished(project, "failed", {"started": started})
        finally:
            shutil.rmtree(job_dir / "work" / "ckpt", ignore_errors=True)
            self._prune_jobs(project)

    def _spec(self, project, job_dir: Path) -> JobSpec:
        """What this job trains: its label config, its tasks, the served model, the settings."""
        config_file = job_dir / "label_config.xml"
        label_config = (config_file.read_text(encoding="utf-8") if config_file.is_file()
                        else self.annotations.label_config(project))
        try:
            parse_label_config(label_config)
        except LabelConfigError as exc:
            raise JobError(f"no usable label config for project {project}: {exc}") from None
        tasks, source = self._tasks(project, job_dir)
        live = self.store.live(project)
        s = self.settings
        return JobSpec(project=project, label_config=label_config, tasks=tasks, source=source,
                       model_path=live.path, model_version=live.version, device=self.store.device,
                       batch_size=s.train_batch_size, max_seq_len=s.train_max_seq_len,
                       learning_rate=s.train_learning_rate, num_epochs=s.train_epochs,
                       min_dev_tasks=s.train_min_dev_tasks, inference_engine=s.inference_engine,
                       threads=s.math_threads, devices=s.train_devices, schema_lang=s.schema_lang)

    def _tasks(self, project, job_dir) -> tuple[list[dict], str]:
        request_tasks = job_dir / "request_tasks.json"
        if request_tasks.is_file():
            return json.loads(request_tasks.read_text(encoding="utf-8")), "train request"
        if self.settings.label_studio_url and self.settings.label_studio_api_key:
            return fetch_label_studio_tasks(self.settings.label_studio_url,
                                            self.settings.label_studio_api_key, project), \
                "Label Studio API"
        return self.annotations.tasks(project), "webhooks"

    def _execute(self, job_dir: Path) -> dict:
        """Run the job (``train_job``) on ``spec.json``; its ``result.json``."""
        (job_dir / RESULT).unlink(missing_ok=True)
        code = self._train(job_dir)
        try:
            result = json.loads((job_dir / RESULT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {}
        if code != 0 or "error" in result or "candidate" not in result:
            raise JobError(result.get("error") or f"train_job.py exited with code {code}: "
                           f"{_tail(job_dir / 'job.log')}")
        return result

    def _train(self, job_dir: Path) -> int:
        """``train_job.py JOB_DIR`` in its own process group, logging to ``job.log``; its exit code.

        The process id is recorded in the job state, so that a server restarted
        after a crash can stop a job process that outlived it (``_recover``).
        """
        with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
            proc = subprocess.Popen([self.python, str(REPO / "train_job.py"), str(job_dir)],
                                    cwd=job_dir, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self._update(job_dir, job_pid=proc.pid)
            return proc.wait()

    def _finish(self, project, job_dir: Path, spec: JobSpec, result: dict) -> dict:
        """Promote the candidate (or keep it unserved) and say what happened."""
        new, old = result["metrics"], result["previous_metrics"]
        promote = result["promote"]
        metrics_on = "held-out annotations" if result["held_out"] else "training annotations"
        meta = {
            "project": project, "job": job_dir.name, "created": time.time(),
            "base_model": spec.model_version, "annotated_tasks": result["annotated_tasks"],
            "source": spec.source, "metrics_on": metrics_on, "held_out": result["held_out"],
            "dev": {k: new[k] for k in ("precision", "recall", "f1", "examples")},
            "previous_dev": {k: old[k] for k in ("precision", "recall", "f1")},
            "train_seconds": result.get("train_seconds"), "epochs_run": result.get("epochs_run"),
            "kind": result.get("kind"),
        }
        version = self.store.promote(project, Path(result["candidate"]), meta, make_current=promote)
        if promote and self.warm_up:
            self.store.predictor(self.store.project_dir(project) / version)   # warm it up here
        summary = (f"{version} f1={new['f1']:.3f} on {metrics_on} "
                   f"(served model {spec.model_version}: {old['f1']:.3f})")
        if not promote:
            summary += "; not better than the served model, kept but not served"
        with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
            logf.write(summary + "\n")
        return {"model_version": version, "promoted": promote, "metrics": meta["dev"],
                "previous_metrics": meta["previous_dev"], "held_out": result["held_out"],
                "annotated_tasks": result["annotated_tasks"], "source": spec.source,
                "summary": summary}

    def _prune_jobs(self, project):
        """Keep the directories of the newest ``KEEP_JOBS`` finished jobs of a project."""
        finished = [j for j in self._jobs(project) if j.get("state") in ("done", "failed")]
        for job in finished[: max(0, len(finished) - self.settings.keep_jobs)]:
            shutil.rmtree(self._jobs_dir(project) / job["id"], ignore_errors=True)


def _tail(path: Path, lines=6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())[-800:]


def _is_job_process(pid: int, job_dir: Path) -> bool:
    """True if ``pid`` leads its own process group and runs ``train_job.py job_dir``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return os.getpgid(pid) == pid and any(a.endswith(b"train_job.py") for a in args) \
            and os.fsencode(str(job_dir)) in args
    except (OSError, ProcessLookupError):
        return False


def stop_job_process(pid, job_dir: Path, grace=10.0) -> bool:
    """Stop the process group of a job that outlived its server; whether one was running."""
    if not isinstance(pid, int) or not _is_job_process(pid, job_dir):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline and _is_job_process(pid, job_dir):
            time.sleep(0.1)
        if not _is_job_process(pid, job_dir):
            return True
    return True


def fetch_label_studio_tasks(url: str, api_key: str, project: str) -> list[dict]:
    """All annotated tasks of a project, through label-studio-sdk (legacy token or PAT)."""
    from label_studio_sdk import LabelStudio

    if not project.isdigit():
        raise JobError(f"project {project!r} is not a Label Studio project id")
    client = LabelStudio(base_url=url, api_key=api_key)
    try:
        raw = b"".join(client.projects.exports.download_sync(id=int(project), export_type="JSON"))
    except Exception as exc:
        raise JobError(f"could not export project {project} from {url}: {exc}") from None
    tasks = json.loads(raw)
    if not isinstance(tasks, list):
        raise JobError(f"Label Studio's export of project {project} is not a task list")
    return tasks
