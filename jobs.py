"""Background training jobs: one at a time per project, never in a request.

A trigger (START_TRAINING, ``POST /train``, every ``TRAIN_EVERY_N``
annotation changes) writes a *queued* job and returns at once; triggers that
arrive while a job is queued collapse into it. A worker thread runs the
project's jobs one after another while holding ``<project>/train.lock`` (an
``flock``, so several gunicorn workers never train the same project twice).
A job runs our own scripts as subprocesses, logging to ``job.log``::

    convert.py -> doccano.py -> finetune.py -> evaluate.py (validation)

and then ``ModelStore.promote`` moves the checked model in atomically. A job
that fails, or whose process dies, leaves the served model as it was; its
state says why.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from convert import expand_prompts, read_jsonl, write_jsonl
from label_config import LabelConfigError, parse_label_config

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATES = ("queued", "running", "failed", "done")


class JobError(RuntimeError):
    """A training step failed; the message is shown in the job state."""


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


class JobRunner:
    """Queues, runs and reports training jobs for every project."""

    def __init__(self, store, annotations, python=sys.executable):
        self.store = store
        self.settings = store.settings
        self.annotations = annotations
        self.python = python
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        store.cleanup_partial()
        for project in store.projects():
            self._recover(project)

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
        with flock(self.store.project_dir(project) / "queue.lock"):
            queued = [s for s in self.list(project) if s.get("state") == "queued"]
            if queued:
                job = queued[-1]
                job_dir = jdir / job["id"]
                job = self._update(job_dir, reasons=job.get("reasons", []) + [reason])
            else:
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
        log.info("project %s: training job %s queued (%s)", project, job["id"], reason)
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

    def _next_queued(self, project):
        with flock(self.store.project_dir(project) / "queue.lock"):
            queued = [s for s in self.list(project) if s.get("state") == "queued"]
            if not queued:
                return None
            job_dir = self._jobs_dir(project) / queued[0]["id"]
            self._update(job_dir, state="running", started=time.time(), pid=os.getpid())
            return job_dir

    def _work(self, project):
        while True:
            with flock(self.store.project_dir(project) / "train.lock", blocking=False) as mine:
                if not mine:
                    return      # another process is training this project; it drains the queue
                while (job_dir := self._next_queued(project)) is not None:
                    self._run(project, job_dir)
            # a trigger may have queued a job after our last look but before the unlock
            if not any(s.get("state") == "queued" for s in self.list(project)):
                return

    def _recover(self, project):
        """Mark jobs of a process that died as failed; restart queued ones."""
        with flock(self.store.project_dir(project) / "train.lock", blocking=False) as mine:
            if not mine:
                return
            for job in self.list(project):
                if job.get("state") == "running":
                    self._update(self._jobs_dir(project) / job["id"], state="failed",
                                 finished=time.time(),
                                 error="interrupted: the process running this job stopped")
                    log.error("project %s: job %s was interrupted; the served model is unchanged",
                              project, job["id"])
        if any(j.get("state") == "queued" for j in self.list(project)):
            self._ensure_worker(project)

    # -- one job -------------------------------------------------------------
    def _run(self, project, job_dir: Path):
        started = time.time()
        logf = open(job_dir / "job.log", "a", encoding="utf-8")
        try:
            result = self._train(project, job_dir, logf)
            self._update(job_dir, state="done", finished=time.time(), **result)
            log.info("project %s: job %s done in %.0fs: %s", project, job_dir.name,
                     time.time() - started, result.get("summary"))
        except Exception as exc:   # a failed job must never take the server down
            message = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
            logf.write(f"\nFAILED: {message}\n")
            self._update(job_dir, state="failed", finished=time.time(), error=message)
            log.error("project %s: job %s failed: %s (log: %s); the served model is unchanged",
                      project, job_dir.name, message, job_dir / "job.log")
        finally:
            logf.close()
            shutil.rmtree(job_dir / "work" / "ckpt", ignore_errors=True)

    def _step(self, logf, name, args, cwd):
        logf.write(f"\n$ {' '.join(str(a) for a in args)}\n")
        logf.flush()
        proc = subprocess.run([self.python, str(HERE / name), *map(str, args)], cwd=cwd,
                              stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = _tail(Path(logf.name))
            raise JobError(f"{name} exited with code {proc.returncode}: {tail}")

    def _tasks(self, project, job_dir) -> tuple[list[dict], str]:
        request_tasks = job_dir / "request_tasks.json"
        if request_tasks.is_file():
            return json.loads(request_tasks.read_text(encoding="utf-8")), "train request"
        if self.settings.label_studio_url and self.settings.label_studio_api_key:
            return fetch_label_studio_tasks(self.settings.label_studio_url,
                                            self.settings.label_studio_api_key, project), \
                "Label Studio API"
        return self.annotations.tasks(project), "webhooks"

    def _train(self, project, job_dir: Path, logf) -> dict:
        work = job_dir / "work"
        work.mkdir(exist_ok=True)
        config_file = job_dir / "label_config.xml"
        label_config = (config_file.read_text(encoding="utf-8") if config_file.is_file()
                        else self.annotations.label_config(project))
        try:
            controls = parse_label_config(label_config)
        except LabelConfigError as exc:
            raise JobError(f"no usable label config for project {project}: {exc}") from None
        tasks, source = self._tasks(project, job_dir)
        (work / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
        logf.write(f"{len(tasks)} tasks from {source}\n")
        control = controls[0]
        args = ["--label_studio_file", work / "tasks.json", "--doccano_file", work / "doccano.jsonl",
                "--text_key", control.data_key]
        for c in controls:
            if c.data_key == control.data_key:
                args += ["--from_name", c.from_name]
        self._step(logf, "convert.py", args, work)
        n_records = sum(1 for line in open(work / "doccano.jsonl", encoding="utf-8") if line.strip())
        if n_records == 0:
            raise JobError(f"no annotated tasks to train on ({len(tasks)} tasks from {source})")

        held_out = n_records >= self.settings.train_min_dev_tasks
        splits = ["0.8", "0.2", "0"] if held_out else ["1", "0", "0"]
        # every (task, label) pair, labels nobody annotated yet included: /predict asks
        # every label of every task, so the model must learn where each one is absent
        labels = [label for c in controls if c.data_key == control.data_key for label, _ in c.labels]
        self._step(logf, "doccano.py", ["--doccano_file", work / "doccano.jsonl", "--save_dir", work / "data",
                                        "--splits", *splits, "--task_type", "ext",
                                        "--negative_ratio", "-1", "--labels", *labels], work)
        prompts = {label: ps for c in controls if c.data_key == control.data_key
                   for label, ps in c.labels if list(ps) != [label]}
        if prompts:     # train on the words the server prompts with (predicted_values)
            for name in ("train.txt", "dev.txt"):
                path = work / "data" / name
                write_jsonl(expand_prompts(read_jsonl(path), prompts), path)
        dev = work / "data" / ("dev.txt" if held_out else "train.txt")

        live = self.store.live(project)
        lr, epochs = self.settings.train_learning_rate, self.settings.train_epochs
        args = ["--train_path", work / "data" / "train.txt", "--dev_path", dev,
                "--save_dir", work / "ckpt", "--model", live.path,
                "--batch_size", self.settings.train_batch_size,
                "--max_seq_len", self.settings.train_max_seq_len,
                "--device", self.store.device, "--logging_steps", 20, "--valid_steps", 0]
        if lr:
            args += ["--learning_rate", lr]
        if epochs:
            args += ["--num_epochs", epochs]
        self._step(logf, "finetune.py", args, work)
        best = work / "ckpt" / "model_best"

        # validation: the new checkpoint loads and predicts in a fresh process
        self._step(logf, "evaluate.py", ["--model_path", best, "--test_path", dev,
                                         "--max_seq_len", self.settings.train_max_seq_len,
                                         "--device", self.store.device,
                                         "--output_json", work / "eval_new.json"], work)
        new = json.loads((work / "eval_new.json").read_text(encoding="utf-8"))
        train_metrics = json.loads((work / "ckpt" / "metrics.json").read_text(encoding="utf-8"))
        promote, old = True, None
        if held_out:    # compare with the served model on the same held-out annotations
            self._step(logf, "evaluate.py", ["--model_path", live.path, "--test_path", dev,
                                             "--max_seq_len", self.settings.train_max_seq_len,
                                             "--device", self.store.device,
                                             "--output_json", work / "eval_old.json"], work)
            old = json.loads((work / "eval_old.json").read_text(encoding="utf-8"))
            promote = new["f1"] >= old["f1"]
        meta = {
            "project": project, "job": job_dir.name, "created": time.time(),
            "base_model": live.version, "annotated_tasks": n_records, "source": source,
            "metrics_on": "held-out annotations" if held_out else "training annotations",
            "held_out": held_out,
            "dev": {k: new[k] for k in ("precision", "recall", "f1", "examples")},
            "train_seconds": train_metrics.get("train_seconds"),
            "epochs_run": train_metrics.get("epochs_run"),
            "kind": train_metrics.get("kind"),
        }
        version = self.store.promote(project, best, meta, make_current=promote)
        if promote:
            self.store.predictor(self.store.project_dir(project) / version)   # warm it up here
        summary = (f"{version} f1={new['f1']:.3f} on {meta['metrics_on']}"
                   + (f" (served model: {old['f1']:.3f})" if old else ""))
        if not promote:
            summary += "; not better than the served model, kept but not served"
        logf.write(summary + "\n")
        return {"model_version": version, "promoted": promote, "metrics": meta["dev"],
                "previous_metrics": old and {k: old[k] for k in ("precision", "recall", "f1")},
                "held_out": held_out, "annotated_tasks": n_records, "source": source,
                "summary": summary}


def _tail(path: Path, lines=6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())[-800:]


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
