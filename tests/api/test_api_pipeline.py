"""The API after real pipeline runs: deposits and redeems made on a real anvil chain, traded
through the futu-api SDK against the OpenD simulator, settled on chain; the API is read at
each status on the way (PENDING, EXECUTING, SETTLING, EXECUTED, FAILED with a refund,
CANCELED) and what it says is checked against the chain itself."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from chain import selectors as chain_selectors
from chain.client import chain_client
from core.money import TOKEN_UNIT, USDT_UNIT
from orders.models import Cycle, Order, OrderStatus
from tests.fixtures.pipeline import (
    cancel_in_a_placed_cycle,
    chain_deposit,
    chain_redeem,
    drive,
    fast_pipeline,
)

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(settings, chain_settings, broker_settings):
    fast_pipeline(settings)
    settings.NETTING_CYCLE_TIMEOUT_SECONDS = 1.0
    settings.API_QUOTE_TTL_SECONDS = 0.01
    broker_settings.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
    return chain_settings, broker_settings


def _read(order: Order) -> dict:
    kind = "deposit" if order.order_type == "BUY" else "redeem"
    r = Client().get(f"/api/v1/orders/{kind}/{int(order.onchain_id)}")
    assert r.status_code == 200, r.content
    return r.json()


def _status(order: Order) -> str:
    return Order.objects.get(pk=order.pk).status


def _balances(user):
    return (
        chain_selectors.usdt_balance(address=user.address),
        chain_selectors.token_balance(symbol="AAPL", address=user.address),
    )


def _units(text: str, decimals: int) -> int:
    return int(Decimal(text).scaleb(decimals))


def test_a_deposit_read_at_every_status_until_settled(stack, chain_user):
    contracts, _ = stack
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = chain_deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)

    seen = _read(order)
    assert (seen["status"], seen["stage"]) == ("PENDING", "PENDING")
    # Seen and booked in the listener's one transaction (a valid order needs no validate run).
    assert [s["stage"] for s in seen["timeline"]] == ["seen", "booked"]
    assert seen["deposited_usdt"] == "1000.000000" and seen["address"] == user.address

    drive(order.pk, until=lambda: _status(order) == OrderStatus.EXECUTING)
    working = _read(order)
    assert (working["status"], working["stage"]) == ("EXECUTING", "EXECUTING")
    assert [s["stage"] for s in working["timeline"]][-1] == "in_cycle"

    drive(order.pk, until=lambda: _status(order) == OrderStatus.SETTLING)
    settling = _read(order)
    assert (settling["status"], settling["stage"]) == ("EXECUTING", "SETTLING")

    order = drive(order.pk)
    body = _read(order)
    assert body["status"] == "EXECUTED"
    stages = [s["stage"] for s in body["timeline"]]
    for stage in ("seen", "booked", "in_cycle", "settling", "settled"):
        assert stage in stages
    assert [s["at"] for s in body["timeline"]] == sorted(s["at"] for s in body["timeline"])
    # What the chain shows: tokens minted and USDT refunded to the user, the settlement tx.
    usdt_now, tokens_now = _balances(user)
    assert _units(body["shares_minted"], 18) == tokens_now - tokens_before
    assert _units(body["usdt_refunded"], 6) == usdt_now - (usdt_before - 1_000 * USDT_UNIT)
    assert (
        _units(body["usdt_spent"], 6)
        + _units(body["fees_usdt"], 6)
        + _units(body["usdt_refunded"], 6)
        == 1_000 * USDT_UNIT
    )
    assert chain_client().receipt(body["settlement_tx"]).succeeded
    cycle = Cycle.objects.get(pk=body["cycles"][0]["cycle"])
    assert Decimal(body["cycles"][0]["price"]) == cycle.price
    assert sum(_units(c["shares"], 18) for c in body["cycles"]) == tokens_now - tokens_before
    # The same order by its deposit transaction, by its settlement, and by the address.
    client = Client()
    by_tx = client.get(f"/api/v1/orders/by-tx/{order.chain_tx_hash}").json()["orders"]
    assert [o["vault_id"] for o in by_tx] == [body["vault_id"]]
    by_settle = client.get(f"/api/v1/orders/by-tx/{body['settlement_tx']}").json()["orders"]
    assert body["vault_id"] in [o["vault_id"] for o in by_settle]
    mine = client.get("/api/v1/orders", {"address": user.address.lower()}).json()["orders"]
    assert mine[0] == body


def test_a_refunded_deposit_shows_its_refund(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="reject")
    user = chain_user(3)
    usdt_before, _ = _balances(user)
    order = chain_deposit(user, contracts, "AAPL", 500 * USDT_UNIT)
    Order.objects.filter(pk=order.pk).update(deadline=timezone.now() + timedelta(seconds=2))
    order = drive(order.pk)

    body = _read(order)
    assert body["status"] == "FAILED"
    assert body["usdt_refunded"] == "500.000000"
    assert body["shares_minted"] == "0.000000000000000000"
    assert _balances(user)[0] == usdt_before
    assert body["settlement_tx"]
    stages = [s["stage"] for s in body["timeline"]]
    assert "settled" in stages and stages[-1] == "settled"
    assert "reject" not in str(body).lower()  # the broker's words stay internal


def test_a_canceled_deposit_reads_canceled(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(5)
    order = cancel_in_a_placed_cycle(
        user, contracts, chain_deposit(user, contracts, "AAPL", 300 * USDT_UNIT)
    )

    body = _read(order)
    assert body["status"] == "CANCELED"
    assert body["usdt_refunded"] == "300.000000"
    assert "cancel_requested" in [s["stage"] for s in body["timeline"]]


def test_a_redeem_shows_shares_sold_and_usdt_paid(stack, chain_user):
    contracts, sim = stack
    user = chain_user(7)
    drive(chain_deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT).pk)
    usdt_before, tokens_before = _balances(user)
    redeem_units = 5 * TOKEN_UNIT + TOKEN_UNIT // 2
    order = drive(chain_redeem(user, contracts, "AAPL", redeem_units).pk)

    body = _read(order)
    assert body["kind"] == "redeem" and body["status"] == "EXECUTED"
    assert body["redeemed_shares"] == "5.500000000000000000"
    assert body["shares_sold"] == "5.500000000000000000"
    assert body["shares_returned"] == "0.000000000000000000"
    usdt_now, tokens_now = _balances(user)
    assert _units(body["usdt_paid"], 6) == usdt_now - usdt_before
    assert tokens_before - tokens_now == redeem_units
    assert _units(body["usdt_paid"], 6) + _units(body["fees_usdt"], 6) == _units(
        body["usdt_proceeds"], 6
    )


def test_quote_and_symbols_read_the_simulator_through_the_sdk(stack, settings):
    _, sim = stack
    settings.BRONCO_SYMBOLS = {"AAPL": "US.AAPL"}
    client = Client()
    quote = client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "1000"}).json()
    assert quote["price"] == "100" or Decimal(quote["price"]) == Decimal("100.00")
    # 1000 USDT less Bronco's 0.1 % fee at 100: 9.99000999 shares.
    assert Decimal(quote["estimated_shares"]) == Decimal("9.99000999")
    symbols = client.get("/api/v1/symbols").json()["symbols"]
    assert symbols[0]["lot_size"] == 1 and symbols[0]["token_address"]


def test_one_code_the_broker_refuses_costs_only_its_own_quote(stack, settings):
    """OpenD refuses a whole snapshot request for one unknown code ("Unknown stock"): the
    other symbols still get their quote and the list still answers (no 500)."""
    settings.BRONCO_SYMBOLS = {"AAPL": "US.AAPL", "BOGUS": "US.ZZZZNOPE"}
    client = Client()
    quote = client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "1000"})
    assert quote.status_code == 200 and Decimal(quote.json()["price"]) == Decimal("100")
    symbols = {s["symbol"]: s for s in client.get("/api/v1/symbols").json()["symbols"]}
    assert symbols["AAPL"]["last_quote"] is not None and symbols["BOGUS"]["last_quote"] is None
    bogus = client.get("/api/v1/quote", {"symbol": "BOGUS", "usdt": "1000"})
    assert bogus.status_code == 503 and "ZZZZNOPE" in bogus.json()["detail"]
