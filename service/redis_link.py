"""Reaching Redis (``REDIS_URL``): a connection, what an unreachable Redis raises, a wait
until it answers. Read by the queue (``service.job_queue``), its workers
(``service.rq_worker``) and the webhook spool (``service.webhook_spool``); imports
``redis`` only when called."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("job_queue")


def connect(url: str, timeout: float | None = None):
    """A Redis connection for ``REDIS_URL`` (bytes in, bytes out). With ``timeout``: that
    socket and connect timeout, no retries and no health-check round trip, so a hung or
    unreachable Redis costs one ``timeout`` (the webhook path and ``/health``)."""
    import redis

    if timeout is None:
        return redis.Redis.from_url(url, health_check_interval=30)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                health_check_interval=0)


def redis_down_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable (or hung) Redis raises."""
    from redis.exceptions import ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError)     # BusyLoadingError (a restart) is a ConnectionError


def wait_for_redis(conn, limit: float = 600.0, forever=False, stop=lambda: False) -> bool:
    """Until Redis answers a PING (at most ``limit`` seconds unless ``forever``); whether it did."""
    deadline, pause, said = time.monotonic() + limit, 0.5, False
    while not stop():
        try:
            conn.ping()
            if said:
                log.info("Redis answers again")
            return True
        except redis_down_errors() as exc:
            if not said:
                log.warning("waiting for Redis: %s", exc)
                said = True
        if not forever and time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 5.0)
    return False
