"""Time limits are not swallowed (issue 17, point 9): a soft time limit that fires while the
alert-rule evaluation runs a rule (inside its broad `except`, which keeps one failing rule
from stopping the others) ends the task as a timeout — FAILURE with SoftTimeLimitExceeded —
not as a success. A real worker; the rule is held on a table lock past the limit."""

import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection, transaction

from ops.tasks import evaluate_alert_rules
from orders.tasks import ping
from tests.fixtures.processes import bronco_process, celery_worker_argv, subprocess_env

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_soft_time_limit_inside_rule_evaluation_ends_the_task_as_a_timeout(own_redis):
    argv = celery_worker_argv(concurrency=1, queues="default")
    with bronco_process("time-limit-worker", argv, subprocess_env()):
        token = uuid.uuid4().hex
        assert ping.apply_async(args=[token]).get(timeout=60)["token"] == token
        with transaction.atomic():
            with connection.cursor() as cursor:
                # The first rule reads orders: it waits here past its soft time limit.
                cursor.execute("LOCK TABLE orders_order IN ACCESS EXCLUSIVE MODE")
            result = evaluate_alert_rules.apply_async(
                soft_time_limit=1, time_limit=30, ignore_result=False
            )
            time.sleep(4)
        # The lock is gone: the rule's query returns and the soft limit's exception surfaces.
        with pytest.raises(SoftTimeLimitExceeded):
            result.get(timeout=30)
        assert result.state == "FAILURE"


@contextlib.contextmanager
def soft_time_limit_after(seconds: float) -> Iterator[None]:
    """What Celery's soft time limit does in a prefork child: a signal handler raises
    SoftTimeLimitExceeded in the task's thread, wherever it is (here SIGALRM after
    `seconds`; billiard uses SIGUSR1)."""

    def expire(_signum, _frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _lock_table_for(table: str, seconds: float, locked: threading.Event) -> None:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            time.sleep(seconds)
    finally:
        connection.close()


def test_a_soft_time_limit_while_a_failed_secret_read_raises_its_alert_is_not_swallowed():
    """`core.secrets` raises an alert when Vault cannot be read, inside a broad `except` (a
    database that is down too must not hide the read's own error). A task that runs out of
    time there ends as a timeout; before, the limit was logged as "no alert could be
    raised" and the task carried on."""
    from core.secrets import _report_failure

    locked = threading.Event()
    holder = threading.Thread(target=_lock_table_for, args=("orders_alert", 1.5, locked))
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded), soft_time_limit_after(0.3):
            _report_failure("futu_trade_password", "Vault sealed: 503")
        assert time.monotonic() - started >= 1.0  # it was waiting on the alert's row
    finally:
        holder.join(10)
