"""Manual and automatic refunds against a real anvil chain and the OpenD simulator: what the
user holds on chain moves by exactly the refunded amount, once, and every unit of a deposit
is accounted for (deposit = manual refunds + cost + fees + settlement refund)."""

import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from chain import selectors as chain_selectors
from chain.models import SettlementTx
from core.models import Alert, AuditLog
from core.money import TOKEN_UNIT, USDT_UNIT
from orders import pipeline
from orders.models import Order, OrderStatus
from orders.services import ChainOrderRequest, order_create_from_chain
from refunds import selectors, services
from refunds.exceptions import RefundRefused
from refunds.models import Refund, RefundOrigin, RefundStatus
from tests.fixtures.chain import call_of, named_deposit, named_refund
from tests.refunds.conftest import (
    confirm,
    deposit,
    drive,
    floor_at_vault_balance,
    fund_vault,
    usdt_of,
    vault_send,
)

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

S = RefundStatus


def refused(match: str, **kwargs):
    with pytest.raises(RefundRefused, match=match) as info:
        services.refund_request(**{"reason": "test", "requested_by": "alice", **kwargs})
    return str(info.value)


def assert_conserved(order: Order) -> None:
    order.refresh_from_db()
    assert (
        order.manual_refund_usdt + order.cost_usdt + order.fees_usdt + order.refund_usdt
        == order.usdt_amount
    )


# --- refusals ----------------------------------------------------------------------------------


def test_each_refusal_says_why_and_what_to_do(stack, chain_user):
    contracts, sim = stack
    user = chain_user(2)

    assert "no order 999999999: check the id" in refused("no order", order_id=999_999_999)

    sell, _ = order_create_from_chain(
        request=ChainOrderRequest(
            chain_id=contracts.chain_id,
            order_type="SELL",
            onchain_id=10**12,
            tx_hash="0x" + "ab" * 32,
            log_index=0,
            user_address=user.address,
            symbol="AAPL",
            token_amount=TOKEN_UNIT,
        ),
        actor="test",
    )
    assert "only deposits are refunded" in refused("is a redeem", order_id=sell.pk)

    done = deposit(user, contracts, 1_000 * USDT_UNIT)
    drive(done.pk)
    message = refused("already refunded/settled", order_id=done.pk)
    assert "EXECUTED" in message

    sim.set_security(code="US.AAPL", fill_mode="none")
    working = deposit(user, contracts, 500 * USDT_UNIT)
    drive(working.pk, until=lambda: Order.objects.get(pk=working.pk).status == "EXECUTING")
    assert "wait a few seconds for the cycle to end" in refused(
        "takes part in netting cycle", order_id=working.pk
    )

    pending = deposit(user, contracts, 200 * USDT_UNIT)
    assert "ask for at most that" in refused(
        "above what remains", order_id=pending.pk, amount=200 * USDT_UNIT + 1
    )
    refused("must be positive", order_id=pending.pk, amount=0)
    refused("must be positive", order_id=pending.pk, amount=-5)
    refused("give the reason", order_id=pending.pk, reason="  ")
    refused("name the operator", order_id=pending.pk, requested_by="")

    assert not Refund.objects.filter(origin=RefundOrigin.MANUAL).exists()
    pending.refresh_from_db()
    assert pending.manual_refund_usdt == 0


def expire_soon(order, seconds: float = 1.0) -> None:
    """The broker rejects every cycle; the order ends at its (near) deadline, refunded."""
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=seconds)
    )


# --- small manual refund -------------------------------------------------------------------


def test_small_refund_is_paid_at_once_and_audited_with_its_actor(stack, chain_user):
    contracts, _ = stack
    user = chain_user(3)
    order = deposit(user, contracts, 400 * USDT_UNIT)
    before = usdt_of(user)

    refund = services.refund_request(
        order_id=order.pk, reason="user asked", requested_by="alice", amount=150 * USDT_UNIT
    )

    assert refund.status == S.SENT and refund.origin == RefundOrigin.MANUAL
    refund = confirm(refund)
    assert refund.status == S.CONFIRMED
    assert refund.tx_hash.startswith("0x") and len(refund.tx_hash) == 66
    assert usdt_of(user) == before + 150 * USDT_UNIT
    assert chain_selectors.deposit_refunded(deposit_id=int(order.onchain_id)) == 150 * USDT_UNIT
    order.refresh_from_db()
    assert order.manual_refund_usdt == 150 * USDT_UNIT
    assert order.status == OrderStatus.PENDING

    trail = list(AuditLog.objects.filter(order=order).values_list("action", "actor"))
    for step in (
        ("refund.requested", "alice"),
        ("order.manual_refund", "alice"),
        ("chain.settlement_signed", "alice"),
        ("refund.sent", "alice"),
        ("refund.confirmed", "test:check"),
    ):
        assert step in trail, (step, trail)


# --- approval --------------------------------------------------------------------------------


def test_above_threshold_waits_for_a_second_operator(stack, chain_user, settings):
    contracts, _ = stack
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(100)
    user = chain_user(4)
    order = deposit(user, contracts, 300 * USDT_UNIT)
    before = usdt_of(user)

    refund = services.refund_request(
        order_id=order.pk, reason="duplicate deposit", requested_by="admin:alice"
    )
    assert refund.status == S.AWAITING_APPROVAL
    assert refund.amount == 300 * USDT_UNIT  # everything that remains
    order.refresh_from_db()
    assert order.manual_refund_usdt == 0  # nothing held before approval
    assert usdt_of(user) == before

    for same_person in ("admin:alice", "alice", "cli:Alice"):
        with pytest.raises(RefundRefused, match="a second, different operator"):
            services.refund_approve(refund_id=refund.pk, approver=same_person)
    with pytest.raises(RefundRefused, match="no refund 987654"):
        services.refund_approve(refund_id=987654, approver="bob")

    refund = services.refund_approve(refund_id=refund.pk, approver="bob")
    assert refund.status == S.SENT and refund.approved_by == "bob"
    with pytest.raises(RefundRefused, match="not awaiting approval"):
        services.refund_approve(refund_id=refund.pk, approver="carol")
    assert confirm(refund).status == S.CONFIRMED
    assert usdt_of(user) == before + 300 * USDT_UNIT
    actors = dict(
        AuditLog.objects.filter(order=order, action__startswith="refund.").values_list(
            "action", "actor"
        )
    )
    assert actors["refund.requested"] == "admin:alice"
    assert actors["refund.approved"] == "bob"
    assert actors["refund.sent"] == "bob"


def test_two_approvals_at_once_one_wins(stack, chain_user, settings):
    contracts, _ = stack
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(1)
    user = chain_user(5)
    order = deposit(user, contracts, 50 * USDT_UNIT)
    refund = services.refund_request(
        order_id=order.pk, reason="race", requested_by="alice", amount=20 * USDT_UNIT
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def approve(name: str) -> None:
        try:
            barrier.wait()
            services.refund_approve(refund_id=refund.pk, approver=name)
            outcomes.append("approved")
        except RefundRefused as exc:
            outcomes.append(f"refused: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(n,)) for n in ("bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(o.split(":")[0] for o in outcomes) == ["approved", "refused"], outcomes
    assert any("not awaiting approval" in o for o in outcomes)
    order.refresh_from_db()
    assert order.manual_refund_usdt == 20 * USDT_UNIT  # held once
    assert SettlementTx.objects.filter(kind="refund").count() == 1
    assert AuditLog.objects.filter(order=order, action="refund.approved").count() == 1


def test_approval_rejects_a_refund_whose_order_moved_on(stack, chain_user, settings):
    contracts, _ = stack
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(1)
    user = chain_user(6)
    order = deposit(user, contracts, 1_000 * USDT_UNIT)
    refund = services.refund_request(order_id=order.pk, reason="late", requested_by="alice")
    drive(order.pk)  # the market opened: it traded and settled meanwhile

    with pytest.raises(RefundRefused, match="already refunded/settled.*is rejected"):
        services.refund_approve(refund_id=refund.pk, approver="bob")
    refund.refresh_from_db()
    assert refund.status == S.REJECTED
    assert AuditLog.objects.filter(action="refund.rejected", actor="bob").exists()
    assert_conserved(order)


# --- the order side --------------------------------------------------------------------------


def test_partial_refund_then_the_pipeline_trades_only_the_rest(stack, chain_user):
    contracts, _ = stack
    user = chain_user(7)
    before_deposit = usdt_of(user)
    order = deposit(user, contracts, 1_000 * USDT_UNIT)
    pipeline.order_validate(order_id=order.pk)  # booked: 1000 USDT waits for a cycle

    refund = services.refund_request(
        order_id=order.pk, reason="partial", requested_by="alice", amount=300 * USDT_UNIT
    )
    order.refresh_from_db()
    assert order.manual_refund_usdt == 300 * USDT_UNIT
    confirm(refund)
    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    # The cycles traded only the 700 USDT that remained: about 6.99 shares.
    assert 6 * TOKEN_UNIT < order.tokens_minted < 7 * TOKEN_UNIT
    assert order.cost_usdt + order.fees_usdt > 699 * USDT_UNIT
    assert order.manual_refund_usdt == 300 * USDT_UNIT
    assert_conserved(order)
    assert usdt_of(user) == before_deposit - order.cost_usdt - order.fees_usdt
    # Fractional shares spend all but rounding dust; a refund is recorded when there is one.
    assert order.refund_usdt < 10
    autos = Refund.objects.filter(order=order, origin=RefundOrigin.AUTOMATIC)
    assert [a.amount for a in autos] == ([order.refund_usdt] if order.refund_usdt else [])


def test_full_refund_of_a_pending_order_closes_the_deposit_with_nothing_to_settle(
    stack, chain_user
):
    contracts, _ = stack
    user = chain_user(8)
    before_deposit = usdt_of(user)
    order = deposit(user, contracts, 250 * USDT_UNIT)

    refund = services.refund_request(order_id=order.pk, reason="wrong symbol", requested_by="al")
    assert refund.amount == 250 * USDT_UNIT
    # The pipeline closes the order, but its settlement waits for the refund to be paid.
    assert pipeline.order_validate(order_id=order.pk) == pipeline.Next(pipeline.SETTLE)
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING
    assert order.outcome == OrderStatus.CANCELED and order.refund_usdt == 0
    assert pipeline.order_settle(order_id=order.pk).stage == pipeline.SETTLE
    assert not SettlementTx.objects.filter(kind="deposit", order_id=order.pk).exists()

    confirm(refund)
    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELED
    settlement = SettlementTx.objects.get(kind="deposit", order_id=order.pk)
    assert (settlement.usdt_amount, settlement.token_amount) == (0, 0)
    assert chain_selectors.is_settled(kind="deposit", onchain_id=int(order.onchain_id))
    assert usdt_of(user) == before_deposit
    assert_conserved(order)
    assert not Refund.objects.filter(order=order, origin=RefundOrigin.AUTOMATIC).exists()
    assert "refunded manually in full" in order.last_error


def test_automatic_refunds_are_recorded_once_by_the_pipeline(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="reject")
    user = chain_user(9)
    order = deposit(user, contracts, 500 * USDT_UNIT)
    expire_soon(order)
    drive(order.pk)
    assert pipeline.order_settle(order_id=order.pk) is None  # redelivered: nothing more

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    (auto,) = Refund.objects.filter(order=order)
    assert auto.origin == RefundOrigin.AUTOMATIC and auto.status == S.CONFIRMED
    assert auto.amount == 500 * USDT_UNIT
    assert auto.tx_hash == order.settlement_tx_hash
    assert "deadline" in auto.reason.lower()
    assert AuditLog.objects.filter(
        order=order, action="refund.automatic", actor="task:orders.settle"
    ).exists()


# --- the reserve ---------------------------------------------------------------------------


def test_short_reserve_makes_the_refund_wait_then_funding_pays_it(stack, chain_user, settings):
    contracts, _ = stack
    anvil_node = chain_user(2).node
    user = chain_user(2)
    order = deposit(user, contracts, 80 * USDT_UNIT)
    floor_at_vault_balance(settings)
    before = usdt_of(user)

    refund = services.refund_request(
        order_id=order.pk, reason="reserve", requested_by="alice", amount=30 * USDT_UNIT
    )

    assert refund.status == S.WAITING_RESERVE
    alert = Alert.objects.get(key="reserve_short", resolved_at__isnull=True)
    assert f"refund {refund.pk}" in alert.message and "fund the vault" in alert.message
    assert services.refunds_retry_waiting(actor="test:beat") == 0
    assert Refund.objects.get(pk=refund.pk).status == S.WAITING_RESERVE
    status = selectors.reserve_status()
    assert status.committed >= 30 * USDT_UNIT and status.headroom < 0

    fund_vault(anvil_node, contracts, 30 * USDT_UNIT)
    assert services.refunds_retry_waiting(actor="test:beat") == 1
    refund = confirm(Refund.objects.get(pk=refund.pk))
    assert refund.status == S.CONFIRMED
    assert usdt_of(user) == before + 30 * USDT_UNIT
    assert not Alert.objects.filter(key="reserve_short", resolved_at__isnull=True).exists()
    trail = list(AuditLog.objects.filter(order=order).values_list("action", "actor"))
    assert ("refund.waiting_reserve", "alice") in trail
    assert ("refund.sent", "test:beat") in trail


def test_settlement_paying_usdt_waits_for_the_reserve(stack, chain_user, settings):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="reject")
    user = chain_user(3)
    order = deposit(user, contracts, 60 * USDT_UNIT)
    expire_soon(order)
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).status == "SETTLING")
    floor_at_vault_balance(settings)

    nxt = pipeline.order_settle(order_id=order.pk)

    assert nxt == pipeline.Next(pipeline.SETTLE, countdown=settings.RESERVE_WAIT_SECONDS)
    assert not SettlementTx.objects.filter(kind="deposit", order_id=order.pk).exists()
    assert Alert.objects.filter(key="reserve_short_settlement", resolved_at__isnull=True).exists()
    settings.RESERVE_FLOOR_USDT = Decimal(0)
    drive(order.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED and order.refund_usdt == 60 * USDT_UNIT
    services.refunds_retry_waiting(actor="test:beat")
    assert not Alert.objects.filter(
        key="reserve_short_settlement", resolved_at__isnull=True
    ).exists()


# --- paying once -----------------------------------------------------------------------------


def test_a_retried_send_pays_once(stack, chain_user, settings):
    """An earlier attempt paid the refund id but its record was lost: the vault refuses the
    id again (RefundIdUsed), which the sender records as paid; nothing is paid twice."""
    contracts, _ = stack
    user = chain_user(4)
    order = deposit(user, contracts, 90 * USDT_UNIT)
    floor_at_vault_balance(settings)
    refund = services.refund_request(
        order_id=order.pk, reason="retry", requested_by="alice", amount=40 * USDT_UNIT
    )
    assert refund.status == S.WAITING_RESERVE
    before = usdt_of(user)
    vault_send(
        user.node,
        contracts,
        *call_of(
            named_refund(
                refund_id=int(refund.onchain_id),
                deposit_id=int(order.onchain_id),
                refund_usdt_units=40 * USDT_UNIT,
            )
        ),
    )
    settings.RESERVE_FLOOR_USDT = Decimal(0)

    for _ in range(2):
        refund = services.refund_execute(refund_id=refund.pk, actor="test:retry")
    refund = confirm(refund)

    assert refund.status == S.CONFIRMED
    assert usdt_of(user) == before + 40 * USDT_UNIT  # the one payment made outside
    row = SettlementTx.objects.get(kind="refund", onchain_id=refund.onchain_id)
    assert row.already_settled
    assert AuditLog.objects.filter(action="chain.settlement_already_settled").exists()


def test_a_refund_the_vault_refuses_fails_and_hands_its_amount_back(stack, chain_user, settings):
    contracts, _ = stack
    user = chain_user(5)
    order = deposit(user, contracts, 70 * USDT_UNIT)
    floor_at_vault_balance(settings)
    refund = services.refund_request(
        order_id=order.pk, reason="settled elsewhere", requested_by="alice", amount=25 * USDT_UNIT
    )
    assert refund.status == S.WAITING_RESERVE
    # Someone settled the deposit behind Bronco's back: the vault refuses the refund now.
    vault_send(
        user.node,
        contracts,
        *call_of(named_deposit(int(order.onchain_id), mint_token_units=0, refund_usdt_units=0)),
    )
    settings.RESERVE_FLOOR_USDT = Decimal(0)

    refund = services.refund_execute(refund_id=refund.pk, actor="test:retry")

    assert refund.status == S.FAILED and "AlreadySettled" in refund.last_error
    order.refresh_from_db()
    assert order.manual_refund_usdt == 0  # back to the order's own settlement
    assert selectors.refund_failure_count(since=refund.created_at) == 1
    assert AuditLog.objects.filter(
        order=order, action="order.manual_refund_released", actor="test:retry"
    ).exists()
