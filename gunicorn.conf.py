"""gunicorn settings, read from the environment by ``Settings.from_env`` (see settings.py).

HOST, PORT, WORKERS, THREADS, GUNICORN_TIMEOUT and LOG_LEVEL have their
defaults there, like every other setting; a bad value stops gunicorn with
the message ``Settings`` gives.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # gunicorn's cwd may be elsewhere

from settings import ConfigError, Settings  # noqa: E402

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

_host = _settings.host
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"                  # an IPv6 address
bind = f"{_host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# A large batch on a big model on the CPU can take minutes; Label Studio waits 100 s.
timeout = _settings.gunicorn_timeout
graceful_timeout = 30
loglevel = _settings.log_level.lower()
accesslog = "-"
preload_app = False   # each worker loads its model after the fork (Paddle is not fork-safe)

# Prometheus metrics across workers (GET /metrics, service/metrics.py): every worker writes its
# counts into PROMETHEUS_MULTIPROC_DIR, set here, in the master, before any worker forks.
# Given in the environment, that directory is used (and emptied at start); else a fresh one
# is made and removed at exit.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_own_metrics_dir = not _metrics_dir
if _own_metrics_dir:
    import tempfile

    _metrics_dir = tempfile.mkdtemp(prefix="uie-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server):
    """Start from zero: counts of an earlier run in a given directory would be added up."""
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(_metrics_dir, name))


def child_exit(server, worker):
    """A worker stopped: its live gauges go, its counts stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(_metrics_dir, ignore_errors=True)
