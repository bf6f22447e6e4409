"""Time limits are not swallowed (issue 17, point 9): a soft time limit that fires while the
alert-rule evaluation runs a rule (inside its broad `except`, which keeps one failing rule
from stopping the others) ends the task as a timeout — FAILURE with SoftTimeLimitExceeded —
not as a success. A real worker; the rule is held on a table lock past the limit."""

import time
import uuid

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
