"""Settle: every exit of the stage, against a fake settlement sender (the vault's at-most-once
rule included)."""

from decimal import Decimal

import pytest

from chain.models import SettlementKind
from core.models import Alert
from orders.models import OrderStatus, OrderType
from orders.pipeline import SETTLE, order_settle
from refunds.models import Refund, RefundOrigin, RefundStatus
from tests.factories import OrderFactory
from tests.fakes.settlement import Outcome

pytestmark = pytest.mark.django_db(transaction=True)


def _settling_deposit(**kwargs):
    defaults = {
        "status": OrderStatus.SETTLING,
        "outcome": OrderStatus.EXECUTED,
        "filled_qty": Decimal(5),
        "cost_usdt": 950 * 10**6,
        "fees_usdt": 1 * 10**6,
        "refund_usdt": 49 * 10**6,
        "tokens_minted": 5 * 10**18,
    }
    return OrderFactory(**{**defaults, **kwargs})


def test_a_deposit_settles_once_and_records_its_automatic_refund(fake_sender):
    order = _settling_deposit()
    assert order_settle(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED and order.settlement_tx_hash
    (paid,) = fake_sender.paid.values()
    assert (paid.deposit_id, paid.mint_token_units, paid.refund_usdt_units) == (
        int(order.onchain_id),
        5 * 10**18,
        49 * 10**6,
    )
    refund = Refund.objects.get(order=order, origin=RefundOrigin.AUTOMATIC)
    assert refund.amount == 49 * 10**6 and refund.status == RefundStatus.CONFIRMED
    assert order_settle(order_id=order.pk) is None  # terminal: nothing more
    assert len(fake_sender.submissions) == 1


def test_a_redeem_pays_its_proceeds_and_returns_unsold_tokens(fake_sender):
    order = OrderFactory(
        order_type=OrderType.SELL,
        status=OrderStatus.SETTLING,
        outcome=OrderStatus.EXECUTED,
        usdt_amount=0,
        token_amount=5 * 10**18,
        payout_usdt=569 * 10**6,
        tokens_returned=2 * 10**18,
    )
    assert order_settle(order_id=order.pk) is None
    ((key, paid),) = fake_sender.paid.items()
    assert key == (SettlementKind.REDEEM, int(order.onchain_id))
    assert (paid.payout_usdt_units, paid.return_token_units) == (569 * 10**6, 2 * 10**18)


def test_an_order_not_settling_is_left_alone(fake_sender):
    order = OrderFactory(status=OrderStatus.EXECUTING)
    assert order_settle(order_id=order.pk) is None
    assert fake_sender.submissions == []


def test_a_pending_settlement_is_checked_again(fake_sender, settings):
    order = _settling_deposit()
    fake_sender.script("deposit", int(order.onchain_id), Outcome.PEND)
    nxt = order_settle(order_id=order.pk)
    assert nxt == type(nxt)(SETTLE, settings.ORDER_SETTLE_CHECK_SECONDS)
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.settlement_tx_hash
    fake_sender.confirm("deposit", int(order.onchain_id))
    assert order_settle(order_id=order.pk) is None
    assert len(fake_sender.submissions) == 1  # checked again, never sent twice


def test_a_reverted_settlement_is_alerted_and_resubmitted_never_dropped(fake_sender):
    order = _settling_deposit()
    fake_sender.script("deposit", int(order.onchain_id), Outcome.REVERT, Outcome.CONFIRM)
    assert order_settle(order_id=order.pk).stage == SETTLE
    assert Alert.objects.get(key=f"settlement_reverted:{order.pk}")
    assert order_settle(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    assert len(fake_sender.paid) == 1


def test_a_settlement_paying_more_than_the_reserve_waits_with_an_alert(fake_sender, settings):
    fake_sender.reserve = 10 * 10**6
    order = _settling_deposit()
    nxt = order_settle(order_id=order.pk)
    assert nxt == type(nxt)(SETTLE, settings.RESERVE_WAIT_SECONDS)
    assert fake_sender.submissions == []
    assert Alert.objects.filter(key="reserve_short_settlement", resolved_at__isnull=True).exists()
    fake_sender.reserve = 10**12
    assert order_settle(order_id=order.pk) is None


def test_a_manual_refund_in_flight_holds_the_settlement(fake_sender, settings):
    order = _settling_deposit()
    Refund.objects.create(
        order=order,
        amount=10 * 10**6,
        reason="operator",
        origin=RefundOrigin.MANUAL,
        status=RefundStatus.SENT,
        requested_by="cli:alice",
    )
    nxt = order_settle(order_id=order.pk)
    assert nxt == type(nxt)(SETTLE, settings.REFUND_CHECK_SECONDS)
    assert fake_sender.submissions == []


def test_a_held_order_sends_no_settlement_until_released(fake_sender):
    from orders.services import order_hold, order_release_hold

    order = _settling_deposit()
    order_hold(order_id=order.pk, reason="reorg: test", actor="test")
    nxt = order_settle(order_id=order.pk)
    assert nxt is not None and nxt.stage == SETTLE and nxt.countdown > 0
    assert fake_sender.submissions == []
    order_release_hold(order_id=order.pk, actor="test")
    assert order_settle(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED and len(fake_sender.submissions) == 1


def test_a_settlement_the_vault_refuses_holds_the_order_with_a_critical_alert(fake_sender):
    order = _settling_deposit()
    # The vault holds another deposit at this id than the order names: refused, never paid.
    fake_sender.record(
        "deposit", int(order.onchain_id), user=order.user_address, symbol="TSLA", amount=1
    )
    nxt = order_settle(order_id=order.pk)
    assert nxt is not None and nxt.stage == SETTLE
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.held_at is not None
    assert "DepositMismatch" in order.hold_reason
    alert = Alert.objects.get(key=f"settlement_reverted:{order.pk}")
    assert alert.severity == "critical"
    assert fake_sender.submissions == [] and fake_sender.paid == {}
    assert order_settle(order_id=order.pk) is not None  # still held: nothing is sent
    assert fake_sender.submissions == []
