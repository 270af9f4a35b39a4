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

Redis outages: ``make worker`` runs ``SturdyWorker``s (``work``, ``service.rq_worker``): heartbeats
that fail while a job runs are skipped, what RQ writes when a work horse ends
waits for Redis, and where RQ's loop quits anyway a new worker starts once
Redis answers. A work horse tolerates an unrenewable lease for a whole lease
and waits for Redis before RQ records its result. ``queue_health`` is
``/health``'s count of live workers. Serving replicas use ``connect(url,
WEBHOOK_TIMEOUT)`` on the webhook path and spool webhooks while Redis is down
(``service.webhook_spool``).
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

from service.projects import is_project_name
from settings import available_cores
from service.jobs import TRAINING_BUCKETS, JobRunner
from service.redis_link import connect, redis_down_errors, wait_for_redis

log = logging.getLogger("job_queue")
QUEUE = "uie-training"
LOCK_PREFIX = "uie:lock:"
DURATIONS_KEY = "uie:metrics:training_seconds"
RUN_JOB = "service.job_queue.run_job"   # what an RQ job calls (``job_queue.run_job`` too)
ALIVE = ("queued", "started", "deferred", "scheduled")


WEBHOOK_TIMEOUT = 0.5     # seconds: a webhook's Redis calls fail fast, then it is spooled
WORKER_TTL = 60           # an RQ worker that stopped heartbeating is gone after WORKER_TTL + 60 s
MONITOR_SECONDS = 10      # a busy worker's heartbeat (RQ's job_monitoring_interval; RQ's default: 30)


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
                renewed = self._renew(now)
                if renewed is False:
                    return
                # after a failure, try again soon: once Redis is back, a lease it lost (a
                # restart without its data) stops this job at once, not an interval later
                next_renewal = now + (interval if renewed else 0.5)

    def _renew(self, now: float) -> bool | None:
        """Extend the lease: True; False once it is lost (or could not be renewed for a whole
        lease); None when Redis did not answer (tolerated for a lease)."""
        from redis.exceptions import LockNotOwnedError, RedisError

        try:
            self.lock.extend(self.seconds, replace_ttl=True)
            self.renewed = now
        except LockNotOwnedError:
            self._die(f"lost the lease {self.lock.name}")
            return False
        except RedisError as exc:
            if self.renewed == getattr(self, "_warned", None):
                log.debug("could not renew the lease %s: %s", self.lock.name, exc)
            else:       # once per outage: it is tried again every half second
                log.warning("could not renew the lease %s: %s", self.lock.name, exc)
                self._warned = self.renewed
            if now - self.renewed > self.seconds:
                self._die(f"could not renew the lease {self.lock.name} for {self.seconds}s")
                return False
            return None
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
    except redis_down_errors() as exc:   # Redis is down: the lock lapses by itself (its TTL)
        log.warning("could not release %s (Redis unreachable: %s); it lapses by itself",
                    lock.name, exc)


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
    wait_for_redis(conn)    # RQ records the result next: not while Redis is down
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
    runner = queue_runner(Layout(settings), None, conn)   # recovers interrupted and lost jobs
    log.info("MODEL_DIR=%s, queue %s, lease %ss", runner.store.root, QUEUE,
             settings.job_lease_seconds)
    return work(conn, runner.dispatch.queue, args, settings.log_level)


def work(conn, queue, args, logging_level) -> int:
    """Run ``SturdyWorker``s until one stops on request (SIGTERM/SIGINT) or a burst ends.

    RQ's work loop quits on any error it does not expect, and a Redis outage outside its
    dequeue (a heartbeat, a status write) is one: then this waits until Redis answers
    again and starts a new worker (a new name: the old one may still look registered)."""
    from rq.exceptions import StopRequested

    from service.rq_worker import SturdyWorker     # RQ: imported by the worker command only

    round_ = 0
    while True:
        name = args.name if round_ == 0 or args.name is None else f"{args.name}-{round_}"
        worker = None
        try:
            worker = SturdyWorker([queue], connection=conn, name=name, worker_ttl=WORKER_TTL,
                              job_monitoring_interval=MONITOR_SECONDS)
            worker.work(burst=args.burst, logging_level=logging_level, with_scheduler=False)
        except redis_down_errors() as exc:       # e.g. its teardown (register_death) needs Redis
            name = worker.name if worker is not None else name
            log.warning("RQ worker %s stopped on a Redis error: %s", name, exc)
            _stop_pubsub(worker)
        if args.burst or _stopping(worker):
            return 0
        round_ += 1
        log.warning("RQ worker %s left its work loop (Redis unreachable?); a new worker starts "
                    "once Redis answers", worker.name if worker is not None else name)
        try:
            wait_for_redis(conn, forever=True, stop=lambda: _stopping(worker))
        except StopRequested:       # SIGTERM meanwhile (RQ's handler raises it when idle)
            return 0
        if _stopping(worker):
            return 0


def _stopping(worker) -> bool:
    """Whether a stop was asked for (SIGTERM/SIGINT), busy or idle."""
    return worker is not None and bool(worker._stop_requested
                                       or worker._shutdown_requested_date is not None)


def _stop_pubsub(worker):
    """The command listener of a worker whose teardown failed (it would retry forever)."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        thread.stop()
        thread.join(timeout=1)


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


def queue_health(conn, records, breaker=None) -> dict:
    """``/health``'s scale-out part: ``{"workers": how many RQ workers are alive (None: Redis
    unreachable)}`` and ``{"problems": {...}}`` entries when no worker is alive while jobs
    are queued, or Redis does not answer. ``conn`` should fail fast (``connect(url, timeout)``)."""
    from rq import Queue, Worker

    queued = records.summary().get("queued", 0)
    problems = {}
    workers = None
    if breaker is None or not breaker.is_open():
        try:
            workers = len(Worker.all(queue=Queue(QUEUE, connection=conn)))
        except redis_down_errors() as exc:
            if breaker is not None:
                breaker.failed()
            problems["redis"] = {"errors": [f"Redis is unreachable: {exc}"]}
    else:
        problems["redis"] = {"errors": ["Redis is unreachable (it failed a few seconds ago)"]}
    if workers == 0 and queued:
        problems["rq_workers"] = {"errors": [
            f"no RQ worker is alive and {queued} training job(s) are queued: start one "
            f"(`make worker`), under a supervisor"]}
    return {"workers": workers, "queued_jobs": queued, "problems": problems}
