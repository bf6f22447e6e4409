"""Netting end to end at Futu's real window (15 place requests per 30 s, the same in the
simulator and the limiter): 300 deposits over three US symbols and one HK symbol, sent within
30 s, then 30 redeems, through a real worker, beat and the listener. Every order settles,
broker place requests never exceed 15 in any 30 s, settlement transactions are far fewer than
orders, and `reconcile` passes (per order, per cycle, per symbol, broker cash with the real
fees)."""

import random
import threading
import time
from collections.abc import Iterator

import pytest

from chain import selectors as chain_selectors
from chain.models import SettlementTx
from core.money import TOKEN_UNIT, USDT_UNIT
from ops.reconciliation import reconcile
from orders.models import TERMINAL_STATUSES, Cycle, Order, OrderStatus
from tests.e2e.conftest import wait_until
from tests.fixtures.broker import SimHandle, simulator_running

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FUTU_WINDOW = 30.0


@pytest.fixture(scope="module")
def e2e_sim() -> Iterator[SimHandle]:
    """This module's simulator keeps Futu's own window."""
    with simulator_running(rate_window=FUTU_WINDOW) as handle:
        yield handle


def _most_in_any_window(times: list[float], window: float) -> int:
    times, most, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def test_300_deposits_and_30_redeems_net_into_few_broker_orders(stack, chain_user, settings):
    rng = random.Random(7)
    sim = stack.sim
    sim.set_security(code="US.AAPL", price="180.00", fill_mode="full", lot_size=1)
    sim.set_security(code="US.TSLA", price="250.00", fill_mode="full", lot_size=1)
    sim.set_security(code="US.NVDA", price="120.00", fill_mode="full", lot_size=1)
    sim.set_security(code="HK.00700", price="380.00", fill_mode="full", lot_size=100)
    settings.FUTU_RATE_WINDOW_SECONDS = FUTU_WINDOW
    stack.env["FUTU_RATE_WINDOW_SECONDS"] = f"{FUTU_WINDOW:g}"
    stack.env["ORDER_DEADLINE_SECONDS"] = "600"
    stack.start_worker(concurrency=3)
    stack.start_beat()
    stack.start_listener()

    users = [chain_user(i) for i in range(2, 10)]
    vault0 = chain_selectors.vault_usdt_balance()
    supply0 = chain_selectors.token_total_supplies()
    symbols = ["AAPL", "TSLA", "NVDA", "TCEHY"]
    plan: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(users))}
    for n in range(300):
        amount = rng.randint(5, 400) * USDT_UNIT + rng.randint(0, USDT_UNIT - 1)
        plan[n % len(users)].append((rng.choice(symbols), amount))
    # Signed in the users' wallets first; the offering is the sending (it took 25-30 s to
    # estimate, sign and wait one by one on a loaded 2-core machine, at the bound).
    signed = {i: users[i].sign_deposits(plan[i]) for i in range(len(users))}
    tx_hashes: dict[int, list[str]] = {i: [] for i in range(len(users))}

    def send(i: int) -> None:  # each user sends its own deposits, in its own nonce order
        client = users[i].node.client()
        for raw in signed[i]:
            tx_hashes[i].append(client.send_raw(raw))

    started = time.monotonic()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(users))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=120)
    offered_in = time.monotonic() - started
    deposit_ids = [
        users[i].deposit_id(users[i].node.client().wait_receipt(h))
        for i in range(len(users))
        for h in tx_hashes[i]
    ]
    assert len(deposit_ids) == 300
    assert offered_in < 30, f"300 deposits took {offered_in:.1f} s to offer"

    def settled(kind, ids):
        return Order.objects.filter(
            order_type=kind, onchain_id__in=ids, status__in=TERMINAL_STATUSES
        ).count() == len(ids)

    wait_until(lambda: settled("BUY", deposit_ids), timeout=300, interval=1.0, what="deposits")
    redeem_ids = []
    for user in users:
        for symbol in symbols:
            held = chain_selectors.token_balance(symbol=symbol, address=user.address)
            if held > TOKEN_UNIT // 100 and len(redeem_ids) < 30:
                redeem_ids.append(user.redeem_id(user.redeem(symbol, held // 2)))
    assert len(redeem_ids) == 30
    wait_until(lambda: settled("SELL", redeem_ids), timeout=300, interval=1.0, what="redeems")

    orders = list(Order.objects.filter(onchain_id__in=deposit_ids + redeem_ids))
    assert len(orders) == 330
    assert all(o.status == OrderStatus.EXECUTED for o in orders), {o.status for o in orders}
    placed = [
        c.placed_at.timestamp() for c in Cycle.objects.exclude(futu_order_id="") if c.placed_at
    ]
    assert 0 < len(placed) <= 60  # a few cycles per symbol, not one order per deposit
    assert _most_in_any_window(placed, FUTU_WINDOW) <= 15  # Futu's limit, never exceeded
    assert len(sim.orders()) == len(placed)
    transactions = SettlementTx.objects.values("tx_hash").distinct().count()
    assert transactions * 5 <= len(orders), f"{transactions} settlement transactions"
    # Per order, per cycle, per symbol and against the broker: no discrepancy. (The vault's
    # USDT and the token supplies are checked here for this test's orders alone: the
    # session's chain also carries earlier tests' deposits, redeems and direct transfers.)
    result = reconcile()
    others = [
        d
        for d in result.discrepancies
        if not (
            d.where == "chain" and (d.subject == "vault USDT" or d.subject.startswith("token "))
        )
    ]
    assert not others, "\n".join(str(d) for d in others)
    for symbol in symbols:
        minted = sum(
            o.tokens_minted for o in orders if o.order_type == "BUY" and o.symbol == symbol
        )
        burned = sum(
            o.token_amount - o.tokens_returned
            for o in orders
            if o.order_type == "SELL" and o.symbol == symbol
        )
        assert chain_selectors.token_total_supplies()[symbol] - supply0[symbol] == minted - burned
    paid_in = sum(o.usdt_amount for o in orders if o.order_type == "BUY")
    paid_out = sum(o.refund_usdt if o.order_type == "BUY" else o.payout_usdt for o in orders)
    assert chain_selectors.vault_usdt_balance() - vault0 == paid_in - paid_out
