"""Shared fixtures. Each real part is started once per session on a free port by the
fixture modules below."""

import pytest
import redis

pytest_plugins = [
    "tests.fixtures.chain",
    "tests.fixtures.broker",
    "tests.fixtures.vault",
    "tests.fakes.broker",
]


@pytest.fixture(scope="session", autouse=True)
def clean_test_redis():
    """Start from an empty test Redis db: no task queued by an earlier run gets consumed."""
    from django.conf import settings

    assert settings.REDIS_URL.rsplit("/", 1)[-1] != "0", "tests never touch Redis db 0"
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
