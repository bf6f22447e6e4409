"""Preflight: do PostgreSQL and Redis answer, and RabbitMQ when CELERY_BROKER_URL is an
amqp:// URL? Says which URL failed and how to start it."""

import sys

import psycopg2
import redis
from amqp.exceptions import AMQPError
from django.conf import settings
from django.core.management.base import BaseCommand
from kombu import Connection
from kombu.exceptions import KombuError

from bronco_project.settings.broker import broker_is_amqp
from core.db import maintenance_connection

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    "RabbitMQ": "rabbitmq-server -detached (then rabbitmqctl add_vhost / set_permissions for "
    "the URL's vhost and user)",
}
URL_SETTINGS = {"PostgreSQL": "DATABASE_URL", "Redis": "REDIS_URL", "RabbitMQ": "CELERY_BROKER_URL"}


def rabbitmq_error(url: str, *, timeout: float = 3.0) -> str | None:
    """None when the AMQP broker at `url` accepts a login to its vhost (kombu connects and
    closes; nothing is declared), else the error's text: refused or unreachable socket,
    login refused, unknown vhost."""
    connection = Connection(url, connect_timeout=timeout)
    try:
        connection.connect()
    except (OSError, AMQPError, KombuError) as exc:
        return str(exc).strip() or type(exc).__name__
    finally:
        connection.release()
    return None


def _redact(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


class Command(BaseCommand):
    """Also creates the configured database when the server answers but the database does
    not exist yet (never in production), so a fresh machine needs no manual step."""

    help = (
        "Check that PostgreSQL and Redis (and RabbitMQ for an amqp:// CELERY_BROKER_URL) "
        "answer; exit non-zero naming the one that does not."
    )
    requires_system_checks: list = []

    def _ensure_database(self, conn: "psycopg2.extensions.connection", name: str) -> None:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() or settings.BRONCO_ENV == "production":
                return
            cursor.execute(f'CREATE DATABASE "{name}"')
            self.stdout.write(f"Created database {name}.")

    def handle(self, *args: object, **options: object) -> None:
        failures = []
        try:
            conn = maintenance_connection()
            try:
                self._ensure_database(conn, settings.DATABASES["default"]["NAME"])
            finally:
                conn.close()
        except psycopg2.Error as exc:
            failures.append(("PostgreSQL", settings.DATABASE_URL, str(exc).strip()))
        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            failures.append(("Redis", settings.REDIS_URL, str(exc).strip()))
        names = ["PostgreSQL", "Redis"]
        if broker_is_amqp(settings.CELERY_BROKER_URL):
            names.append("RabbitMQ")
            if error := rabbitmq_error(settings.CELERY_BROKER_URL):
                failures.append(("RabbitMQ", settings.CELERY_BROKER_URL, error))
        for name, url, error in failures:
            self.stderr.write(
                f"{name} does not answer at {_redact(url)}: {error}\n"
                f"  start it with: {START_HINTS[name]}\n"
                f"  or point {URL_SETTINGS[name]} at a running one."
            )
        if failures:
            sys.exit(1)
        self.stdout.write(f"{', '.join(names[:-1])} and {names[-1]} answer.")
