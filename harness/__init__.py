"""Real processes the tests and the benchmarks start: a gunicorn serving ``_wsgi:app``
as ``make run`` does (``gunicorn_process``), and a throwaway Redis (``redis_server``).

Both import without side effects, so ``tests/`` and ``bench/`` use them alike:
``from harness.gunicorn_process import Gunicorn`` with the repository root on ``sys.path``.
"""
