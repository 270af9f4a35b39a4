"""A real Label Studio 1.23.2 for end-to-end tests: install it, start it headless, stop it.

    exe = ensure_label_studio()                 # <repo>/.venv-ls, installed once
    with LabelStudioProcess(exe, log_dir) as ls:
        requests.get(ls.url + "/api/projects", headers=ls.headers)

Label Studio gets its own virtual environment: it pins packages (Django,
pandas, pyarrow, rq, label-studio-sdk ...) that clash with the backend's.
The environment below is what tests/fixtures/label-studio-1.23.2/README.md
(what was observed of Label Studio 1.23.2) says a headless test instance needs: no outbound traffic, backends on
127.0.0.1 allowed, a known user with a legacy API token.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from harness.gunicorn_process import free_port  # noqa: E402
from harness.tool_venv import InstallError, ensure_tool, tail as _tail  # noqa: E402
LS_VERSION = "1.23.2"
LS_VENV = REPO / ".venv-ls"

USERNAME = "e2e@example.com"
PASSWORD = "e2e-password-123"
# Legacy token (``Authorization: Token ...``): more than 5 characters.
TOKEN = "e2e0legacy0token0123456789abcdef01234567"


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed or started."""


def ensure_label_studio(venv: Path = LS_VENV, version: str = LS_VERSION,
                        log_dir: Path | None = None, timeout: float = 1800) -> Path:
    """Path of ``label-studio`` ``version`` in ``venv`` (``harness.tool_venv``), installed
    with pip when missing; ``LabelStudioError`` with the tail of pip's log if that fails."""
    try:
        return ensure_tool(venv, "label-studio", version, "label-studio",
                           log_dir=log_dir or REPO / "test-artifacts", timeout=timeout)
    except InstallError as exc:
        raise LabelStudioError(str(exc)) from None


def label_studio_env(data_dir: Path, base=None) -> dict:
    """The environment a headless, offline test instance needs (see the README)."""
    env = dict(os.environ if base is None else base)
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "PYTHONPATH", "VIRTUAL_ENV",
                 "DJANGO_SETTINGS_MODULE", "DJANGO_DB", "HOST", "PORT"):
        env.pop(name, None)
    env.update({
        # no outbound traffic at start
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        # ML backends on 127.0.0.1 (both are needed, or POST /api/ml answers 403 / half set up)
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
        # a known user with a legacy token (only applied when the organization is created)
        "LABEL_STUDIO_USERNAME": USERNAME, "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "HOME": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class LabelStudioProcess:
    """``label-studio start`` on 127.0.0.1:<free port> over a throw-away data dir.

    A context manager: ``__enter__`` starts it and waits for ``/health``,
    ``__exit__`` stops it (SIGTERM to its process group, then SIGKILL) and
    removes the data dir unless ``keep_data``. Its output goes to
    ``log_dir/label-studio.log``.
    """

    def __init__(self, exe: Path, log_dir: Path, port: int | None = None,
                 data_dir: Path | None = None, startup_timeout: float = 300,
                 keep_data: bool = False):
        self.exe = Path(exe)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_data = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ls-e2e-data-"))
        self.startup_timeout = startup_timeout
        self.keep_data = keep_data
        self.log_path = self.log_dir / "label-studio.log"
        self.token = TOKEN
        self.headers = {"Authorization": f"Token {TOKEN}"}
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.startup_seconds = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "LabelStudioProcess":
        cmd = [str(self.exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
               "--port", str(self.port), "--host", self.url, "--data-dir", str(self.data_dir)]
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ {' '.join(cmd)}\n".encode())
        self._log.flush()
        started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=label_studio_env(self.data_dir),
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.time() - started
        return self

    def _wait_healthy(self):
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioError(f"label-studio exited with code {self.proc.returncode} "
                                       f"while starting; log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                if requests.get(self.url + "/health", timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            raise LabelStudioError(f"label-studio did not answer /health within "
                                   f"{self.startup_timeout:.0f}s; log {self.log_path}:\n"
                                   f"{_tail(self.log_path)}")
        # /health answers before the API is usable with the token: wait for that too
        while time.time() < deadline:
            try:
                reply = requests.get(self.url + "/api/projects", headers=self.headers, timeout=10)
                if reply.status_code == 200:
                    return
                last = f"{reply.status_code} {reply.text[:300]}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(1)
        raise LabelStudioError(f"label-studio's API does not accept the legacy token: {last}; "
                               f"log {self.log_path}")

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(20)
        if proc is not None:
            self._signal(proc, signal.SIGKILL, only_group=True)   # stray children, if any
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_data and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @staticmethod
    def _signal(proc, sig, only_group=False):
        try:
            os.killpg(proc.pid, sig)      # its own session: the group is what we started
        except (ProcessLookupError, PermissionError):
            if not only_group:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- REST helpers --------------------------------------------------------
    def api(self, method: str, path: str, expect=(200, 201), timeout=120, **kwargs):
        """``method`` ``/api/...`` with the token; asserts the status, returns the JSON (or None)."""
        reply = requests.request(method, self.url + path, headers=self.headers, timeout=timeout,
                                 **kwargs)
        if expect and reply.status_code not in expect:
            raise AssertionError(f"{method} {path} answered {reply.status_code}: "
                                 f"{reply.text[:2000]}")
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            return reply.text
