"""Tests: their own Redis database number; pytest-django gives them their own database
(test_<name>), so a test run never touches the developer's data."""

from bronco_project.settings.base import *  # noqa: F403
from bronco_project.settings.broker import celery_broker_settings
from bronco_project.settings.env import env_str

REDIS_URL = env_str("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The test Redis db, or a RabbitMQ vhost of the test run's own (TEST_CELERY_BROKER_URL,
# `make test`'s second pass of the e2e tests).
globals().update(
    celery_broker_settings(
        env_str("TEST_CELERY_BROKER_URL", "") or REDIS_URL,
        visibility_timeout=CELERY_VISIBILITY_TIMEOUT,  # noqa: F405
    )
)
CELERY_RESULT_BACKEND = REDIS_URL
INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
