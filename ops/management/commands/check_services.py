"""Preflight: do PostgreSQL and Redis answer? Says which URL failed and how to start it."""

import sys

import psycopg2
import redis
from django.conf import settings
from django.core.management.base import BaseCommand

from core.db import maintenance_connection

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}


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

    help = "Check that PostgreSQL and Redis answer; exit non-zero naming the one that does not."
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
        for name, url, error in failures:
            self.stderr.write(
                f"{name} does not answer at {_redact(url)}: {error}\n"
                f"  start it with: {START_HINTS[name]}\n"
                f"  or point {'DATABASE_URL' if name == 'PostgreSQL' else 'REDIS_URL'} "
                "at a running one."
            )
        if failures:
            sys.exit(1)
        self.stdout.write("PostgreSQL and Redis answer.")
