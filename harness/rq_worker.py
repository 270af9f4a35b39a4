"""``python job_queue.py worker`` (what ``make worker`` runs), in its own session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.gunicorn_process import REPO


class RQWorker:
    """A real RQ worker process with ``env``; ``wait`` until it is idle, ``stop`` it warmly."""

    def __init__(self, env, log_path):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "job_queue.py", "worker"], cwd=REPO,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, redis, timeout=120):
        """Until an RQ worker is registered idle in ``redis`` (a ``RedisServer``)."""
        from rq import Worker

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RQ worker exited ({self.log_path}): {self.log_path.read_text()[-3000:]}")
            if any(w.get_state() == "idle" for w in Worker.all(connection=redis.client())):
                return self
            time.sleep(0.25)
        raise RuntimeError(f"RQ worker not idle after {timeout}s ({self.log_path})")

    def horses(self) -> list[int]:
        """The work horses (children) of this worker."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)     # RQ's warm shutdown: idle, it exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
