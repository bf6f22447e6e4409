"""Shared pieces of the refunds tests: the real stack (anvil + OpenD simulator), deposits
made on chain by a user, the pipeline's stage driver, and a driver for sent refunds."""

import time
from decimal import Decimal

import pytest

from chain import selectors as chain_selectors
from orders import pipeline
from orders.models import Order
from orders.money import units_to_usdt
from orders.services import ChainOrderRequest, order_create_from_chain
from refunds import services
from refunds.models import Refund, RefundStatus
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY

STAGES = {
    pipeline.VALIDATE: pipeline.order_validate,
    pipeline.PLACE: pipeline.order_place,
    pipeline.POLL: pipeline.order_poll,
    pipeline.SETTLE: pipeline.order_settle,
}


def drive(order_id: int, *, first: str = pipeline.VALIDATE, timeout: float = 60.0, until=None):
    """Run the order's stages as each one's Next says until it is done (or `until()` holds);
    sent refunds are checked along the way, as their check task would."""
    nxt = pipeline.Next(first)
    deadline = time.monotonic() + timeout
    while nxt is not None:
        if until is not None and until():
            return nxt
        assert time.monotonic() < deadline, f"order {order_id} did not finish: next {nxt}"
        time.sleep(min(nxt.countdown, 0.1))
        services.refunds_check_sent(actor="test:check")
        nxt = STAGES[nxt.task](order_id=order_id)
    return None


def confirm(refund: Refund, *, timeout: float = 20.0) -> Refund:
    """Check a sent refund until the chain confirms it."""
    deadline = time.monotonic() + timeout
    while True:
        refund = services.refund_check(refund_id=refund.pk, actor="test:check")
        if refund.status != RefundStatus.SENT:
            return refund
        assert time.monotonic() < deadline, f"refund {refund.pk} not confirmed"
        time.sleep(0.05)


def deposit(user, contracts, usdt_units: int, symbol: str = "AAPL") -> Order:
    receipt = user.deposit(symbol, usdt_units)
    order, created = order_create_from_chain(
        request=ChainOrderRequest(
            chain_id=contracts.chain_id,
            order_type="BUY",
            onchain_id=user.deposit_id(receipt),
            tx_hash=receipt.tx_hash,
            log_index=0,
            user_address=user.address,
            symbol=symbol,
            usdt_amount=usdt_units,
        ),
        actor="test",
    )
    assert created
    return order


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
    settings.ORDER_POLL_INTERVAL_SECONDS = 0.05
    settings.ORDER_SETTLE_CHECK_SECONDS = 0.05
    settings.ORDER_RETRY_SECONDS = 0.1
    settings.REFUND_CHECK_SECONDS = 0.05
    settings.RESERVE_WAIT_SECONDS = 0.05
    settings.RESERVE_FLOOR_USDT = Decimal(0)
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(10_000)
    broker_settings.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
    return chain_settings, broker_settings
