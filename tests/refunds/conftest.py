"""Shared pieces of the refunds tests: the real stack (anvil + OpenD simulator), deposits
made on chain by a user, the pipeline's stage driver, and a driver for sent refunds."""

import time
from decimal import Decimal

import pytest

from chain import selectors as chain_selectors
from core.money import units_to_usdt
from orders.models import Order
from refunds import services
from refunds.models import Refund, RefundStatus
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY
from tests.fixtures.pipeline import chain_deposit, fast_pipeline
from tests.fixtures.pipeline import drive as drive_stages


def drive(order_id: int, **kwargs):  # type: ignore[no-untyped-def]
    """The stage driver, with sent refunds checked along the way as their task would."""
    return drive_stages(
        order_id, each_step=lambda: services.refunds_check_sent(actor="test:check"), **kwargs
    )


def confirm(refund: Refund, *, timeout: float = 20.0) -> Refund:
    """Check a sent refund until the chain confirms it."""
    deadline = time.monotonic() + timeout
    while True:
        refund = services.refund_check(refund_id=refund.pk, actor="test:check")
        if refund.status != RefundStatus.SENT:
            return refund
        assert time.monotonic() < deadline, f"refund {refund.pk} not confirmed"
        time.sleep(0.05)


def deposit(user, contracts, usdt_units: int, symbol: str = "AAPL") -> Order:  # type: ignore[no-untyped-def]
    return chain_deposit(user, contracts, symbol, usdt_units)


def usdt_of(user) -> int:
    return chain_selectors.usdt_balance(address=user.address)


def vault_send(node, contracts, fn, *args, key=OPERATOR_KEY):
    """A vault call signed by the operator (or `key`), outside Bronco's sender."""
    return node.client().transact(
        private_key=key, contract="BroncoVault", address=contracts.vault, fn=fn, args=args
    )


def fund_vault(node, contracts, units: int) -> None:
    node.client().transact(
        private_key=DEPLOYER_KEY,
        contract="MockUSDT",
        address=contracts.usdt,
        fn="mint",
        args=(contracts.vault, units),
    )


def floor_at_vault_balance(settings) -> int:
    """Set the reserve floor to everything the vault holds: nothing may be paid out."""
    balance = chain_selectors.vault_usdt_balance()
    settings.RESERVE_FLOOR_USDT = units_to_usdt(balance)
    return balance


@pytest.fixture
def stack(settings, chain_settings, broker_settings):
    fast_pipeline(settings)
    settings.REFUND_CHECK_SECONDS = 0.05
    settings.RESERVE_WAIT_SECONDS = 0.05
    settings.RESERVE_FLOOR_USDT = Decimal(0)
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(10_000)
    broker_settings.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
    return chain_settings, broker_settings
