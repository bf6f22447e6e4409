"""`manage.py check_services` names the service that does not answer and exits non-zero."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(**env_overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bronco_project.settings.local", **env_overrides}
    return subprocess.run(
        [sys.executable, "manage.py", "check_services"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_both_answer():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert "answer" in proc.stdout


def test_redis_down_is_named_with_a_hint():
    port = _closed_port()
    proc = _run(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert proc.returncode == 1
    assert f"Redis does not answer at redis://127.0.0.1:{port}/0" in proc.stderr
    assert "redis-server" in proc.stderr


def test_postgres_down_is_named_with_a_hint_and_no_password():
    port = _closed_port()
    proc = _run(DATABASE_URL=f"postgres://bronco:s3cret@127.0.0.1:{port}/bronco")
    assert proc.returncode == 1
    assert "PostgreSQL does not answer" in proc.stderr
    assert "s3cret" not in proc.stderr
    assert "pg_ctlcluster" in proc.stderr


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"  # the default vhost: only a login, no queue


def test_rabbitmq_is_checked_when_celery_runs_on_it():
    proc = _run(CELERY_BROKER_URL=RABBITMQ)
    assert proc.returncode == 0, proc.stderr
    assert "PostgreSQL, Redis and RabbitMQ answer." in proc.stdout


@pytest.mark.parametrize("down", [True, False], ids=["port closed", "login refused"])
def test_rabbitmq_failing_is_named_with_a_hint_and_no_password(down):
    port = _closed_port() if down else 5672
    secret = "s3cret-not-guest"
    proc = _run(CELERY_BROKER_URL=f"amqp://guest:{secret}@127.0.0.1:{port}//")
    assert proc.returncode == 1
    assert f"RabbitMQ does not answer at amqp://guest:***@127.0.0.1:{port}//" in proc.stderr
    assert ("ACCESS_REFUSED" in proc.stderr) is not down
    assert secret not in proc.stderr
    assert "rabbitmq-server" in proc.stderr and "CELERY_BROKER_URL" in proc.stderr
