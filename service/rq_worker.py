"""``SturdyWorker``: the RQ worker ``make worker`` runs (``service.job_queue.work``). It lives
through a Redis outage while a job runs: heartbeats that fail are skipped (the work horse goes
on), and what RQ writes when a work horse ends waits until Redis answers again. Its own
module because it imports RQ: ``service.job_queue`` must not (an RQ worker's main process
and the serving replicas import it)."""

from __future__ import annotations

import errno
import os

from rq import Worker
from rq.job import JobStatus
from rq.timeouts import HorseMonitorTimeoutException
from rq.utils import now

from service.redis_link import redis_down_errors, wait_for_redis


class SturdyWorker(Worker):
    """Heartbeats that fail while Redis is down are skipped (the work horse goes on); what
    RQ writes when a work horse ends waits until Redis answers again."""

    def _quietly(self, what, *args):
        try:
            what(*args)
        except redis_down_errors() as exc:
            self.log.warning("Worker %s: Redis unreachable (%s); the job goes on", self.name, exc)

    def _until_redis(self, what, *args):
        while True:
            try:
                return what(*args)
            except redis_down_errors() as exc:
                self.log.warning("Worker %s: Redis unreachable (%s); retrying", self.name, exc)
                wait_for_redis(self.connection, forever=True)

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's, and the worker registered again: a Redis restarted without its data
        forgot it (``/health`` counts the registered workers)."""
        from rq import worker_registration

        super().heartbeat(timeout, pipeline)
        worker_registration.register(self, pipeline)

    def execute_job(self, job, queue):
        self.prepare_execution(job)
        self.fork_work_horse(job, queue)
        self.monitor_work_horse(job, queue)
        self._until_redis(self.set_state, "idle")

    def monitor_work_horse(self, job, queue):
        """RQ's, with heartbeats that may fail and a retried ending."""
        retpid = ret_val = rusage = None
        job.started_at = now()
        while True:
            try:
                with self.death_penalty_class(self.job_monitoring_interval,
                                              HorseMonitorTimeoutException):
                    retpid, ret_val, rusage = self.wait_for_horse()
                break
            except HorseMonitorTimeoutException:
                self._quietly(self.set_current_job_working_time,
                              (now() - job.started_at).total_seconds())
                if job.timeout not in (None, -1) and self.current_job_working_time > job.timeout + 60:
                    self.kill_horse()
                    retpid, ret_val, rusage = self.wait_for_horse()
                    break
                self._quietly(self.maintain_heartbeats, job)
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    raise
                self._quietly(self.heartbeat)
        self._until_redis(self.set_current_job_working_time, 0)
        self._horse_pid = 0
        if ret_val != os.EX_OK:
            self._until_redis(self._horse_failed, job, queue, retpid, ret_val, rusage)

    def _horse_failed(self, job, queue, retpid, ret_val, rusage):
        from rq.exceptions import InvalidJobOperation

        try:
            status = job.get_status()
        except InvalidJobOperation:
            return      # the job's key is gone (expired, or Redis lost its data)
        if self._stopped_job_id == job.id:
            self.handle_job_failure(job, queue=queue,
                                    exc_string="Job stopped by user, work-horse terminated.")
        elif status not in (JobStatus.FINISHED, JobStatus.FAILED):
            job.ended_at = now()
            signal_msg = (f" (signal {os.WTERMSIG(ret_val)})"
                          if ret_val and os.WIFSIGNALED(ret_val) else "")
            exc_string = (f"Work-horse terminated unexpectedly; waitpid returned "
                          f"{ret_val}{signal_msg}; ")
            self.log.warning("Worker %s: job %s failed (%s)", self.name, job.id, exc_string)
            self.handle_work_horse_killed(job, retpid, ret_val, rusage)
            self.handle_job_failure(job, queue=queue, exc_string=exc_string)
