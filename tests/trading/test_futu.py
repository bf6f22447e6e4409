"""The Futu adapter through the real, unmodified futu-api SDK against the OpenD simulator:
every SDK call the adapter makes, its error translation, pushes and reconnection."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from tests.fixtures.broker import SimHandle, sim_session
from trading.broker import BrokerOrder, BrokerStatus, Side
from trading.exceptions import BrokerRejected, BrokerUnavailable, NoQuote, RateLimited
from trading.futu import FutuBroker
from trading.session import get_broker

pytestmark = pytest.mark.broker


def wait_for(predicate, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_connects_resolves_account_and_unlocks(own_opend: SimHandle):
    broker = get_broker()
    broker.connect()
    assert broker.acc_id == own_opend.acc_id
    assert own_opend.sim.market.unlocked is True
    assert own_opend.control.connections() == 2  # one quote, one trade context


def test_quote_from_snapshot_and_global_state(broker_settings):
    broker_settings.set_security(code="HK.00700", price="381.40", lot_size=100)
    quote = get_broker().quote("HK.00700")
    assert quote.price == Decimal("381.4")
    assert quote.lot_size == 100
    assert quote.tick_size == Decimal("0.2")
    assert quote.currency == "HKD"
    assert quote.market_open is True and quote.market_state == "AFTERNOON"


def test_quote_market_closed_and_unknown_code(broker_settings):
    broker_settings.set_market_open(market="US", is_open=False)
    assert get_broker().quote("US.AAPL").market_open is False
    with pytest.raises(NoQuote):
        get_broker().quote("US.NOPE")


def test_place_fills_in_full_when_limit_crosses(broker_settings):
    order = get_broker().place_order(
        client_id="c-fill",
        code="US.AAPL",
        side=Side.BUY,
        qty=Decimal(3),
        limit_price=Decimal("191.00"),
    )
    assert order.client_id == "c-fill"
    assert order.status == BrokerStatus.FILLED and order.is_final
    assert order.filled_qty == 3 and order.avg_fill_price == Decimal("190.0")
    assert order.raw_status == "FILLED_ALL"


def test_place_below_market_rests_then_fills_on_price_move(broker_settings):
    broker = get_broker()
    order = broker.place_order(
        client_id="c-rest",
        code="US.AAPL",
        side="BUY",
        qty=Decimal(2),
        limit_price=Decimal("185.00"),
    )
    assert order.status == BrokerStatus.WORKING and order.filled_qty == 0
    broker_settings.set_price(code="US.AAPL", price="184.50")
    filled = wait_for(
        lambda: (
            (o := broker.query_order(broker_order_id=order.broker_order_id))
            and o.status == BrokerStatus.FILLED
            and o
        )
    )
    assert filled.avg_fill_price == Decimal("184.5")


def test_partial_fill_then_cancel(broker_settings):
    broker_settings.set_security(code="HK.00700", fill_mode="partial", partial_ratio="0.5")
    broker = get_broker()
    order = broker.place_order(
        client_id="c-part",
        code="HK.00700",
        side="BUY",
        qty=Decimal(400),
        limit_price=Decimal("382.00"),
    )
    assert order.status == BrokerStatus.PARTIALLY_FILLED
    assert order.filled_qty == 200 and not order.is_final
    cancelled = broker.cancel_order(broker_order_id=order.broker_order_id)
    assert cancelled.status == BrokerStatus.CANCELLED and cancelled.raw_status == "CANCELLED_PART"
    assert cancelled.filled_qty == 200
    # Cancelling again is idempotent: the final order comes back.
    assert broker.cancel_order(broker_order_id=order.broker_order_id) == cancelled


def test_no_fill_and_delayed_fill(broker_settings):
    broker_settings.set_security(code="US.TSLA", fill_mode="none")
    broker_settings.set_security(code="US.NVDA", fill_delay=0.3)
    broker = get_broker()
    resting = broker.place_order(
        client_id="c-none", code="US.TSLA", side="BUY", qty=Decimal(1), limit_price=Decimal("260")
    )
    delayed = broker.place_order(
        client_id="c-delay", code="US.NVDA", side="BUY", qty=Decimal(1), limit_price=Decimal("121")
    )
    assert resting.status == BrokerStatus.WORKING
    assert delayed.status == BrokerStatus.WORKING
    wait_for(lambda: broker.query_order(broker_order_id=delayed.broker_order_id).is_final)
    time.sleep(0.2)
    assert broker.query_order(client_id="c-none").status == BrokerStatus.WORKING


def test_forced_fill_from_the_control_channel(broker_settings):
    broker_settings.set_security(code="US.TSLA", fill_mode="none")
    broker = get_broker()
    order = broker.place_order(
        client_id="c-force", code="US.TSLA", side="BUY", qty=Decimal(5), limit_price=Decimal("251")
    )
    broker_settings.fill(order_id=order.broker_order_id, qty="2", price="250.5")
    part = broker.query_order(broker_order_id=order.broker_order_id)
    assert part.status == BrokerStatus.PARTIALLY_FILLED and part.filled_qty == 2
    broker_settings.fill(order_id=order.broker_order_id)
    done = broker.query_order(broker_order_id=order.broker_order_id)
    assert done.status == BrokerStatus.FILLED and done.filled_qty == 5


def test_rejections_are_broker_rejected(broker_settings, settings):
    from trading.session import reset_broker

    settings.FUTU_PRICE_ADJUST_LIMIT = Decimal(0)  # no adjust_limit: an off-step price fails
    reset_broker()
    broker = get_broker()
    broker_settings.set_security(
        code="US.TSLA", fill_mode="reject", reject_reason="Order rejected: risk control"
    )
    with pytest.raises(BrokerRejected, match="risk control"):
        broker.place_order(
            client_id="c-rej",
            code="US.TSLA",
            side="BUY",
            qty=Decimal(1),
            limit_price=Decimal("251"),
        )
    with pytest.raises(BrokerRejected, match="lot size"):
        broker.place_order(
            client_id="c-lot",
            code="HK.00700",
            side="BUY",
            qty=Decimal(50),
            limit_price=Decimal("382"),
        )
    with pytest.raises(BrokerRejected, match="price step"):
        broker.place_order(
            client_id="c-tick",
            code="HK.00700",
            side="BUY",
            qty=Decimal(100),
            limit_price=Decimal("382.10"),
        )
    with pytest.raises(BrokerRejected, match="sellable"):
        broker.place_order(
            client_id="c-sell",
            code="US.AAPL",
            side="SELL",
            qty=Decimal(1),
            limit_price=Decimal("189"),
        )
    assert broker_settings.orders() == []


def test_accepted_then_failed_order(broker_settings):
    broker_settings.set_security(code="US.NVDA", fill_mode="fail")
    order = get_broker().place_order(
        client_id="c-fail", code="US.NVDA", side="BUY", qty=Decimal(1), limit_price=Decimal("121")
    )
    assert order.status == BrokerStatus.FAILED and order.is_final
    assert "failed" in order.last_error.lower()


def test_sell_after_buy_and_positions_and_funds(broker_settings):
    broker = get_broker()
    before = broker.funds()
    broker.place_order(
        client_id="c-b", code="US.AAPL", side="BUY", qty=Decimal(10), limit_price=Decimal("191")
    )
    positions = {p.code: p for p in broker.positions()}
    assert positions["US.AAPL"].qty == 10 and positions["US.AAPL"].can_sell_qty == 10
    sold = broker.place_order(
        client_id="c-s", code="US.AAPL", side="SELL", qty=Decimal(4), limit_price=Decimal("189")
    )
    assert sold.status == BrokerStatus.FILLED and sold.side == Side.SELL
    assert {p.code: p.qty for p in broker.positions()}["US.AAPL"] == 6
    after = broker.funds()
    # The simulator charges Futu's published US schedule (trading.opend_sim.fees): buy 10
    # commission 0.99 + platform 1.00; sell 4 the same + SEC fee 0.03 + TAF 0.01.
    fee = Decimal("1.99") + Decimal("2.03")
    assert after.cash == before.cash - 10 * Decimal(190) + 4 * Decimal(190) - fee
    assert after.cash_by_currency["USD"] == after.cash


def test_query_by_client_id_and_unknown_orders(broker_settings):
    broker = get_broker()
    placed = broker.place_order(
        client_id="c-q", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal("191")
    )
    assert broker.query_order(client_id="c-q") == placed
    assert broker.query_order(client_id="never-placed") is None
    assert broker.query_order(broker_order_id="123") is None
    with pytest.raises(BrokerRejected):
        broker.cancel_order(broker_order_id="123")


def test_place_is_idempotent_by_remark_while_the_order_is_unfinished(broker_settings):
    broker_settings.set_security(code="US.TSLA", fill_mode="none")
    broker = get_broker()
    first = broker.place_order(
        client_id="c-idem", code="US.TSLA", side="BUY", qty=Decimal(1), limit_price=Decimal("251")
    )
    again = broker.place_order(
        client_id="c-idem", code="US.TSLA", side="BUY", qty=Decimal(1), limit_price=Decimal("251")
    )
    assert again.broker_order_id == first.broker_order_id
    assert len(broker_settings.orders(remark="c-idem")) == 1


def test_order_pushes_reach_the_callback(own_opend: SimHandle):
    seen: list[BrokerOrder] = []
    done = threading.Event()

    def on_update(order: BrokerOrder) -> None:
        seen.append(order)
        if order.is_final:
            done.set()

    own_opend.set_security(code="US.TSLA", fill_mode="none")
    broker = sim_session(own_opend, on_order_update=on_update)
    try:
        order = broker.place_order(
            client_id="c-push",
            code="US.TSLA",
            side="BUY",
            qty=Decimal(2),
            limit_price=Decimal("251"),
        )
        own_opend.fill(order_id=order.broker_order_id)
        assert done.wait(5)
    finally:
        broker.close()
    assert [o.raw_status for o in seen] == ["SUBMITTED", "FILLED_ALL"]
    assert all(o.client_id == "c-push" for o in seen)
    assert seen[-1].filled_qty == 2


def test_dropped_connection_reconnects_and_carries_on(own_opend: SimHandle):
    broker = get_broker()
    broker.place_order(
        client_id="c-d1", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal("191")
    )
    assert broker.connections_made == 1
    assert own_opend.drop_connections() == 2
    time.sleep(0.2)  # the SDK notices the closed sockets
    order = broker.place_order(
        client_id="c-d2", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal("191")
    )
    assert order.status == BrokerStatus.FILLED
    assert broker.connections_made == 2
    assert broker.quote("US.AAPL").price == Decimal("190")


def test_drop_between_calls_is_retried_for_reads(broker_settings):
    broker = get_broker()
    broker.connect()
    broker_settings.drop_connections()
    # No pause: the read may race the SDK noticing the drop; it is retried on a new session.
    assert broker.query_order(client_id="nothing") is None
    assert broker.funds().cash > 0


def test_opend_down_is_broker_unavailable(broker_settings):
    broker = get_broker()
    broker.connect()
    broker_settings.set_accepting(accepting=False)
    try:
        with pytest.raises(BrokerUnavailable):
            broker.quote("US.AAPL")
    finally:
        broker_settings.set_accepting(accepting=True)
    assert broker.quote("US.AAPL").price > 0


def test_nothing_listening_is_broker_unavailable():
    broker = FutuBroker(host="127.0.0.1", port=1, connect_timeout=1)
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        broker.quote("US.AAPL")


@pytest.mark.django_db  # a failed unlock opens an operator alert
def test_real_env_unlocks_with_the_trade_password(opend):
    real = FutuBroker(
        host=opend.host,
        port=opend.port,
        trd_env="REAL",
        acc_id=opend.real_acc_id,
        trade_password="123456",
    )
    wrong = FutuBroker(
        host=opend.host,
        port=opend.port,
        trd_env="REAL",
        acc_id=opend.real_acc_id,
        trade_password="wrong",
    )
    try:
        with pytest.raises(BrokerUnavailable, match="unlock"):
            wrong.connect()
        opend.sim.market.unlocked = False
        order = real.place_order(
            client_id="c-real",
            code="US.AAPL",
            side="BUY",
            qty=Decimal(1),
            limit_price=Decimal("191"),
        )
        assert order.status == BrokerStatus.FILLED and real.acc_id == opend.real_acc_id
    finally:
        real.close()
        wrong.close()


def test_simulator_rate_limit_maps_to_rate_limited(broker_settings):
    broker = get_broker()
    broker.connect()
    broker.limiter.budgets["place"] = broker.limiter.budgets["place"].__class__(
        limit=100, window=30, min_interval=0
    )
    broker_settings.set_security(code="US.TSLA", fill_mode="none")
    with pytest.raises(RateLimited) as err:
        for i in range(16):
            broker.place_order(
                client_id=f"c-burst-{i}",
                code="US.TSLA",
                side="BUY",
                qty=Decimal(1),
                limit_price=Decimal("251"),
            )
    assert err.value.retry_after > 0
    stats = broker_settings.rate_stats(kind="place")
    assert stats["refused"] >= 1


@pytest.mark.parametrize(
    ("price", "spread"),
    [
        ("0.20", "0.001"),
        ("5.00", "0.01"),
        ("15.00", "0.01"),  # 0.02 before HKEX's 2025 reduction
        ("20.00", "0.01"),  # an upper bound belongs to its band
        ("30.00", "0.02"),  # 0.05 before it
        ("60.00", "0.05"),
        ("381.40", "0.2"),
        ("6000", "5"),
    ],
)
def test_snapshot_spread_is_hkexs_table_of_today(broker_settings, price, spread):
    broker_settings.set_security(code="HK.00005", price=price, lot_size=400)
    assert get_broker().quote("HK.00005").tick_size == Decimal(spread)


def test_snapshot_spread_follows_the_table_in_force(broker_settings):
    broker_settings.set_security(code="HK.00005", price="5.00", lot_size=400)
    broker_settings.set_hk_spread_table(table="phase2")  # HK$0.50-10: 0.005
    assert get_broker().quote("HK.00005").tick_size == Decimal("0.005")
    broker_settings.set_security(code="US.PENNY", price="0.5123")
    assert get_broker().quote("US.PENNY").tick_size == Decimal("0.0001")


def _raw_place(opend, price: float, adjust_limit: float, side=None):  # type: ignore[no-untyped-def]
    from futu import RET_OK, OpenSecTradeContext, TrdEnv, TrdMarket, TrdSide

    time.sleep(0.05)  # Futu's 0.02 s between place requests (the raw SDK has no limiter)
    ctx = OpenSecTradeContext(filter_trdmarket=TrdMarket.HK, host=opend.host, port=opend.port)
    try:
        ret, data = ctx.place_order(
            price=price,
            qty=400,
            code="HK.00005",
            trd_side=side or TrdSide.BUY,
            adjust_limit=adjust_limit,
            trd_env=TrdEnv.SIMULATE,
            acc_id=opend.acc_id,
            remark=f"raw-{price}-{adjust_limit}",
        )
    finally:
        ctx.close()
    if ret != RET_OK:
        return str(data)
    (order,) = opend.orders(remark=f"raw-{price}-{adjust_limit}")
    return Decimal(order["price"])


def test_adjust_limit_is_honoured_as_futu_documents_it(broker_settings):
    """The unmodified SDK's place_order(adjust_limit=...): an off-step price moves to the
    nearest valid one in the sign's direction, within |adjust_limit| of the price;
    without it, or beyond it, the order is refused for its price step."""
    from futu import TrdSide

    broker_settings.set_security(code="HK.00005", price="50.00", lot_size=400, fill_mode="none")
    assert "price step" in _raw_place(broker_settings, 50.24, 0)
    assert _raw_place(broker_settings, 50.24, 0.002) == Decimal("50.25")
    assert _raw_place(broker_settings, 50.22, -0.002) == Decimal("50.20")
    assert "price step" in _raw_place(broker_settings, 50.24, 0.0001)  # 0.01 > 0.01%
    assert _raw_place(broker_settings, 49.98, 0.002) == Decimal("49.98")  # valid: unchanged
    broker_settings.set_position(code="HK.00005", qty="4000")
    assert _raw_place(broker_settings, 50.03, -0.01, TrdSide.SELL) == Decimal("50.00")


@pytest.mark.django_db(transaction=True)
def test_a_limit_across_a_band_bound_is_placed_through_adjust_limit(broker_settings, settings):
    """Bronco rounds on the snapshot's spread (0.02 at 49.98); 49.98 x 1.005 = 50.2299 ->
    50.24, which is in the 50-100 band (0.05): the adapter's adjust_limit makes OpenD place it
    at 50.25 instead of refusing it. With adjust_limit off, the same order is refused."""
    from trading import pricing, services

    broker_settings.set_security(code="HK.00005", price="49.98", lot_size=400, fill_mode="none")
    quote = services.broker_quote(code="HK.00005")
    limit = pricing.buy_limit_price(quote, Decimal("0.005"))
    assert (quote.tick_size, limit) == (Decimal("0.02"), Decimal("50.24"))
    state = services.broker_order_submit(
        client_id="adj-1", code="HK.00005", side="BUY", qty=Decimal(400), limit_price=limit
    )
    assert state.order.price == Decimal("50.25") and state.status == BrokerStatus.WORKING
    from trading.session import reset_broker

    settings.FUTU_PRICE_ADJUST_LIMIT = Decimal(0)
    reset_broker()
    with pytest.raises(BrokerRejected, match="price step"):
        services.broker_order_submit(
            client_id="adj-2", code="HK.00005", side="BUY", qty=Decimal(400), limit_price=limit
        )
