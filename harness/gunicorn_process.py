"""A real gunicorn serving ``_wsgi:app`` as ``make run`` starts it: for the tests and bench/.

Kept free of test fixtures (importing it sets up nothing), so bench/ can use it too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """``python -m gunicorn -c gunicorn.conf.py _wsgi:app`` on a free port with ``env``.

    It runs in its own process group, so ``stop`` also ends its workers and any
    training subprocess they started. As a context manager it waits for
    ``/health`` on entry and stops on exit.
    """

    def __init__(self, env, log_path):
        """``env`` adds to this process's environment; a value ``None`` removes that variable."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port), PYTHONUNBUFFERED="1", **env)
        full_env = {k: v for k, v in full_env.items() if v is not None}
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.ready_seconds = None
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                      "_wsgi:app"], cwd=REPO, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self, timeout=120):
        """Until ``/health`` answers (``ready_seconds`` says how long that took)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.log_path}): {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    self.ready_seconds = time.perf_counter() - self.started
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"gunicorn did not answer ({self.log_path}): {self.log_path.read_text()[-3000:]}")

    def get(self, path, **params):
        reply = requests.get(self.url + path, params=params, timeout=30)
        assert reply.status_code == 200, f"GET {path}: {reply.status_code} {reply.text[:1000]}"
        return reply.json()

    def signal(self, sig):
        """Send ``sig`` to the master (only)."""
        os.kill(self.proc.pid, sig)

    def worker_pids(self) -> set[int]:
        """The master's child processes: its workers."""
        return {pid for pid, ppid, _ in _processes() if ppid == self.proc.pid}

    def group_pids(self) -> set[int]:
        """Every process left in the server's process group (the master's, its workers',
        their training subprocesses')."""
        return {pid for pid, _, pgid in _processes() if pgid == self.proc.pid}

    def wait_exit(self, timeout) -> int:
        """The master's exit status, once it has exited (``subprocess.TimeoutExpired`` after
        ``timeout`` seconds)."""
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self):
        for sig, wait in ((signal.SIGTERM, 40), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                if sig == signal.SIGTERM:
                    os.killpg(self.proc.pid, signal.SIGKILL)   # stray training subprocesses
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc):
        self.stop()


def _processes():
    """(pid, parent pid, process group) of every process, from /proc (Linux)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:                     # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()     # after "pid (name) "
        if fields[0] == "Z":                # a zombie has exited; its parent has not reaped it yet
            continue
        out.append((int(entry), int(fields[1]), int(fields[2])))
    return out


def cpu_seconds(pid) -> float:
    """User + system CPU time ``pid`` has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode(errors="replace")
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
