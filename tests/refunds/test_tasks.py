"""The refund tasks through a real Celery worker on the test Redis: a paid refund's check
task (enqueued after commit) confirms it, and the retry beat task sends a refund that waited
for the reserve once the vault is funded."""

import time

import pytest
from celery.contrib.testing.worker import start_worker

from bronco_project.celery import app
from core.money import USDT_UNIT
from refunds import services
from refunds.models import Refund, RefundStatus
from tests.refunds.conftest import deposit, floor_at_vault_balance, fund_vault, usdt_of

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def wait_status(refund_id: int, status: str, timeout: float = 30.0) -> Refund:
    deadline = time.monotonic() + timeout
    while (refund := Refund.objects.get(pk=refund_id)).status != status:
        assert time.monotonic() < deadline, f"refund {refund_id} stayed {refund.status}"
        time.sleep(0.1)
    return refund


@pytest.fixture
def worker():
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=10,
        queues=["chain"],
    ) as w:
        yield w


def test_the_check_task_confirms_a_sent_refund(stack, chain_user, worker):
    contracts, _ = stack
    user = chain_user(2)
    order = deposit(user, contracts, 30 * USDT_UNIT)
    before = usdt_of(user)

    refund = services.refund_request(
        order_id=order.pk, reason="task", requested_by="alice", amount=7 * USDT_UNIT
    )

    assert refund.status == RefundStatus.SENT
    refund = wait_status(refund.pk, RefundStatus.CONFIRMED)
    assert usdt_of(user) == before + 7 * USDT_UNIT


def test_the_retry_beat_task_sends_a_waiting_refund_once_funded(
    stack, chain_user, settings, worker
):
    contracts, _ = stack
    user = chain_user(3)
    order = deposit(user, contracts, 30 * USDT_UNIT)
    floor_at_vault_balance(settings)
    refund = services.refund_request(
        order_id=order.pk, reason="task", requested_by="alice", amount=9 * USDT_UNIT
    )
    assert refund.status == RefundStatus.WAITING_RESERVE
    before = usdt_of(user)

    fund_vault(user.node, contracts, 9 * USDT_UNIT)
    app.send_task("refunds.tasks.refunds_retry_waiting").get(timeout=30)

    wait_status(refund.pk, RefundStatus.CONFIRMED)
    assert usdt_of(user) == before + 9 * USDT_UNIT
