"""Webhooks kept on local disk while Redis is unreachable (scale-out mode), replayed once it answers.

Label Studio (1.23) posts each webhook once and ignores the answer, so a webhook
answered 5xx is lost. In the scale-out mode the annotation store is Redis; while
Redis does not answer, ``/webhook`` writes the event here (fsynced) and answers
200 with ``"status": "spooled"``. A replayer thread applies the spooled events,
oldest first, through the same code as a live webhook (the store's newest-wins
and tombstone rules), and deletes each file once it is applied. An event replayed
twice (the process died between applying it and deleting its file) changes
nothing: an upsert of the same copy and a repeated delete are idempotent.

Layout, under ``MODEL_DIR/_spool/``::

    <host>-<pid>-<random>/       one directory per serving process (gunicorn worker)
        owner.lock               flock'ed by that process while it lives
        000000000001.json        one event: {"received": epoch seconds, "body": the webhook}
        ...

A process that finds another process's directory whose ``owner.lock`` it can
lock (its owner died: a gunicorn worker restarted, a replica crashed) replays
those events too and removes the directory. A directory is created under a
hidden name, locked, then renamed, so nobody adopts it before its owner holds it.

``Breaker``: after a Redis failure, webhooks are spooled at once for
``open_seconds`` instead of each waiting for a timeout again; then one try
(a replay or a live webhook) closes it again or opens it again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from files import atomic_write_json, fsync_path
from service.redis_link import redis_down_errors

log = logging.getLogger("webhook_spool")
SPOOL = "_spool"
LOCK = "owner.lock"


class Breaker:
    """Open for ``open_seconds`` after a failure: callers skip Redis meanwhile."""

    def __init__(self, open_seconds: float = 5.0, clock=time.monotonic):
        self.open_seconds, self.clock = open_seconds, clock
        self._until = 0.0
        self.failures = 0

    def is_open(self) -> bool:
        return self.clock() < self._until

    def failed(self):
        self.failures += 1
        self._until = self.clock() + self.open_seconds

    def succeeded(self):
        self._until = 0.0


class WebhookSpool:
    """This process's spool directory, its replayer thread and the breaker.

    ``apply(body)`` applies one webhook body (raises one of ``redis_down_errors()``
    when Redis is unreachable; any other exception drops the event, logged).
    """

    def __init__(self, model_dir, apply, open_seconds: float = 5.0, replay_every: float = 1.0):
        self.root = Path(model_dir) / SPOOL
        self.apply = apply
        self.down_errors = redis_down_errors()
        self.breaker = Breaker(open_seconds)
        self.replay_every = replay_every
        self._lock = threading.Lock()          # this process's directory and counter
        self._replaying = threading.Lock()     # one replay at a time in this process
        self._wake = threading.Event()
        self._pid = None                       # the process that owns ``_dir`` (fork-safe)
        self._dir: Path | None = None
        self._lock_fd = None
        self._seq = 0
        self._pending = 0
        self._thread = None
        self.replayed = 0

    # -- this process's directory -----------------------------------------------------
    def _own_dir(self) -> Path:
        """Created on first use in this process (a forked child gets its own)."""
        if self._pid != os.getpid():
            self.root.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = self.root / f".new-{name}"
            tmp.mkdir()
            fd = os.open(tmp / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            final = self.root / name
            os.rename(tmp, final)
            fsync_path(self.root)
            self._pid, self._dir, self._lock_fd = os.getpid(), final, fd
            self._seq, self._pending, self._thread = 0, 0, None
        return self._dir

    def pending(self) -> int:
        """Events this process spooled that are not replayed yet."""
        with self._lock:
            return self._pending if self._pid == os.getpid() else 0

    def should_spool(self) -> bool:
        """Spool without trying Redis: the breaker is open, or older events wait (order)."""
        return self.breaker.is_open() or self.pending() > 0

    def add(self, body: dict) -> int:
        """Write one webhook body durably (fsynced); the number of events now waiting."""
        with self._lock:
            directory = self._own_dir()
            self._seq += 1
            path = directory / f"{self._seq:012d}.json"
            atomic_write_json(path, {"received": time.time(), "body": body}, ensure_ascii=True)
            self._pending += 1
            pending = self._pending
        self.start()
        self._wake.set()
        return pending

    # -- replay ------------------------------------------------------------------------
    def start(self):
        """The replayer thread of this process (once)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._own_dir()
            self._thread = threading.Thread(target=self._loop, name="webhook-replay", daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            self._wake.wait(self.replay_every)
            self._wake.clear()
            try:
                self.replay()
            except Exception:   # noqa: BLE001  the thread must go on
                log.exception("webhook replay failed")

    def replay(self) -> int:
        """Apply what is spooled here and in dead processes' directories, oldest first;
        stop at the first Redis failure (the breaker opens). The number applied."""
        if self.breaker.is_open() or not self.root.is_dir():
            return 0
        if not self._replaying.acquire(blocking=False):
            return 0
        adopted = []
        try:
            adopted = self._adopt()
            events = sorted(self._events(adopted), key=lambda e: (e[0], e[1].name))
            done = 0
            for _, path, body in events:
                try:
                    self.apply(body)
                except self.down_errors as exc:
                    self.breaker.failed()
                    log.warning("Redis unreachable while replaying spooled webhooks (%d left): %s",
                                len(events) - done, exc)
                    return done
                except Exception:   # noqa: BLE001  a bad event must not block the others
                    log.exception("spooled webhook %s could not be applied; dropped", path)
                self._remove(path)
                done += 1
            if events:
                self.breaker.succeeded()
                log.info("replayed %d spooled webhooks", done)
            return done
        finally:
            for directory, fd in adopted:
                self._release_adopted(directory, fd)
            self._replaying.release()

    def _events(self, adopted) -> list[tuple[float, Path, dict]]:
        dirs = [d for d, _ in adopted]
        if self._pid == os.getpid() and self._dir is not None:
            dirs.append(self._dir)
        out = []
        for directory in dirs:
            for path in directory.glob("[0-9]*.json"):
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                    out.append((float(record["received"]), path, record["body"]))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("spooled webhook %s is unreadable (%s); moved aside", path, exc)
                    path.rename(path.with_suffix(".bad"))
                    self._forget(path)
        return out

    def _remove(self, path: Path):
        path.unlink(missing_ok=True)
        fsync_path(path.parent)
        self._forget(path)
        self.replayed += 1

    def _forget(self, path: Path):
        """One event of this process's directory less to wait for."""
        if path.parent == self._dir:
            with self._lock:
                self._pending = max(0, self._pending - 1)

    def _adopt(self) -> list[tuple[Path, int]]:
        """The directories of processes that died (their ``owner.lock`` is free), locked."""
        out = []
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or directory == self._dir or not directory.is_dir():
                continue
            try:
                fd = os.open(directory / LOCK, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue        # its owner lives (or another process replays it)
            out.append((directory, fd))
        return out

    def _release_adopted(self, directory: Path, fd: int):
        """Remove a dead process's directory once it is empty; unlock it."""
        try:
            if not any(directory.glob("[0-9]*.json")):
                shutil.rmtree(directory, ignore_errors=True)
                fsync_path(self.root)
        finally:
            os.close(fd)

    def total_waiting(self) -> int:
        """Events waiting in every directory (``/health``)."""
        try:
            return sum(1 for _ in self.root.glob("*/[0-9]*.json"))
        except OSError:
            return 0
