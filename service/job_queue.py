"""Training on RQ workers over Redis: the scale-out mode, with ``REDIS_URL`` set.

    make worker                    # = python job_queue.py worker: recovery, then an RQ worker
    rq worker --url $REDIS_URL uie-training   # a plain RQ worker works too (no recovery at start)

Serving replicas (``make run`` on any machines) and workers share ``MODEL_DIR``
(shared storage) and one Redis. A trigger on any replica queues a job exactly
as in the embedded mode (``jobs.JobRunner.trigger``: the job's state, its
``/train`` annotations and label config go into ``MODEL_DIR/<project>/jobs/<id>/``;
a trigger while one is queued joins it) and enqueues one RQ job for it on the
``uie-training`` queue. A worker runs it in RQ's work horse (a process per job):
``run_job`` takes the project's train lock, a lease in Redis, and runs the same
``JobRunner._run`` as the embedded runner (spec -> ``train_job`` -> promote),
with ``train_job.run`` called in the work horse itself. Replicas read
``current`` on every request, so the new version is served everywhere next.

Locks are Redis locks (``RedisLocks``): one per project for the queue, and the
train lock, whose token is the running job's *lease*. The work horse renews it
every third of ``JOB_LEASE_SECONDS``; it kills itself (SIGKILL) when its RQ
worker died (kill -9 of the worker stops its job too) or when it lost the
lease. A job whose lease lapsed is reported ``failed: interrupted`` by the next
replica that lists jobs (``/jobs``, ``/metrics``, a trigger) or by the next
job of that project; its partial checkpoint is removed and the served model
stays. A queued job whose RQ job was lost (its worker died before it ran) is
enqueued again the same way. Nothing of RQ's own job bookkeeping is relied on
for what ``/jobs`` says: the job states in ``MODEL_DIR`` are the truth.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from service.jobs import TRAINING_BUCKETS, JobRunner

log = logging.getLogger("job_queue")
QUEUE = "uie-training"
LOCK_PREFIX = "uie:lock:"
DURATIONS_KEY = "uie:metrics:training_seconds"
# the same rule as service.model_store.PROJECT_RE (not imported: model_store loads Paddle, and an
# RQ worker's main process must not, since it forks a work horse per job)
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ALIVE = ("queued", "started", "deferred", "scheduled")


def connect(url: str):
    """A Redis connection for ``REDIS_URL`` (bytes in, bytes out)."""
    import redis

    return redis.Redis.from_url(url, health_check_interval=30)


class Layout:
    """The projects and job directories of ``MODEL_DIR``, without loading any model."""

    def __init__(self, settings):
        self.settings = settings
        self.root = Path(settings.model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def projects(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and PROJECT_RE.match(d.name))

    def project_dir(self, project: str) -> Path:
        return self.root / project


class _Keeper(threading.Thread):
    """Renews a held lease; in a work horse, kills the process when the lease or its worker is lost."""

    def __init__(self, lock, seconds: float, fatal: bool):
        super().__init__(name=f"lease-{lock.name}", daemon=True)
        self.lock, self.seconds, self.fatal = lock, seconds, fatal
        self.parent = os.getppid()
        self.done = threading.Event()

    def _die(self, why: str):
        log.error("%s: stopping this job process", why)
        if self.fatal:
            os.kill(os.getpid(), signal.SIGKILL)
        self.done.set()

    def run(self):
        from redis.exceptions import LockNotOwnedError, RedisError

        interval = max(0.2, self.seconds / 3)
        renewed = next_renewal = time.monotonic()
        next_renewal += interval
        while not self.done.wait(min(0.5, interval)):
            if self.fatal and os.getppid() != self.parent:
                self._die(f"the RQ worker (pid {self.parent}) that started this work horse is gone")
                return
            now = time.monotonic()
            if now < next_renewal:
                continue
            try:
                self.lock.extend(self.seconds, replace_ttl=True)
                renewed = now
            except LockNotOwnedError:
                self._die(f"lost the lease {self.lock.name}")
                return
            except RedisError as exc:
                log.warning("could not renew the lease %s: %s", self.lock.name, exc)
                if now - renewed > self.seconds:
                    self._die(f"could not renew the lease {self.lock.name} for {self.seconds}s")
                    return
            next_renewal = now + interval

    def stop(self):
        self.done.set()
        self.join(timeout=5)


class RedisLocks:
    """``jobs.FileLocks``' interface on Redis: what every replica and worker on any machine sees.

    The train lock of a project is a lease of ``lease_seconds``, renewed while
    held; its token is stored in the state of the job it runs.
    """

    def __init__(self, conn, lease_seconds: float, fatal=False):
        self.conn, self.lease_seconds, self.fatal = conn, lease_seconds, fatal

    def _name(self, kind: str, project: str) -> str:
        return f"{LOCK_PREFIX}{kind}:{project}"

    @contextmanager
    def queue(self, project):
        lock = self.conn.lock(self._name("queue", project), timeout=60, sleep=0.05,
                              blocking_timeout=120, thread_local=False)
        if not lock.acquire():
            raise TimeoutError(f"project {project}: its queue lock was not free for 120 s")
        try:
            yield True
        finally:
            _release(lock)

    @contextmanager
    def train(self, project, blocking=True):
        """Yields the lease's token (None if not taken: only without ``blocking``)."""
        lock = self.conn.lock(self._name("train", project), timeout=self.lease_seconds,
                              sleep=0.25, thread_local=False)
        if not lock.acquire(blocking=blocking):
            yield None
            return
        keeper = _Keeper(lock, self.lease_seconds, self.fatal)
        keeper.start()
        try:
            yield lock.local.token.decode()
        finally:
            keeper.stop()
            _release(lock)

    def holder(self, project) -> str | None:
        """The token of the lease now held on a project's train lock, if any."""
        raw = self.conn.get(self._name("train", project))
        return raw.decode() if raw is not None else None


def _release(lock):
    from redis.exceptions import LockError

    try:
        lock.release()
    except LockError:
        pass            # it lapsed; whoever holds it now keeps it


class QueueRunner(JobRunner):
    """``JobRunner`` whose jobs run on RQ workers; what a serving replica uses with ``REDIS_URL``."""

    def __init__(self, store, annotations, conn, recover=True, fatal=False):
        from rq import Queue

        self.conn = conn
        self.queue = Queue(QUEUE, connection=conn)
        super().__init__(store, annotations,
                         locks=RedisLocks(conn, store.settings.job_lease_seconds, fatal=fatal),
                         recover=recover, on_finish=self.record_duration)

    # -- what every replica sees --------------------------------------------
    def list(self, project=None) -> list[dict]:
        self.reap(project)
        return self._jobs(project)

    def reap(self, project=None):
        """Fail running jobs whose lease lapsed; enqueue queued jobs whose RQ job was lost."""
        for p in [project] if project else self.store.projects():
            jobs = self._jobs(p)
            running = [j for j in jobs if j.get("state") == "running"]
            if running and any(j.get("lease") != self.locks.holder(p) for j in running):
                with self.locks.train(p, blocking=False) as mine:
                    if mine:
                        self._fail_interrupted(p, "the worker running this job stopped "
                                                  "(its lease lapsed)")
            if any(j.get("state") == "queued" for j in jobs):
                self._ensure_worker(p)

    def _cleanup_partial(self):
        """Half-copied versions of projects nobody is training now (a worker may be promoting)."""
        for project in self.store.projects():
            with self.locks.train(project, blocking=False) as mine:
                if mine:
                    for child in self.store.project_dir(project).glob(".tmp-*"):
                        shutil.rmtree(child, ignore_errors=True)

    # -- handing jobs to workers ----------------------------------------------
    def _ensure_worker(self, project):
        """Make sure the queued job of ``project`` has a live RQ job (enqueue one if not)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            self.queue.started_job_registry.cleanup()   # RQ's own abandoned-job handling
        except Exception as exc:   # noqa: BLE001
            log.warning("RQ registry cleanup failed: %s", exc)
        with self.locks.queue(project):
            for job in [j for j in self._jobs(project) if j.get("state") == "queued"]:
                rq_id = job.get("rq_job")
                if rq_id:
                    try:
                        if Job.fetch(rq_id, connection=self.conn).get_status() in ALIVE:
                            continue
                    except NoSuchJobError:
                        pass
                tries = job.get("rq_tries", 0) + 1
                rq_id = f"uie-{project}-{job['id']}-{tries}"
                self.queue.enqueue("service.job_queue.run_job", project, job["id"], job_id=rq_id, job_timeout=-1,
                                   result_ttl=86400, failure_ttl=7 * 86400,
                                   description=f"train project {project}, job {job['id']}")
                self._update(self._jobs_dir(project) / job["id"], rq_job=rq_id, rq_tries=tries)
                log.info("project %s: job %s handed to the %s queue as RQ job %s", project,
                         job["id"], QUEUE, rq_id)

    # -- metrics ------------------------------------------------------------------
    def record_duration(self, project, state, seconds):
        """Count a finished job's duration in Redis: one histogram for every replica."""
        with self.conn.pipeline(transaction=True) as pipe:
            for bound in TRAINING_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(DURATIONS_KEY, f"{state}:{bound}", 1)
            pipe.hincrby(DURATIONS_KEY, f"{state}:+Inf", 1)
            pipe.hincrbyfloat(DURATIONS_KEY, f"{state}:sum", seconds)
            pipe.execute()

    def training_durations(self) -> dict:
        """``{state: {"buckets": [(bound, cumulative count)], "sum", "count"}}`` of every job."""
        raw = {k.decode(): v.decode() for k, v in self.conn.hgetall(DURATIONS_KEY).items()}
        out = {}
        for state in sorted({k.split(":", 1)[0] for k in raw}):
            buckets = [(bound, int(raw.get(f"{state}:{bound}", 0))) for bound in TRAINING_BUCKETS]
            count = int(raw.get(f"{state}:+Inf", 0))
            out[state] = {"buckets": buckets + [(float("inf"), count)],
                          "sum": float(raw.get(f"{state}:sum", 0)), "count": count}
        return out


class WorkerRunner(QueueRunner):
    """The runner inside an RQ work horse: trains here, in this process."""

    warm_up = False     # this process serves nothing

    def __init__(self, store, annotations, conn):
        super().__init__(store, annotations, conn, recover=False, fatal=True)

    def _running_fields(self, lease) -> dict:
        return {"lease": lease, "host": socket.gethostname(), "worker": os.environ.get("RQ_WORKER_ID"),
                "rq_job": os.environ.get("RQ_JOB_ID")}

    def _spec(self, project, job_dir):
        spec = super()._spec(project, job_dir)
        # a worker's cores are its jobs' (WORKERS divides a server's among its gunicorn workers)
        spec.threads = self.settings.cpu_threads or len(os.sched_getaffinity(0))
        return spec

    def _train(self, job_dir: Path) -> int:
        """``train_job.run`` in this work horse, its output (Paddle's too) in ``job.log``."""
        import train_job

        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(job_dir / "job.log", "a", encoding="utf-8") as logf:
            os.dup2(logf.fileno(), 1)
            os.dup2(logf.fileno(), 2)
            handler = logging.StreamHandler(logf)
            handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
            root.handlers, root.level = [handler], logging.INFO
            self._update(job_dir, job_pid=None, horse_pid=os.getpid())
            try:
                return train_job.run(job_dir)
            finally:
                handler.flush()
                sys.stdout.flush()
                sys.stderr.flush()
                root.handlers, root.level = handlers, level
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])


def run_job(project: str, job_id: str) -> dict:
    """The RQ job: run ``job_id`` of ``project`` (in RQ's work horse, after the project's
    running job, if any). The settings come from this worker's environment."""
    from service.model_store import ModelStore
    from service.redis_annotation_store import RedisAnnotationStore
    from settings import Settings

    settings = Settings.from_env()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set in the worker's environment")
    conn = connect(settings.redis_url)
    runner = WorkerRunner(ModelStore(settings), RedisAnnotationStore(conn), conn)
    ran = runner.run_queued(project, job_id)
    state = next((j for j in runner._jobs(project) if j["id"] == job_id), {})
    return {"ran": ran, "state": state.get("state"), "model_version": state.get("model_version"),
            "error": state.get("error")}


def worker_main(argv=None) -> int:
    """``python job_queue.py worker``: check the settings, recover, run an RQ worker."""
    from settings import ConfigError, Settings

    parser = argparse.ArgumentParser(prog="job_queue.py worker", description=(
        "Run training jobs from the Redis queue (REDIS_URL), each in its own process. "
        "Reads the same environment as the serving replicas (MODEL_DIR on shared storage)."))
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("error: REDIS_URL is not set; a worker takes its jobs from Redis", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    from redis.exceptions import RedisError
    from rq import Worker

    conn = connect(settings.redis_url)
    try:
        conn.ping()
    except RedisError as exc:
        print(f"error: cannot reach Redis at REDIS_URL: {exc}", file=sys.stderr)
        return 1
    runner = QueueRunner(Layout(settings), None, conn)   # recovers interrupted and lost jobs
    log.info("MODEL_DIR=%s, queue %s, lease %ss", runner.store.root, QUEUE,
             settings.job_lease_seconds)
    worker = Worker([runner.queue], connection=conn, name=args.name)
    worker.work(burst=args.burst, logging_level=settings.log_level, with_scheduler=False)
    return 0


def main(argv) -> int:
    """``job_queue.py worker [--burst] [--name NAME]`` (the top-level entry point)."""
    if argv[:1] != ["worker"]:
        print("usage: python job_queue.py worker [--burst] [--name NAME]", file=sys.stderr)
        return 2
    return worker_main(argv[1:])
