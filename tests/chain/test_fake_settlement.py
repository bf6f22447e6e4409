"""The settlement-sender protocol, its in-memory fake (tests/fakes/settlement.py), the setting
that selects it, and production refusing any sender but the real one."""

import inspect
import os
import subprocess
import sys

import pytest

from chain.exceptions import SettlementRejected
from chain.models import SettlementTx
from chain.services import ChainSettlementSender
from chain.settlement import (
    DepositSettlement,
    RedeemSettlement,
    RefundPayment,
    SettlementSender,
    SettlementState,
    settlement_sender,
)
from refunds.models import Refund, RefundOrigin, RefundStatus
from refunds.services.manual import refund_check
from tests.factories import OrderFactory
from tests.fakes.settlement import FakeSettlementSender, Outcome
from tests.fixtures.chain import REPO

FAKE = "tests.fakes.settlement.FakeSettlementSender"
PROTOCOL_METHODS = (
    "submit",
    "submit_batch",
    "check",
    "resubmit",
    "settlement",
    "reserve_usdt_units",
)
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
NAMED = {"user": ALICE, "symbol": "AAPL"}


def deposit(deposit_id=7, refund=10, mint=5, **overrides):
    return DepositSettlement(
        deposit_id=deposit_id,
        mint_token_units=mint,
        refund_usdt_units=refund,
        **(NAMED | {"deposit_usdt_units": 100} | overrides),
    )


@pytest.mark.parametrize("sender", [FakeSettlementSender, ChainSettlementSender])
def test_the_fake_and_the_real_sender_satisfy_the_protocol_with_its_signatures(sender):
    assert isinstance(sender(), SettlementSender)
    for name in PROTOCOL_METHODS:
        assert inspect.signature(getattr(sender, name)) == inspect.signature(
            getattr(SettlementSender, name)
        ), name
    assert not isinstance(object(), SettlementSender)


def test_the_fake_settles_an_id_at_most_once():
    fake = FakeSettlementSender()
    first = fake.submit(deposit(), actor="test")
    again = fake.submit(deposit(), actor="test")
    assert again == first and fake.submissions == [deposit()]
    with pytest.raises(ValueError, match="other amounts"):
        fake.submit(deposit(refund=11), actor="test")
    assert fake.check(kind="deposit", vault_id=7, actor="test") == SettlementState.CONFIRMED
    assert fake.check(kind="deposit", vault_id=7, actor="test") == SettlementState.CONFIRMED
    assert fake.paid == {("deposit", 7): deposit()}

    # The kind is part of the key: redeem 7 and refund 7 are other settlements.
    fake.submit(
        RedeemSettlement(
            redeem_id=7, payout_usdt_units=1, return_token_units=0, redeem_token_units=9, **NAMED
        ),
        actor="t",
    )
    fake.submit(
        RefundPayment(
            refund_id=7, deposit_id=8, refund_usdt_units=3, deposit_usdt_units=100, **NAMED
        ),
        actor="t",
    )
    assert len(fake.submissions) == 3
    with pytest.raises(SettlementTx.DoesNotExist):
        fake.check(kind="redeem", vault_id=8, actor="test")


def test_the_fake_is_scripted_to_stay_pending_revert_or_refuse():
    fake = FakeSettlementSender()
    fake.script("deposit", 1, Outcome.PEND)
    fake.submit(deposit(1), actor="test")
    for _ in range(3):
        assert fake.check(kind="deposit", vault_id=1, actor="test") == SettlementState.PENDING
    assert fake.paid == {}
    fake.confirm("deposit", 1)
    assert fake.check(kind="deposit", vault_id=1, actor="test") == SettlementState.CONFIRMED

    fake.script("deposit", 2, Outcome.REFUSE)
    with pytest.raises(SettlementRejected):
        fake.submit(deposit(2), actor="test")
    assert fake.settlement(kind="deposit", vault_id=2) is None

    fake.script("deposit", 3, Outcome.REVERT, Outcome.REFUSE, Outcome.CONFIRM)
    fake.submit(deposit(3), actor="test")
    assert fake.check(kind="deposit", vault_id=3, actor="test") == SettlementState.REVERTED
    assert fake.resubmit(kind="deposit", vault_id=3, actor="test") == SettlementState.REVERTED
    assert fake.resubmit(kind="deposit", vault_id=3, actor="test") == SettlementState.PENDING
    assert fake.check(kind="deposit", vault_id=3, actor="test") == SettlementState.CONFIRMED
    assert set(fake.paid) == {("deposit", 1), ("deposit", 3)}


def test_the_setting_selects_the_sender(settings):
    assert type(settlement_sender()) is ChainSettlementSender
    settings.CHAIN_SETTLEMENT_SENDER = FAKE
    fake = settlement_sender()
    assert type(fake) is FakeSettlementSender and settlement_sender() is fake
    settings.CHAIN_SETTLEMENT_SENDER = "chain.models.SettlementTx"
    with pytest.raises(TypeError, match="CHAIN_SETTLEMENT_SENDER"):
        settlement_sender()
    settings.CHAIN_SETTLEMENT_SENDER = FAKE
    assert settlement_sender() is not fake  # a test that selects it starts afresh


@pytest.mark.django_db
def test_refunds_reach_the_chain_through_the_selected_sender(settings):
    settings.CHAIN_SETTLEMENT_SENDER = FAKE
    fake = settlement_sender()
    order = OrderFactory()
    refund = Refund.objects.create(
        order=order,
        amount=4 * 10**6,
        reason="t",
        origin=RefundOrigin.MANUAL,
        status=RefundStatus.SENT,
        requested_by="alice",
    )
    fake.script("refund", int(refund.onchain_id), Outcome.PEND)
    sent = fake.submit(
        RefundPayment(
            refund_id=int(refund.onchain_id),
            deposit_id=int(order.onchain_id),
            user=order.user_address,
            symbol=order.symbol,
            deposit_usdt_units=int(order.usdt_amount),
            refund_usdt_units=int(refund.amount),
        ),
        actor="test",
    )
    assert refund_check(refund_id=refund.pk, actor="test").status == RefundStatus.SENT
    fake.confirm("refund", int(refund.onchain_id))
    checked = refund_check(refund_id=refund.pk, actor="test")
    assert checked.status == RefundStatus.CONFIRMED and checked.tx_hash == sent.tx_hash


def production_settings(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHAIN_", "DJANGO_"))}
    good = {
        "BRONCO_ENV": "production",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "k" * 50,
        "DATABASE_URL": "postgres://bronco:pw@db/bronco",
        "VAULT_ADDR": "https://vault.internal:8200",
        "VAULT_TOKEN": "s.token",
    }
    return subprocess.run(
        [sys.executable, "-c", "import bronco_project.settings.production"],
        cwd=REPO,
        env=base | good | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_any_sender_but_the_real_one():
    assert production_settings().returncode == 0
    refused = production_settings(CHAIN_SETTLEMENT_SENDER=FAKE)
    assert refused.returncode != 0
    assert "refuses to start" in refused.stderr and "CHAIN_SETTLEMENT_SENDER" in refused.stderr


def test_the_fake_refuses_a_settlement_naming_another_request_like_the_vault():
    fake = FakeSettlementSender()
    fake.record("deposit", 7, user=ALICE, symbol="AAPL", amount=100)
    for wrong in ({"user": BOB}, {"symbol": "TSLA"}, {"deposit_usdt_units": 101}):
        with pytest.raises(SettlementRejected, match="DepositMismatch"):
            fake.submit(deposit(**wrong), actor="test")
    fake.forget("deposit", 7)
    with pytest.raises(SettlementRejected, match="UnknownDeposit"):
        fake.submit(deposit(), actor="test")
    assert fake.submissions == [] and fake.paid == {}


def test_the_fake_batch_skips_settled_ids_and_refuses_a_mismatched_batch_whole():
    fake = FakeSettlementSender()
    fake.record("deposit", 2, user=ALICE, symbol="AAPL", amount=100)
    first = fake.submit_batch([deposit(1), deposit(2)], actor="test")
    assert [s.vault_id for s in first] == [1, 2]
    for vault_id in (1, 2):
        fake.check(kind="deposit", vault_id=vault_id, actor="test")
    again = fake.submit_batch([deposit(1), deposit(3)], actor="test")  # 1 is skipped
    assert again[0] == fake.settlement(kind="deposit", vault_id=1)
    fake.record("deposit", 5, user=BOB, symbol="AAPL", amount=100)
    with pytest.raises(SettlementRejected, match="DepositMismatch"):
        fake.submit_batch([deposit(4), deposit(5)], actor="test")
    assert fake.settlement(kind="deposit", vault_id=4) is None  # nothing of it recorded
    assert [r.vault_id for r in fake.submissions] == [1, 2, 3]
    redeem = RedeemSettlement(
        redeem_id=6, payout_usdt_units=1, return_token_units=0, redeem_token_units=9, **NAMED
    )
    mixed = fake.submit_batch([deposit(6), redeem], actor="test")  # as settleBatch: both kinds
    assert [(s.kind, s.vault_id) for s in mixed] == [("deposit", 6), ("redeem", 6)]
    assert mixed[0].tx_hash == mixed[1].tx_hash
    refund = RefundPayment(
        refund_id=9, deposit_id=6, refund_usdt_units=3, deposit_usdt_units=100, **NAMED
    )
    with pytest.raises(ValueError, match="deposits and redeems only"):
        fake.submit_batch([deposit(8), refund], actor="test")
