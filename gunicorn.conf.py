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
# gunicorn >= 25.1 runs a control socket (for ``gunicornc``) in an asyncio thread of the master,
# stopped and restarted around every fork, at one path per user ($HOME/.gunicorn/gunicorn.ctl):
# two servers of one user take it from each other, and its fork handling has had deadlock and
# leak fixes since. Nothing here uses it; signals (HUP, TERM, TTIN/TTOU) do the same.
control_socket_disable = True

# Prometheus metrics across workers (GET /metrics, service/metrics.py): every worker writes its
# counts into PROMETHEUS_MULTIPROC_DIR, set here, in the master, before any worker forks.
# Given in the environment, that directory is used (and emptied at start); else a fresh one
# is made and removed at exit.
#
# gunicorn runs this file again in the same master on a HUP (reload); by then the variable is
# set, by the first run. _METRICS_OWNER ("<master pid>:<dir>") tells that run the directory is
# still this master's own, to remove at exit; a process that merely inherits the environment
# (a worker, a training job, a gunicorn started by them) has another pid. The directory is
# not emptied on a reload: it is the same server, its counters go on from where they were
# (old workers' counts stay in the sums, as when a worker is replaced); on_starting, which
# empties it, runs only at the master's start.
_METRICS_OWNER = "UIE_PROMETHEUS_DIR_OWNER"
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_own_metrics_dir = not _metrics_dir or (
    os.environ.get(_METRICS_OWNER) == f"{os.getpid()}:{_metrics_dir}")
if not _metrics_dir:
    import tempfile

    _metrics_dir = tempfile.mkdtemp(prefix="uie-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    os.environ[_METRICS_OWNER] = f"{os.getpid()}:{_metrics_dir}"


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


# The signals gunicorn's worker handles (gunicorn.workers.base.Worker.init_signals).
_WORKER_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT", "SIGWINCH", "SIGUSR1", "SIGABRT")


def post_worker_init(worker):
    """Give the worker its gunicorn signal handlers back, now that the app (and Paddle) is loaded.

    Importing Paddle (``paddle.base.core``) installs C++ handlers for SIGTERM, SIGABRT,
    SIGSEGV, SIGILL, SIGFPE and SIGBUS that print a C++ trace and kill the process; importing
    PaddleNLP then calls ``paddle.disable_signal_handler()``, which sets all six to SIG_DFL.
    Either way the kernel no longer calls the handlers gunicorn set before the app loaded
    (``signal.getsignal`` still names them: Python only remembers what it set), so a SIGTERM
    (the master's graceful stop, and what it sends the old workers on a HUP) killed the worker
    at once, requests in flight included, and a SIGABRT (timeout) skipped ``worker_abort``.

    Installing the same Python handlers again puts them back in the kernel; then a SIGTERM
    lets the worker answer what it has accepted (up to ``graceful_timeout``) and exit.
    ``paddle.disable_signal_handler`` is made a no-op in the worker: PaddleNLP imported later
    (a model loaded on demand) would otherwise reset SIGTERM and SIGABRT to SIG_DFL again,
    from a request thread, where Python cannot install signal handlers. Paddle's crash
    handlers for SIGSEGV and the like are left as they are.
    """
    import signal

    try:
        import paddle   # the app has imported it: its C++ handlers are in place, none come later
    except ImportError:
        paddle = None
    if paddle is not None:
        paddle.disable_signal_handler = _keep_gunicorn_signal_handlers
    restored = []
    for name in _WORKER_SIGNALS:
        sig = getattr(signal, name)
        handler = signal.getsignal(sig)
        if callable(handler):
            signal.signal(sig, handler)
            restored.append(name)
    signal.siginterrupt(signal.SIGTERM, False)   # as gunicorn sets them
    signal.siginterrupt(signal.SIGUSR1, False)
    worker.log.debug("worker %s: gunicorn's handlers installed again for %s", worker.pid,
                     ", ".join(restored))


def _keep_gunicorn_signal_handlers():
    """``paddle.disable_signal_handler`` in a worker: keeps gunicorn's handlers (see above)."""
