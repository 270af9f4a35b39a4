"""Background training jobs: one at a time per project, never in a request.

``JobRunner`` holds a job's whole flow, in the order it happens:

1. ``trigger`` (START_TRAINING, ``POST /train``, every ``TRAIN_EVERY_N``
   annotation changes) queues a job under the project's queue lock, or joins the
   queued one, and returns at once; so a burst of triggers during a job gives one
   follow-up job;
2. ``dispatch`` makes sure someone runs the queued job: ``drain`` (the project's
   jobs one after another, under its train lock) or ``run_queued`` (one job,
   waiting for the train lock);
3. ``_run``: the job's ``spec.json`` (label config, tasks, the annotators'
   corrections of remembered suggestions, served model, settings), then
   ``train_job`` (which writes ``result.json``), then
   ``ModelStore.promote`` moves the checked model in atomically; a failure leaves
   the served model as it was and its state says why; then old jobs are pruned.
   The runner writes the phases it runs itself (``gathering``, ``promoting``) to the
   job's ``progress.json``, ``train_job`` the others (``train_job.Progress``); the
   version's ``meta.json`` keeps the per-label scores of both models (``per_label``,
   ``previous_per_label``).

A job whose process died is failed (``interrupted``) by the next process that
takes its project's train lock: at start (``recover``), before the next job
(``run_queued``), or when listing jobs (``reap_lapsed``); a job process that
outlived its server is stopped and its checkpoint removed.

The job states are ``service.job_records.JobRecords``. What differs between the
embedded mode and the scale-out mode (``service.job_queue``) is given to the
runner, not overridden: its ``locks`` (``FileLocks``: ``flock`` files on one
machine), its ``dispatch`` (``Threads``: a thread of this process runs
``drain``), its ``training`` (``SubprocessTraining``: ``train_job.py JOB_DIR``
in its own process group, logging to ``job.log``), ``on_finish`` (where
durations are counted), ``reap_lapsed``, ``warm_up`` and ``threads``.
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
from contextlib import contextmanager
from pathlib import Path

from convert import select_annotation
from label_config import LabelConfigError, parse_label_config
from service.corrections import find_corrections
from service.job_records import JobRecords, plain_text
from service.label_studio_api import export_annotated_tasks, unannotated_texts
from train_job import RESULT, JobError, JobSpec, teaches, write_progress
from training_examples import TEACHER_TEXTS

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]   # where train_job.py is
# upper bounds (seconds) of the training-duration histogram buckets (GET /metrics)
TRAINING_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
LAPSED = "the worker running this job stopped (its lease lapsed)"


class JobRunner:
    """Queues, runs and reports training jobs for every project.

    - ``locks``: the project's ``queue`` and ``train`` locks (default ``FileLocks``);
    - ``dispatch(runner, project)``: has the project's queued jobs run (default ``Threads``);
    - ``training``: runs ``train_job`` on a job directory (default ``SubprocessTraining``);
    - ``on_finish(project, state, seconds)``: counts a finished job's duration;
    - ``training_durations()``: the histogram of every process's jobs, if one is kept
      (``service.metrics`` then reports it instead of this process's);
    - ``reap_lapsed``: ``list`` and ``summary`` first fail the running jobs whose lease
      lapsed and dispatch queued jobs again (workers on other machines can die unseen;
      needs ``locks.holder(project)``, the lease now held);
    - ``warm_up``: load a promoted model in this process (it serves it next);
    - ``threads``: a job's math threads (None: ``settings.math_threads``);
    - ``recover``: at start, fail the jobs of processes that died and run queued ones.
    """

    def __init__(self, store, annotations, *, locks=None, dispatch=None, training=None,
                 on_finish=None, training_durations=None, reap_lapsed=False, warm_up=True,
                 threads=None, recover=True):
        self.store, self.annotations, self.settings = store, annotations, store.settings
        self.records = JobRecords(store, keep=store.settings.keep_jobs)
        self.locks = locks or FileLocks(store)
        self.dispatch = dispatch or Threads()
        self.training = training or SubprocessTraining()
        self.on_finish = on_finish
        if training_durations is not None:   # only then: service.metrics checks for it
            self.training_durations = training_durations
        self.reap_lapsed, self.warm_up, self.threads = reap_lapsed, warm_up, threads
        if recover:
            self.recover()

    # -- what the API reports --------------------------------------------------------
    def list(self, project=None) -> list[dict]:
        """The jobs of a project (of all projects), oldest first."""
        if self.reap_lapsed:
            self.reap(project)
        return self.records.list(project)

    def summary(self) -> dict:
        """How many jobs are in each state."""
        if self.reap_lapsed:
            self.reap()
        return self.records.summary()

    # -- 1. trigger: queue a job or join the queued one ----------------------------------
    def trigger(self, project: str, reason: str, label_config=None, tasks=None) -> dict:
        """Queue a job (or join the queued one) and make sure it will run."""
        with self.locks.queue(project):
            job, created = self._queue(project, reason)
            self._attach(self.records.job_dir(project, job["id"]), label_config, tasks)
        log.info("project %s: training job %s %s (%s)", project, job["id"],
                 "queued" if created else "joined", reason)
        self.dispatch(self, project)
        return {k: job[k] for k in ("id", "project", "state", "created")}

    def _queue(self, project, reason) -> tuple[dict, bool]:
        """Under the queue lock: the project's queued job with ``reason`` added, or a new one;
        whether it is new."""
        queued = self.records.in_state(project, "queued")
        if not queued:
            return self.records.create(project, reason), True
        job = queued[-1]
        job_dir = self.records.job_dir(project, job["id"])
        return self.records.update(job_dir, reasons=job.get("reasons", []) + [reason]), False

    def _attach(self, job_dir: Path, label_config, tasks):
        """Keep a trigger's own label config and tasks (the legacy ``/train`` body) with the job."""
        if tasks is not None:
            (job_dir / "request_tasks.json").write_text(json.dumps(tasks, ensure_ascii=False),
                                                        encoding="utf-8")
        if label_config:
            (job_dir / "label_config.xml").write_text(label_config, encoding="utf-8")

    def annotation_changed(self, project: str, n: int) -> dict | None:
        """Count changes; every ``TRAIN_EVERY_N`` of them triggers a job."""
        every = self.settings.train_every_n
        if every <= 0 or n <= 0:
            return None
        if self.annotations.add_changes(project, n) < every:
            return None
        self.annotations.reset_changes(project)
        return self.trigger(project, f"TRAIN_EVERY_N={every}")

    # -- 2. run the queued jobs, one at a time per project --------------------------------
    def drain(self, project):
        """Run the project's queued jobs one after another (``Threads``), unless another
        process holds its train lock: that one drains the queue."""
        while True:
            with self.locks.train(project, blocking=False) as mine:
                if not mine:
                    return
                while (job_dir := self._start_next(project)) is not None:
                    self._run(project, job_dir)
            # a trigger may have queued a job after our last look but before the unlock
            if not self.records.in_state(project, "queued"):
                return

    def run_queued(self, project, job_id) -> bool:
        """Run one queued job of a project, waiting for the project's train lock first.

        What an RQ worker calls (``service.job_queue.run_job``). Holding the lock, any
        job still marked running belongs to a process that died: it is failed first.
        Returns whether the job was run (it may have been run or failed already).
        """
        with self.locks.train(project, blocking=True) as lease:
            self._fail_interrupted(project)
            job_dir = self._start_next(project, job_id, **self.training.where(lease))
            if job_dir is None:
                return False
            self._run(project, job_dir)
            return True

    def _start_next(self, project, job_id=None, **where) -> Path | None:
        """Mark the oldest queued job (or ``job_id``, if it is still queued) running; its directory."""
        with self.locks.queue(project):
            queued = [j for j in self.records.in_state(project, "queued")
                      if job_id in (None, j["id"])]
            if not queued:
                return None
            job_dir = self.records.job_dir(project, queued[0]["id"])
            self.records.update(job_dir, state="running", started=time.time(),
                                runner_pid=os.getpid(), **where)
            return job_dir

    # -- 3. one job: spec -> train_job -> promote, then prune ------------------------------
    def _run(self, project, job_dir: Path):
        """Run a job marked running; a failure is recorded in its state, never raised."""
        started = time.time()
        try:
            write_progress(job_dir, "gathering")
            spec = self._spec(project, job_dir)
            spec.write(job_dir)
            result = self._finish(project, job_dir, spec, self._train(job_dir))
            self._done(project, job_dir, result, started)
        except Exception as exc:   # a failed job must never take the server down
            self._failed(project, job_dir, exc, started)
        finally:
            shutil.rmtree(job_dir / "work" / "ckpt", ignore_errors=True)
            self.records.prune(project)

    def _spec(self, project, job_dir: Path) -> JobSpec:
        """What this job trains: its label config, its tasks, the served model, the settings."""
        label_config = self._label_config(project, job_dir)
        tasks, source = self._tasks(project, job_dir)
        live, s = self.store.live(project), self.settings
        return JobSpec(project=project, label_config=label_config, tasks=tasks, source=source,
                       model_path=live.path, model_version=live.version, device=self.store.device,
                       batch_size=s.train_batch_size, max_seq_len=s.train_max_seq_len,
                       learning_rate=s.train_learning_rate, num_epochs=s.train_epochs,
                       min_dev_tasks=s.train_min_dev_tasks, inference_engine=s.inference_engine,
                       inference_precision=s.inference_precision,
                       threads=self.threads or s.math_threads, devices=s.train_devices,
                       schema_lang=s.schema_lang, corrections=self._corrections(project, tasks),
                       texts=self._texts(project, tasks, label_config, live.path))

    def _corrections(self, project, tasks) -> list[dict]:
        """The regions of ``/predict``'s remembered suggestions that the annotations of
        ``tasks`` deleted or relabelled (``find_corrections``): the job trains them as
        negatives. Trained without them (logged) when they cannot be read."""
        try:
            ids = [t["id"] for t in tasks if isinstance(t, dict) and t.get("id") is not None]
            return find_corrections(tasks, self.annotations.suggestions(project, ids)) if ids else []
        except Exception:   # noqa: BLE001  corrections are worth less than the job
            log.warning("project %s: the remembered suggestions could not be read; training without "
                        "the annotators' corrections", project, exc_info=True)
            return []

    def _texts(self, project, tasks, label_config: str, model_path) -> list[str]:
        """The unannotated texts a small scratch project's job learns LAC's names on
        (``train_job.teaches``); none for other jobs. With ``LABEL_STUDIO_URL``, first those of
        the project's tasks without an annotation there; then those ``/predict`` answered for
        the project, newest first (the annotation store's ``texts``)."""
        annotated = sum(select_annotation(t) is not None for t in tasks if isinstance(t, dict))
        if not teaches(annotated, model_path):
            return []
        return self._label_studio_texts(project, label_config) + self._predicted_texts(project)

    def _label_studio_texts(self, project, label_config: str) -> list[str]:
        """``label_studio_api.unannotated_texts`` of the first ``<Labels>``' text, with
        ``LABEL_STUDIO_URL`` and a key; none (logged) when they cannot be read."""
        s, controls = self.settings, parse_label_config(label_config)
        if not (s.label_studio_url and s.label_studio_api_key and controls):
            return []
        try:
            return unannotated_texts(s.label_studio_url, s.label_studio_api_key, project,
                                     controls[0].data_key, TEACHER_TEXTS)
        except JobError as exc:     # a teacher is worth less than the job
            log.warning("project %s: training without its unannotated tasks: %s", project, exc)
            return []

    def _predicted_texts(self, project) -> list[str]:
        """The texts ``/predict`` answered for the project, newest first; none (logged) when
        they cannot be read."""
        try:
            return self.annotations.texts(project, TEACHER_TEXTS)
        except Exception:   # noqa: BLE001  a teacher is worth less than the job
            log.warning("project %s: the texts of /predict could not be read; training without them",
                        project, exc_info=True)
            return []

    def _label_config(self, project, job_dir: Path) -> str:
        """The trigger's label config, else the project's stored one; it must parse."""
        config_file = job_dir / "label_config.xml"
        label_config = (config_file.read_text(encoding="utf-8") if config_file.is_file()
                        else self.annotations.label_config(project))
        try:
            parse_label_config(label_config)
        except LabelConfigError as exc:
            raise JobError(f"no usable label config for project {project}: {exc}") from None
        return label_config

    def _tasks(self, project, job_dir) -> tuple[list[dict], str]:
        """The annotated tasks to train on, and where they come from."""
        request_tasks = job_dir / "request_tasks.json"
        if request_tasks.is_file():
            return json.loads(request_tasks.read_text(encoding="utf-8")), "train request"
        s = self.settings
        if s.label_studio_url and s.label_studio_api_key:
            tasks = export_annotated_tasks(s.label_studio_url, s.label_studio_api_key, project)
            return tasks, "Label Studio API"
        return self.annotations.tasks(project), "webhooks"

    def _train(self, job_dir: Path) -> dict:
        """Run ``train_job`` on ``spec.json`` (``training``); its ``result.json``."""
        (job_dir / RESULT).unlink(missing_ok=True)
        code = self.training.run(self.records, job_dir)
        result = _read_result(job_dir)
        if code != 0 or "error" in result or "candidate" not in result:
            raise JobError(result.get("error") or f"train_job.py exited with code {code}: "
                           f"{_tail(job_dir / 'job.log')}")
        return result

    def _finish(self, project, job_dir: Path, spec: JobSpec, result: dict) -> dict:
        """Promote the candidate (or keep it unserved); what the job state says of it."""
        write_progress(job_dir, "promoting")
        meta = _version_meta(project, job_dir.name, spec, result)
        promote = result["promote"]
        version = self.store.promote(project, Path(result["candidate"]), meta, make_current=promote)
        if promote and self.warm_up:
            self.store.predictor(self.store.project_dir(project) / version)   # warm it up here
        summary = _summary(version, spec, result, meta["metrics_on"])
        _append_log(job_dir, summary)
        return {"model_version": version, "promoted": promote, "metrics": meta["dev"],
                "previous_metrics": meta["previous_dev"], "held_out": result["held_out"],
                "per_label": meta["per_label"], "previous_per_label": meta["previous_per_label"],
                "annotated_tasks": result["annotated_tasks"], "source": spec.source,
                "int8": meta.get("int8"), "teacher": meta.get("teacher"), "summary": summary}

    def _done(self, project, job_dir: Path, result: dict, started: float):
        self.records.update(job_dir, state="done", finished=time.time(), **result)
        log.info("project %s: job %s done in %.0fs: %s", project, job_dir.name,
                 time.time() - started, result.get("summary"))
        self._finished(project, "done", started)

    def _failed(self, project, job_dir: Path, exc: Exception, started: float):
        message = plain_text(str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}")
        _append_log(job_dir, f"\nFAILED: {message}")
        self.records.update(job_dir, state="failed", finished=time.time(), error=message)
        log.error("project %s: job %s failed: %s (log: %s); the served model is unchanged",
                  project, job_dir.name, message, job_dir / "job.log")
        self._finished(project, "failed", started)

    def _finished(self, project, state, started: float | None):
        """Tell ``on_finish`` (metrics) how long a finished job ran."""
        if self.on_finish is None:
            return
        try:
            self.on_finish(project, state, max(0.0, time.time() - (started or time.time())))
        except Exception:   # noqa: BLE001  metrics never fail a job
            log.exception("project %s: recording job metrics failed", project)

    # -- jobs whose process died -----------------------------------------------------------
    def recover(self):
        """At start: for each project nobody trains now, remove half-copied versions and fail
        the jobs of processes that died; then have its queued jobs run."""
        for project in self.store.projects():
            with self.locks.train(project, blocking=False) as mine:
                if not mine:
                    continue    # a live process holds the lock: its jobs are not interrupted
                _remove_partial_versions(self.store.project_dir(project))
                self._fail_interrupted(project)
            if self.records.in_state(project, "queued"):
                self.dispatch(self, project)

    def reap(self, project=None):
        """Fail running jobs whose lease lapsed; dispatch queued jobs again (``reap_lapsed``)."""
        for p in [project] if project else self.store.projects():
            if self._lapsed(p):
                with self.locks.train(p, blocking=False) as mine:
                    if mine:
                        self._fail_interrupted(p, LAPSED)
            if self.records.in_state(p, "queued"):
                self.dispatch(self, p)

    def _lapsed(self, project) -> bool:
        """Whether a job of the project is marked running without holding its train lock."""
        running = self.records.in_state(project, "running")
        return any(job.get("lease") != self.locks.holder(project) for job in running)

    def _fail_interrupted(self, project, why="the process running this job stopped") -> list[str]:
        """Under the project's train lock: fail its jobs still marked running (their process
        died); their ids."""
        running = self.records.in_state(project, "running")
        for job in running:
            self._interrupted(project, job, why)
        return [job["id"] for job in running]

    def _interrupted(self, project, job: dict, why: str):
        """Fail a job whose process died, stopping a job process that outlived it and
        removing its checkpoint."""
        job_dir = self.records.job_dir(project, job["id"])
        stopped = stop_job_process(job.get("job_pid"), job_dir)
        shutil.rmtree(job_dir / "work" / "ckpt", ignore_errors=True)
        self.records.update(job_dir, state="failed", finished=time.time(), error=f"interrupted: {why}")
        log.error("project %s: job %s was interrupted%s; the served model is unchanged",
                  project, job["id"], " (its training process was stopped)" if stopped else "")
        self._finished(project, "failed", job.get("started") or job.get("created"))


# -- the embedded mode's parts ---------------------------------------------------------------
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


class Threads:
    """Dispatch: one thread of this process per project runs ``JobRunner.drain``."""

    def __init__(self):
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def __call__(self, runner: JobRunner, project: str):
        with self._lock:
            thread = self._threads.get(project)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=runner.drain, args=(project,),
                                          name=f"train-{project}", daemon=True)
                self._threads[project] = thread
                thread.start()


class SubprocessTraining:
    """``train_job.py JOB_DIR`` in its own process group, logging to ``job.log``.

    The process id is recorded in the job state, so that a server restarted after a
    crash can stop a job process that outlived it (``JobRunner.recover``).
    """

    def __init__(self, python=sys.executable):
        self.python = python

    def where(self, lease) -> dict:
        """What the state of a job started under the train lock ``lease`` says of its runner."""
        return {}

    def run(self, records: JobRecords, job_dir: Path) -> int:
        """Run the job; its exit code."""
        with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
            proc = subprocess.Popen([self.python, str(REPO / "train_job.py"), str(job_dir)],
                                    cwd=job_dir, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            records.update(job_dir, job_pid=proc.pid)
            return proc.wait()


# -- helpers ---------------------------------------------------------------------------------
def _remove_partial_versions(project_dir: Path):
    """Remove the temporary version directories a process that died mid-copy left."""
    for child in project_dir.glob(".tmp-*"):
        shutil.rmtree(child, ignore_errors=True)


def _read_result(job_dir: Path) -> dict:
    try:
        result = json.loads((job_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def _version_meta(project, job_id, spec: JobSpec, result: dict) -> dict:
    """The ``meta.json`` of the version a job made."""
    new, old = result["metrics"], result["previous_metrics"]
    return {
        "project": project, "job": job_id, "created": time.time(),
        "base_model": spec.model_version, "annotated_tasks": result["annotated_tasks"],
        "source": spec.source,
        "metrics_on": "held-out annotations" if result["held_out"] else "training annotations",
        "held_out": result["held_out"],
        "dev": {k: new[k] for k in ("precision", "recall", "f1", "examples")},
        "previous_dev": {k: old[k] for k in ("precision", "recall", "f1")},
        # per Label Studio label and relation, both models on the same annotations
        "per_label": result.get("per_label"), "previous_per_label": result.get("previous_per_label"),
        "train_seconds": result.get("train_seconds"), "epochs_run": result.get("epochs_run"),
        "kind": result.get("kind"),
        # a small scratch project's version trained again on all its texts after its scores
        # (train_job.refits): the held-out texts it saw, which the next job does not score it on
        "refit": result.get("refit"),
        # the labels, relations and Choices options with a positive training example
        # (training_examples.trained_labels): ModelStore.labels_without_examples
        "trained_labels": result.get("trained_labels"),
        # the job's INT8 check (train_job._check_int8): INFERENCE_PRECISION=auto serves INT8
        # only where "served" is true (uie.int8.checked_reason)
        "int8": result.get("int8"),
        # LAC's names a small scratch project's job trained on unannotated texts (train_job.teach):
        # {"texts", "examples", "mapped": {LAC type: prompt}}, None without a teacher
        "teacher": result.get("teacher"),
    }


def _summary(version, spec: JobSpec, result: dict, metrics_on: str) -> str:
    """One line on what a job made and whether it is served."""
    summary = (f"{version} f1={result['metrics']['f1']:.3f} on {metrics_on} "
               f"(served model {spec.model_version}: {result['previous_metrics']['f1']:.3f})")
    if not result["promote"]:
        summary += "; not better than the served model, kept but not served"
    return summary


def _append_log(job_dir: Path, line: str):
    with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
        logf.write(line + "\n")


def _tail(path: Path, lines=6) -> str:
    """The last ``lines`` non-empty lines of a log, as plain text (no colour codes)."""
    try:
        text = plain_text(path.read_text(encoding="utf-8", errors="replace")).strip().splitlines()
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
