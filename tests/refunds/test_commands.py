"""The operators' commands: refund_order, approve_refund, reserve_status - their output,
their refusals (CommandError: non-zero exit with why and what to do) and their audit."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chain import selectors as chain_selectors
from core.models import AuditLog
from core.money import USDT_UNIT, units_to_usdt
from refunds.models import Refund, RefundStatus
from tests.refunds.conftest import confirm, deposit, usdt_of

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_refund_order_pays_a_small_refund(stack, chain_user):
    contracts, _ = stack
    user = chain_user(6)
    order = deposit(user, contracts, 100 * USDT_UNIT)
    before = usdt_of(user)

    out = run(
        "refund_order",
        str(order.pk),
        "--reason",
        "asked",
        "--amount",
        "12.5",
        "--operator",
        "alice",
    )

    refund = Refund.objects.get(order=order)
    assert refund.amount == 12_500_000 and refund.requested_by == "alice"
    assert f"Refund {refund.pk} of 12.5 USDT for order {order.pk}: SENT 0x" in out
    confirm(refund)
    assert usdt_of(user) == before + 12_500_000
    assert AuditLog.objects.filter(action="refund.requested", actor="alice").exists()


def test_refund_order_refuses_bad_amounts_and_unknown_orders(stack, chain_user):
    contracts, _ = stack
    order = deposit(chain_user(7), contracts, 20 * USDT_UNIT)
    for amount, message in (
        ("abc", "is not a number"),
        ("-1", "must be a positive number"),
        ("0", "must be a positive number"),
        ("NaN", "must be a positive number"),
        ("1.0000001", "more than 6 decimals"),
    ):
        with pytest.raises(CommandError, match=message):
            run("refund_order", str(order.pk), "--reason", "x", "--amount", amount)
    with pytest.raises(CommandError, match="above what remains of order .* ask for at most"):
        run("refund_order", str(order.pk), "--reason", "x", "--amount", "20.000001")
    with pytest.raises(CommandError, match="refund refused: no order 424242: check the id"):
        run("refund_order", "424242", "--reason", "x")
    with pytest.raises(CommandError, match="--reason"):
        run("refund_order", str(order.pk))
    assert not Refund.objects.exists()


def test_large_refund_needs_approve_refund_by_someone_else(stack, chain_user, settings):
    contracts, _ = stack
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(10)
    user = chain_user(8)
    order = deposit(user, contracts, 40 * USDT_UNIT)
    before = usdt_of(user)

    out = run("refund_order", str(order.pk), "--reason", "dup", "--operator", "alice")
    refund = Refund.objects.get(order=order)
    assert refund.status == RefundStatus.AWAITING_APPROVAL
    assert f"approve_refund {refund.pk} --operator NAME" in out

    with pytest.raises(CommandError, match="approval refused: .*second, different operator"):
        run("approve_refund", str(refund.pk), "--operator", "alice")
    with pytest.raises(CommandError, match="--operator"):
        run("approve_refund", str(refund.pk))
    out = run("approve_refund", str(refund.pk), "--operator", "bob")
    assert f"Refund {refund.pk} of 40 USDT for order {order.pk} approved by bob: SENT" in out
    with pytest.raises(CommandError, match="not awaiting approval"):
        run("approve_refund", str(refund.pk), "--operator", "carol")
    confirm(Refund.objects.get(pk=refund.pk))
    assert usdt_of(user) == before + 40 * USDT_UNIT


def test_reserve_status_shows_balance_committed_floor_headroom(stack, settings):
    settings.RESERVE_FLOOR_USDT = Decimal("1000.5")
    out = run("reserve_status")
    balance = chain_selectors.vault_usdt_balance()
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert lines["balance"].split()[0] == str(units_to_usdt(balance))
    assert lines["floor"].split()[0] == "1000.5"
    assert "committed" in lines and "headroom" in lines


@pytest.mark.django_db
def test_reserve_status_without_a_vault_says_what_to_do(settings):
    settings.CHAIN_VAULT_ADDRESS = ""
    settings.CHAIN_ID = 999_999
    with pytest.raises(CommandError, match="no vault is configured: set CHAIN_VAULT_ADDRESS"):
        run("reserve_status")
