"""Faults injected into real parts: a Redis of the test's own (started, wiped, restarted on
the same port), real Celery workers and beat as subprocesses (tests.fixtures.processes)."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from kombu import pools

from devtools.processes import free_port, spawn, stop_group
from tests.fixtures.processes import ARTIFACTS, ROOT


class OwnRedis:
    """A redis-server of this test alone on a free loopback port, no persistence: `stop()`
    and `start()` make a restart that comes back empty, as a killed Redis without disk does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        log = open(ARTIFACTS / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=5)
            self.proc = None

    def wipe(self) -> None:
        self.client().flushall()


@pytest.fixture
def own_redis(settings) -> Iterator[OwnRedis]:
    """Started for the test; this process's Celery app publishes to it for the test."""
    from bronco_project.celery import app

    server = OwnRedis()
    server.start()
    saved = (app.conf.broker_url, app.conf.result_backend)
    settings.REDIS_URL = settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = server.url
    app.conf.broker_url = app.conf.result_backend = server.url
    reset_app_connections(app)
    with ExitStack() as exits:
        exits.callback(server.stop)
        yield server
    app.conf.broker_url, app.conf.result_backend = saved
    reset_app_connections(app)


def reset_app_connections(app) -> None:
    """Drop this process's broker pools and result backend so the next use connects to the
    broker and backend the app's configuration names now."""
    # app._pool is kombu's process-wide pool for the URL (kombu.pools.connections): closing
    # it alone leaves the closed pool registered, and a later test on that URL fails with
    # "Acquire on closed pool". kombu.pools.reset closes every pool and forgets them all.
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app._local.__dict__.pop("backend", None)


def beat_argv() -> list[str]:
    """celery beat as the tests run it (the database scheduler, synced from the settings)."""
    return [sys.executable, "-m", "celery", "-A", "bronco_project", "beat", "-s", "/dev/null"]
