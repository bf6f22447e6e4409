"""Shared fixtures. Each real part is started once per session on a free port by the
fixture modules below."""

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
    """Start from an empty test Redis db: no task queued by an earlier run gets consumed."""
    from django.conf import settings

    assert settings.REDIS_URL.rsplit("/", 1)[-1] != "0", "tests never touch Redis db 0"
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="session", autouse=True)
def children_die_with_the_session() -> None:
    """Every process this session starts dies with it, even when it is SIGKILLed: the
    fixtures start theirs with devtools.processes.spawn(); this marks the environment
    first, so a test's own `subprocess` children are ended by the watchdog too."""
    watch_children()
