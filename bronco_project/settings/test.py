"""Tests: their own Redis database number; pytest-django gives them their own database
(test_<name>), so a test run never touches the developer's data."""

from bronco_project.settings.base import *  # noqa: F403
from bronco_project.settings.env import env_str

REDIS_URL = env_str("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
