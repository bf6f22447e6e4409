"""Orders created from chain events: exactly one per event; cancels are idempotent."""

import pytest

from core.models import AuditLog
from orders.models import Order, OrderStatus
from orders.services import ChainOrderRequest, order_create_from_chain, order_request_cancel
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db


def _deposit(**overrides):
    fields = {
        "chain_id": 31337,
        "order_type": "BUY",
        "onchain_id": 7,
        "tx_hash": "0x" + "11" * 32,
        "log_index": 3,
        "user_address": "0x" + "22" * 20,
        "symbol": "AAPL",
        "usdt_amount": 250 * 10**6,
    }
    return ChainOrderRequest(**{**fields, **overrides})


def test_creates_one_order_and_enqueues_after_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        order, created = order_create_from_chain(request=_deposit(), actor="listen_chain")
    assert created
    assert order.stock_code == "US.AAPL"
    assert order.usdt_amount == 250 * 10**6
    assert order.deadline is not None
    assert len(callbacks) == 1  # its symbol's cycle is asked for after commit
    # Valid: booked in the listener's transaction, no validate task of its own.
    assert order.booked_at is not None
    entries = list(AuditLog.objects.filter(order=order).order_by("pk"))
    assert [e.action for e in entries] == ["order.created", "order.booked"]
    assert {e.actor for e in entries} == {"listen_chain"}


def test_an_order_that_cannot_trade_is_not_booked_and_gets_its_validate_run(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks() as callbacks:
        order, created = order_create_from_chain(
            request=_deposit(symbol="NOPE"), actor="listen_chain"
        )
    assert created and order.booked_at is None
    assert len(callbacks) == 1  # the validate run, which refuses and refunds it
    assert [e.action for e in AuditLog.objects.filter(order=order)] == ["order.created"]


def test_replayed_event_makes_no_second_order(django_capture_on_commit_callbacks):
    first, _ = order_create_from_chain(request=_deposit(), actor="listen_chain")
    with django_capture_on_commit_callbacks() as callbacks:
        again, created = order_create_from_chain(
            request=_deposit(log_index=9, tx_hash="0x" + "33" * 32), actor="listen_chain"
        )
    assert not created
    assert again.pk == first.pk
    assert callbacks == []
    assert Order.objects.count() == 1


def test_unlisted_symbol_still_becomes_an_order_to_refund():
    order, _ = order_create_from_chain(request=_deposit(symbol="NOPE"), actor="listen_chain")
    assert order.stock_code == ""  # validate refuses it and refunds


def test_cancel_is_recorded_once(django_capture_on_commit_callbacks):
    order = OrderFactory(onchain_id=7)
    with django_capture_on_commit_callbacks() as callbacks:
        order_request_cancel(chain_id=31337, deposit_id=7, tx_hash="0xaa", actor="listen_chain")
        order_request_cancel(chain_id=31337, deposit_id=7, tx_hash="0xaa", actor="listen_chain")
    order.refresh_from_db()
    assert order.cancel_requested_at is not None
    assert len(callbacks) == 1
    assert AuditLog.objects.filter(order=order, action="order.cancel_requested").count() == 1


def test_cancel_after_terminal_is_audited_without_refund():
    order = OrderFactory(onchain_id=8, status=OrderStatus.EXECUTED)
    order_request_cancel(chain_id=31337, deposit_id=8, tx_hash="0xbb", actor="listen_chain")
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    assert order.cancel_requested_at is None
    entry = AuditLog.objects.get(order=order, action="order.cancel_after_terminal")
    assert entry.after["refund_owed"] == 0


def test_cancel_for_unknown_deposit_returns_none():
    assert order_request_cancel(chain_id=1, deposit_id=404, tx_hash="0x", actor="t") is None
