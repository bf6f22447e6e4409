"""Shared fixtures. Each real part is started once per session on a free port by the
fixture modules below."""

import subprocess
from urllib.parse import unquote, urlparse

import pytest
import redis

from devtools.processes import watch_children

pytest_plugins = [
    "tests.fixtures.chain",
    "tests.fixtures.broker",
    "tests.fixtures.vault",
    "tests.fakes.broker",
    "tests.fakes.settlement",
]


@pytest.fixture(scope="session", autouse=True)
def clean_test_redis():
    """Start from an empty test Redis db: no task queued by an earlier run gets consumed.
    With a RabbitMQ broker (TEST_CELERY_BROKER_URL), from a fresh vhost of its own."""
    from django.conf import settings

    from bronco_project.settings.broker import broker_is_amqp

    assert settings.REDIS_URL.rsplit("/", 1)[-1] != "0", "tests never touch Redis db 0"
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    if broker_is_amqp(settings.CELERY_BROKER_URL):
        _fresh_rabbitmq_vhost(settings.CELERY_BROKER_URL)


def _fresh_rabbitmq_vhost(url: str) -> None:
    """Delete and re-create the broker URL's vhost (never the default one), open to its user:
    quorum queues, exchanges and messages of an earlier run are gone."""
    parts = urlparse(url)
    vhost = unquote(parts.path.lstrip("/"))
    assert vhost and vhost != "/", "tests use a RabbitMQ vhost of their own, never the default"
    user = parts.username or "guest"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
    for argv in (
        ["rabbitmqctl", "-q", "add_vhost", vhost],
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
    ):
        subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def children_die_with_the_session() -> None:
    """Every process this session starts dies with it, even when it is SIGKILLed: the
    fixtures start theirs with devtools.processes.spawn(); this marks the environment
    first, so a test's own `subprocess` children are ended by the watchdog too."""
    watch_children()
