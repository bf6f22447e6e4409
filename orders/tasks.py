"""Celery doors into the order services. Each task takes ids, loads fresh state, calls one
service, and is safe to run twice."""

import socket

from celery import shared_task
from django.db import connection


@shared_task(name="orders.tasks.ping", acks_late=True, soft_time_limit=10, time_limit=20)
def ping(token: str) -> dict:
    """Round-trip check for operators and tests: proves a worker took the task from the
    broker and reached the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (db_ok,) = cursor.fetchone()
    return {"token": token, "db": db_ok == 1, "worker": socket.gethostname()}
