"""Training on RQ workers over Redis: the scale-out mode, with ``REDIS_URL`` set.

    make worker                    # = python job_queue.py worker: recovery, then an RQ worker
    rq worker --url $REDIS_URL uie-training   # a plain RQ worker works too (no recovery at start)

Serving replicas (``make run`` on any machines) and workers share ``MODEL_DIR``
(shared storage) and one Redis. Both run the one ``jobs.JobRunner`` flow
(trigger -> queue -> spec -> ``train_job`` -> promote -> prune), given this
module's parts instead of the embedded mode's:

- ``RedisLocks`` (for ``jobs.FileLocks``): one lock per project for the queue,
  and the train lock, whose token is the running job's *lease*, renewed every
  third of ``JOB_LEASE_SECONDS`` while held;
- ``RQDispatch`` (for ``jobs.Threads``): a trigger on any replica queues a job
  exactly as in the embedded mode (its state, its ``/train`` annotations and
  label config go into ``MODEL_DIR/<project>/jobs/<id>/``; a trigger while one is
  queued joins it) and enqueues one RQ job (``run_job``) for it on the
  ``uie-training`` queue; a queued job whose RQ job was lost (its worker died
  before it ran) is enqueued again;
- ``WorkHorseTraining`` (for ``jobs.SubprocessTraining``): ``run_job`` runs in
  RQ's work horse (a process per job) and calls ``JobRunner.run_queued``, which
  waits for the project's train lock and calls ``train_job.run`` in the work
  horse itself; the job's state records the lease, host and RQ worker;
- ``RedisDurations``: finished jobs' durations in one histogram for every
  replica's ``/metrics``; and ``reap_lapsed``: listing jobs (``/jobs``,
  ``/metrics``) fails a running job whose lease lapsed.

``queue_runner`` (a serving replica, and ``make worker``'s start-up check) and
``worker_runner`` (inside a work horse) put them together. The work horse kills
itself (SIGKILL) when its RQ worker died (kill -9 of the worker stops its job
too) or when it lost the lease. A job whose lease lapsed is reported ``failed:
interrupted`` by the next replica that lists jobs or by the next job of that
project; its partial checkpoint is removed and the served model stays. Nothing
of RQ's own job bookkeeping is relied on for what ``/jobs`` says: the job
states in ``MODEL_DIR`` are the truth. Replicas read ``current`` on every
request, so a new version is served everywhere next. Nothing here imports
Paddle at import time: an RQ worker's main process forks a work horse per job.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from projects import is_project_name
from settings import available_cores
from service.jobs import TRAINING_BUCKETS, JobRunner

log = logging.getLogger("job_queue")
QUEUE = "uie-training"
LOCK_PREFIX = "uie:lock:"
DURATIONS_KEY = "uie:metrics:training_seconds"
RUN_JOB = "service.job_queue.run_job"   # what an RQ job calls (``job_queue.run_job`` too)
ALIVE = ("queued", "started", "deferred", "scheduled")


def connect(url: str):
    """A Redis connection for ``REDIS_URL`` (bytes in, bytes out)."""
    import redis

    return redis.Redis.from_url(url, health_check_interval=30)


class Layout:
    """The projects and job directories of ``MODEL_DIR``, without loading any model
    (``ModelStore`` loads Paddle, which an RQ worker's main process must not: it forks a
    work horse per job)."""

    def __init__(self, settings):
        self.settings = settings
        self.root = Path(settings.model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def projects(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and is_project_name(d.name))

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
        interval = max(0.2, self.seconds / 3)
        self.renewed = time.monotonic()
        next_renewal = self.renewed + interval
        while not self.done.wait(min(0.5, interval)):
            if self.fatal and os.getppid() != self.parent:
                self._die(f"the RQ worker (pid {self.parent}) that started this work horse is gone")
                return
            now = time.monotonic()
            if now >= next_renewal:
                if not self._renew(now):
                    return
                next_renewal = now + interval

    def _renew(self, now: float) -> bool:
        """Extend the lease; False once it is lost (or could not be renewed for a whole lease)."""
        from redis.exceptions import LockNotOwnedError, RedisError

        try:
            self.lock.extend(self.seconds, replace_ttl=True)
            self.renewed = now
        except LockNotOwnedError:
            self._die(f"lost the lease {self.lock.name}")
            return False
        except RedisError as exc:
            log.warning("could not renew the lease %s: %s", self.lock.name, exc)
            if now - self.renewed > self.seconds:
                self._die(f"could not renew the lease {self.lock.name} for {self.seconds}s")
                return False
        return True

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


class RQDispatch:
    """Dispatch: every queued job of a project has a live RQ job (``run_job``) on ``QUEUE``."""

    def __init__(self, conn):
        from rq import Queue

        self.conn = conn
        self.queue = Queue(QUEUE, connection=conn)

    def __call__(self, runner, project: str):
        self._cleanup_registry()
        with runner.locks.queue(project):
            for job in runner.records.in_state(project, "queued"):
                if not self._alive(job.get("rq_job")):
                    self._enqueue(runner.records, project, job)

    def _cleanup_registry(self):
        """RQ's own abandoned-job handling (it moves lost RQ jobs to the failed registry)."""
        try:
            self.queue.started_job_registry.cleanup()
        except Exception as exc:   # noqa: BLE001
            log.warning("RQ registry cleanup failed: %s", exc)

    def _alive(self, rq_id) -> bool:
        """Whether the RQ job ``rq_id`` will still run (or runs)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        if not rq_id:
            return False
        try:
            return Job.fetch(rq_id, connection=self.conn).get_status() in ALIVE
        except NoSuchJobError:
            return False

    def _enqueue(self, records, project: str, job: dict):
        """Hand a queued job to the workers (once more if its RQ job was lost)."""
        tries = job.get("rq_tries", 0) + 1
        rq_id = f"uie-{project}-{job['id']}-{tries}"
        self.queue.enqueue(RUN_JOB, project, job["id"], job_id=rq_id, job_timeout=-1,
                           result_ttl=86400, failure_ttl=7 * 86400,
                           description=f"train project {project}, job {job['id']}")
        records.update(records.job_dir(project, job["id"]), rq_job=rq_id, rq_tries=tries)
        log.info("project %s: job %s handed to the %s queue as RQ job %s", project, job["id"],
                 QUEUE, rq_id)


class RedisDurations:
    """Finished jobs' durations as one histogram in Redis: the same on every replica."""

    def __init__(self, conn):
        self.conn = conn

    def record(self, project, state, seconds):
        """``JobRunner.on_finish``: count one finished job."""
        with self.conn.pipeline(transaction=True) as pipe:
            for bound in TRAINING_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(DURATIONS_KEY, f"{state}:{bound}", 1)
            pipe.hincrby(DURATIONS_KEY, f"{state}:+Inf", 1)
            pipe.hincrbyfloat(DURATIONS_KEY, f"{state}:sum", seconds)
            pipe.execute()

    def read(self) -> dict:
        """``{state: {"buckets": [(bound, cumulative count)], "sum", "count"}}`` of every job."""
        raw = {k.decode(): v.decode() for k, v in self.conn.hgetall(DURATIONS_KEY).items()}
        return {state: _histogram(raw, state)
                for state in sorted({k.split(":", 1)[0] for k in raw})}


def _histogram(raw: dict, state: str) -> dict:
    buckets = [(bound, int(raw.get(f"{state}:{bound}", 0))) for bound in TRAINING_BUCKETS]
    count = int(raw.get(f"{state}:+Inf", 0))
    return {"buckets": buckets + [(float("inf"), count)],
            "sum": float(raw.get(f"{state}:sum", 0)), "count": count}


class WorkHorseTraining:
    """``train_job.run`` in this RQ work horse, its output (Paddle's too) in ``job.log``."""

    def where(self, lease) -> dict:
        """What the state of a job started under ``lease`` says of its runner."""
        return {"lease": lease, "host": socket.gethostname(),
                "worker": os.environ.get("RQ_WORKER_ID"), "rq_job": os.environ.get("RQ_JOB_ID")}

    def run(self, records, job_dir: Path) -> int:
        """Run the job; its exit status."""
        import train_job    # Paddle: only in the work horse, never in the worker's main process

        with open(job_dir / "job.log", "a", encoding="utf-8") as logf, _output_to(logf):
            records.update(job_dir, job_pid=None, horse_pid=os.getpid())
            return train_job.run(job_dir)


@contextmanager
def _output_to(logf):
    """This process's stdout, stderr and root logger write to ``logf`` meanwhile."""
    with _fds_to(logf.fileno()), _root_log_to(logf):
        yield


@contextmanager
def _fds_to(fileno: int):
    """File descriptors 1 and 2 point to ``fileno`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fileno, 1)
    os.dup2(fileno, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


@contextmanager
def _root_log_to(stream):
    """The root logger writes to ``stream`` only, at INFO, meanwhile."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    root.handlers, root.level = [handler], logging.INFO
    try:
        yield
    finally:
        handler.flush()
        root.handlers, root.level = handlers, level


def queue_runner(store, annotations, conn, recover=True) -> JobRunner:
    """The runner of a serving replica (and of ``make worker``'s start-up check): jobs go to
    RQ workers, locks and durations are in Redis, lapsed leases are reaped on listing."""
    durations = RedisDurations(conn)
    return JobRunner(store, annotations,
                     locks=RedisLocks(conn, store.settings.job_lease_seconds),
                     dispatch=RQDispatch(conn),
                     on_finish=durations.record, training_durations=durations.read,
                     reap_lapsed=True, recover=recover)


def worker_runner(store, annotations, conn) -> JobRunner:
    """The runner in an RQ work horse: trains in this process (which serves nothing); losing
    the lease, or its RQ worker, kills the process."""
    settings, durations = store.settings, RedisDurations(conn)
    return JobRunner(store, annotations,
                     locks=RedisLocks(conn, settings.job_lease_seconds, fatal=True),
                     dispatch=RQDispatch(conn), training=WorkHorseTraining(),
                     on_finish=durations.record, training_durations=durations.read,
                     reap_lapsed=True, warm_up=False, recover=False,
                     # a worker's cores are its jobs' (WORKERS divides a server's among its workers)
                     threads=settings.cpu_threads or available_cores())


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
    runner = worker_runner(ModelStore(settings), RedisAnnotationStore(conn), conn)
    ran = runner.run_queued(project, job_id)
    state = runner.records.get(project, job_id) or {}
    return {"ran": ran, "state": state.get("state"), "model_version": state.get("model_version"),
            "error": state.get("error")}


def worker_main(argv=None) -> int:
    """``python job_queue.py worker``: check the settings, recover, run an RQ worker."""
    args = _worker_args(argv)
    settings = _worker_settings()
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    conn = _reach(settings.redis_url)
    if conn is None:
        return 1
    from rq import Worker

    runner = queue_runner(Layout(settings), None, conn)   # recovers interrupted and lost jobs
    log.info("MODEL_DIR=%s, queue %s, lease %ss", runner.store.root, QUEUE,
             settings.job_lease_seconds)
    worker = Worker([runner.dispatch.queue], connection=conn, name=args.name)
    worker.work(burst=args.burst, logging_level=settings.log_level, with_scheduler=False)
    return 0


def _worker_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="job_queue.py worker", description=(
        "Run training jobs from the Redis queue (REDIS_URL), each in its own process. "
        "Reads the same environment as the serving replicas (MODEL_DIR on shared storage)."))
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    return parser.parse_args(argv)


def _worker_settings():
    """The settings of this environment, if they are valid and name a Redis (else None, said)."""
    from settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None
    if not settings.redis_url:
        print("error: REDIS_URL is not set; a worker takes its jobs from Redis", file=sys.stderr)
        return None
    return settings


def _reach(url: str):
    """A connection to the Redis at ``url`` that answers (else None, said)."""
    from redis.exceptions import RedisError

    conn = connect(url)
    try:
        conn.ping()
    except RedisError as exc:
        print(f"error: cannot reach Redis at REDIS_URL: {exc}", file=sys.stderr)
        return None
    return conn


def main(argv) -> int:
    """``job_queue.py worker [--burst] [--name NAME]`` (the top-level entry point)."""
    if argv[:1] != ["worker"]:
        print("usage: python job_queue.py worker [--burst] [--name NAME]", file=sys.stderr)
        return 2
    return worker_main(argv[1:])
