"""Netting cycles against the fake broker and the fake settlement sender (PostgreSQL and
Redis only): buys only, sells only, crossed with a net, fully crossed, partial fills carried
over, cancels before and after the first cycle, a HK deposit far below one lot, inventory
at its cap and empty. Every case checks conservation to the base unit."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.models import Allocation, Cycle, CycleStatus, HouseInventory, Order, OrderStatus
from orders.netting import cycles
from orders.pipeline import order_settle, order_validate
from tests.factories import CycleFactory, OrderFactory
from trading.models import BrokerOrderRecord

pytestmark = pytest.mark.django_db(transaction=True)

SHARE = 10**18
USDT = 10**6


@pytest.fixture(autouse=True)
def _netting(settings, fake_broker, fake_sender):
    settings.NETTING_FEE_RATE = Decimal("0.001")
    settings.NETTING_FEE_FLAT_USDT = Decimal(0)
    settings.NETTING_INVENTORY_CAP_LOTS = 2
    settings.NETTING_CYCLE_TIMEOUT_SECONDS = 20
    fake_broker.set_quote("US.AAPL", "180", lot_size=1)
    fake_broker.set_quote("HK.00700", "380", lot_size=100)
    # Shares the account holds from earlier deposits (what redeemed tokens stand for).
    fake_broker.set_position("US.AAPL", 1000, cost_price="150")
    fake_broker.set_position("HK.00700", 10000, cost_price="300")


def _deposit(usdt, symbol="AAPL", code="US.AAPL", **kw):
    order = OrderFactory(usdt_amount=usdt * USDT, symbol=symbol, stock_code=code, **kw)
    assert order_validate(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.booked_at is not None
    return order


def _redeem(shares_units, symbol="AAPL", code="US.AAPL", **kw):
    order = OrderFactory(
        order_type="SELL",
        usdt_amount=0,
        token_amount=shares_units,
        symbol=symbol,
        stock_code=code,
        **kw,
    )
    assert order_validate(order_id=order.pk) is None
    return order


def _run_cycle(fake_broker, symbol="AAPL", *, fill=True, price=None, qty=None):
    """Open, place and (optionally) fill a cycle; returns it allocated or placed."""
    nxt = cycles.cycle_open(symbol=symbol)
    if nxt is None:
        return Cycle.objects.filter(symbol=symbol).order_by("-pk").first()
    assert nxt.step == "place"
    nxt = cycles.cycle_place(cycle_id=nxt.cycle_id)
    assert nxt.step == "poll"
    cycle = Cycle.objects.get(pk=nxt.cycle_id)
    if fill:
        fake_broker.fill(cycle.futu_order_id, qty=qty, price=price)
        if qty is not None:  # a partial fill, then the broker order ends (day end, cancel)
            fake_broker.cancel(cycle.futu_order_id)
    else:
        fake_broker.cancel(cycle.futu_order_id)
    assert cycles.cycle_poll(cycle_id=cycle.pk) is None
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.ALLOCATED
    return cycle


def _settle_all():
    for order in Order.objects.filter(status=OrderStatus.SETTLING):
        assert order_settle(order_id=order.pk) is None


def _check_conservation(symbol="AAPL"):
    """Per deposit, per redeem, per cycle and per symbol, to the base unit."""
    for order in Order.objects.filter(
        symbol=symbol, order_type="BUY", status__in=["EXECUTED", "CANCELED", "FAILED"]
    ):
        assert (
            order.cost_usdt + order.fees_usdt + order.refund_usdt + order.manual_refund_usdt
            == order.usdt_amount
        )
        assert order.tokens_minted == sum(a.token_units for a in order.allocations.all())
    for order in Order.objects.filter(symbol=symbol, order_type="SELL", status="EXECUTED"):
        assert order.payout_usdt == order.cost_usdt - order.fees_usdt
        assert (
            sum(a.token_units for a in order.allocations.all()) + order.tokens_returned
            == order.token_amount
        )
    for cycle in Cycle.objects.filter(symbol=symbol, status=CycleStatus.ALLOCATED):
        to_buyers = sum(a.token_units for a in cycle.allocations.filter(order_type="BUY"))
        from_sellers = sum(a.token_units for a in cycle.allocations.filter(order_type="SELL"))
        assert to_buyers - from_sellers == (
            int(cycle.filled_units) + int(cycle.inventory_before) - int(cycle.inventory_after)
        )
    # Per symbol: what the broker bought, less what it sold = tokens outstanding + inventory.
    broker_net = sum(int(c.filled_units) for c in Cycle.objects.filter(symbol=symbol))
    minted = sum(
        int(o.tokens_minted) for o in Order.objects.filter(symbol=symbol, order_type="BUY")
    )
    burned = sum(
        a.token_units for a in Allocation.objects.filter(cycle__symbol=symbol, order_type="SELL")
    )
    inventory = HouseInventory.objects.filter(symbol=symbol).first()
    held = int(inventory.token_units) if inventory else 0
    assert broker_net == minted - burned + held


def test_buys_only_become_one_broker_order_and_fractional_tokens(fake_broker, fake_sender):
    orders = [_deposit(20), _deposit(500), _deposit(1000)]
    cycle = _run_cycle(fake_broker, price="180.10")
    assert len(fake_broker.placed) == 1  # three deposits, one broker order
    assert fake_broker.placed[0].qty == 9  # 1,518.48 USDT of demand at 180: 8.4 shares -> 9
    assert cycle.price == Decimal("180.10")
    _settle_all()
    for order in orders:
        order.refresh_from_db()
        assert order.status == OrderStatus.EXECUTED
        assert order.avg_fill_price == Decimal("180.10")  # one price for everyone
    small = Order.objects.get(pk=orders[0].pk)
    assert 0 < small.tokens_minted < SHARE // 5  # about 0.11 share
    assert small.refund_usdt < 10
    _check_conservation()
    assert len(fake_sender.paid) == 3


def test_sells_only_go_into_inventory_below_its_cap(fake_broker):
    _redeem(SHARE // 2)
    cycle = _run_cycle(fake_broker)
    assert fake_broker.placed == []  # half a share: inventory takes it, no broker request
    assert cycle.price == Decimal(180) and cycle.inventory_after == SHARE // 2
    _settle_all()
    _check_conservation()


def test_sells_above_the_inventory_cap_are_sold_in_whole_lots(fake_broker):
    _redeem(5 * SHARE + SHARE // 4)
    _run_cycle(fake_broker, price="179.90")
    assert fake_broker.placed[0].qty == 4  # 5.25 to hold, cap 2: sell 4, keep 1.25
    assert HouseInventory.objects.get(symbol="AAPL").token_units == SHARE + SHARE // 4
    _settle_all()
    _check_conservation()


def test_crossed_buys_and_sells_send_only_the_net(fake_broker):
    _deposit(1000)
    _redeem(3 * SHARE)
    _run_cycle(fake_broker, price="180.00")
    assert fake_broker.placed[0].qty == 3  # 5.5 shares of demand against 3 from the seller
    _settle_all()
    _check_conservation()


def test_fully_crossed_needs_no_broker_request(fake_broker):
    _deposit(360)  # about 1.998 shares after the fee
    _redeem(2 * SHARE)
    cycle = _run_cycle(fake_broker)
    assert fake_broker.placed == [] and fake_broker.calls_to("place_order") == []
    assert cycle.price == Decimal(180) and cycle.filled_units == 0
    _settle_all()
    _check_conservation()


def test_a_partial_fill_is_carried_over_to_the_next_cycle(fake_broker):
    order = _deposit(1800)  # about 9.99 shares
    first = _run_cycle(fake_broker, price="180", qty=4)  # 4 of 10 shares, then the day ends
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.cycle is None
    assert order.tokens_minted == 4 * SHARE
    assert first.inventory_after == 0
    _run_cycle(fake_broker, price="180.20")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING
    assert order.allocations.count() == 2
    _settle_all()
    _check_conservation()
    assert len(fake_broker.placed) == 2


def test_a_cancel_before_the_first_cycle_refunds_everything_without_the_broker(fake_broker):
    order = _deposit(500)
    Order.objects.filter(pk=order.pk).update(cancel_requested_at=timezone.now())
    assert cycles.cycle_open(symbol="AAPL") is None
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.outcome == OrderStatus.CANCELED
    assert order.refund_usdt == 500 * USDT
    assert fake_broker.calls_to("place_order") == [] and fake_broker.calls_to("quote") == []
    _settle_all()
    _check_conservation()


def test_a_cancel_after_a_partial_fill_settles_what_filled_at_the_next_cycle(fake_broker):
    order = _deposit(1800)
    _run_cycle(fake_broker, price="180", qty=2)
    Order.objects.filter(pk=order.pk).update(cancel_requested_at=timezone.now())
    cycles.cycle_open(symbol="AAPL")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.outcome == OrderStatus.EXECUTED
    assert order.tokens_minted == 2 * SHARE
    _settle_all()
    _check_conservation()
    assert len(fake_broker.placed) == 1


def test_past_its_deadline_a_booked_order_settles_what_it_has(fake_broker):
    order = _deposit(500)
    Order.objects.filter(pk=order.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    cycles.cycle_open(symbol="AAPL")
    order.refresh_from_db()
    assert order.outcome == OrderStatus.FAILED and order.refund_usdt == 500 * USDT


def test_a_hk_deposit_far_below_one_lot_buys_a_fraction(fake_broker):
    """100 USDT of Tencent: a board lot is 100 shares (about 4,900 USDT)."""
    order = _deposit(100, symbol="TCEHY", code="HK.00700")
    _run_cycle(fake_broker, "TCEHY", price="380.20")
    assert fake_broker.placed[0].qty == 100
    order.refresh_from_db()
    assert 0 < order.tokens_minted < 3 * SHARE  # about 2 shares of 100
    assert HouseInventory.objects.get(symbol="TCEHY").token_units > 97 * SHARE
    # The next small deposit comes out of inventory: no broker request.
    _deposit(100, symbol="TCEHY", code="HK.00700")
    _run_cycle(fake_broker, "TCEHY")
    assert len(fake_broker.placed) == 1
    _settle_all()
    _check_conservation("TCEHY")


def test_inventory_empty_and_at_its_cap(fake_broker):
    assert not HouseInventory.objects.exists()
    _deposit(90)  # half a share: one share bought, half into inventory
    _run_cycle(fake_broker, price="180")
    assert HouseInventory.objects.get(symbol="AAPL").token_units > 0
    HouseInventory.objects.filter(symbol="AAPL").update(token_units=2 * SHARE)  # at its cap
    _redeem(SHARE)
    _run_cycle(fake_broker, price="180")
    assert fake_broker.placed[-1].qty == 1 and fake_broker.placed[-1].side == "SELL"
    assert HouseInventory.objects.get(symbol="AAPL").token_units == 2 * SHARE


def test_symbols_waiting_longest_open_first(fake_broker):
    later = _deposit(100)
    first = _deposit(100, symbol="TCEHY", code="HK.00700")
    Order.objects.filter(pk=first.pk).update(booked_at=later.booked_at - timedelta(seconds=5))
    assert cycles.symbols_waiting() == ["TCEHY", "AAPL"]


@pytest.mark.parametrize(("fill", "crossed"), [("179.40", False), ("179.50", True)])
def test_a_net_buy_filled_below_a_sellers_bound_does_not_cross_that_seller(
    fake_broker, fill, crossed
):
    """A redeem bounded at 179.50 joins a cycle quoted at 180 whose net is a buy. The
    broker's buy limit protects only the buyers: filled at 179.40, every participant would
    trade at 179.40, so the seller takes nothing from the cycle and waits for the price
    (before, it was sold below its bound and the vault refused the settlement); filled at
    its bound, it is crossed."""
    buyer = _deposit(1000)  # about 5.5 shares
    seller = _redeem(2 * SHARE, price_bound=179_500_000)
    cycle = _run_cycle(fake_broker, price=fill)
    assert fake_broker.placed[0].qty == 4  # the plan counted the seller's 2 shares
    seller.refresh_from_db()
    buyer.refresh_from_db()
    if crossed:
        assert seller.status == OrderStatus.SETTLING
        assert seller.allocations.get().token_units == 2 * SHARE
        assert buyer.tokens_minted > 4 * SHARE
        assert 0 < cycle.inventory_after < SHARE  # the rest of the fourth share
    else:
        assert seller.status == OrderStatus.PENDING and seller.cycle is None
        assert seller.waiting_for == "price"
        assert not seller.allocations.exists()
        # The buyer shares only what the broker bought; the rest of its USDT waits.
        assert buyer.tokens_minted == 4 * SHARE and buyer.status == OrderStatus.PENDING
        assert cycle.inventory_after == 0
    _settle_all()
    _check_conservation()


def test_a_net_sell_filled_above_a_buyers_bound_does_not_cross_that_buyer(fake_broker):
    """Symmetric: a deposit bounded at 180.50 in a cycle quoted at 180 whose net is a sell
    filled at 181 takes nothing and waits for the price; the sellers are still sold in full
    and what the buyer would have taken stays in inventory."""
    buyer = _deposit(360, price_bound=180_500_000)
    seller = _redeem(10 * SHARE)
    cycle = _run_cycle(fake_broker, price="181")
    assert fake_broker.placed[0].side == "SELL"
    buyer.refresh_from_db()
    seller.refresh_from_db()
    assert buyer.status == OrderStatus.PENDING and buyer.waiting_for == "price"
    assert not buyer.allocations.exists() and buyer.tokens_minted == 0
    assert seller.status == OrderStatus.SETTLING
    assert cycle.inventory_after == 10 * SHARE - fake_broker.placed[0].qty * SHARE
    _settle_all()
    _check_conservation()


def test_a_closed_market_is_quoted_once_until_the_calendars_next_open(fake_broker, settings):
    """A cycle whose quote finds the market closed does not ask again at the next beats: the
    skip lasts until the next traded session opens by the exchange calendar (or
    TRADING_MARKET_RECHECK_SECONDS when the calendar says a session is under way). Orders
    arriving meanwhile are marked waiting for the market without a quote."""
    from trading import market_wait

    fake_broker.set_quote("US.AAPL", "180", market_open=False, market_state="CLOSED")
    first = _deposit(500)
    for _ in range(5):
        assert cycles.cycle_open(symbol="AAPL") is None
    later = _deposit(300)
    assert cycles.cycle_open(symbol="AAPL") is None
    assert len(fake_broker.calls_to("quote")) == 1  # six beats, one quote
    for order in (first, later):
        order.refresh_from_db()
        assert order.status == OrderStatus.PENDING and order.waiting_for == "market"
    assert market_wait.market_closed_state("US.AAPL") == "CLOSED"
    until = market_wait.market_reopens_at("US.AAPL", timezone.now())
    ttl = market_wait._redis().pttl("bronco:market_closed:US.AAPL") / 1000
    assert 0 < ttl <= (until - timezone.now()).total_seconds() + 1

    # When the skip ends (here: cleared, as a moved clock does), the next beat asks again.
    fake_broker.set_quote("US.AAPL", "180")
    assert market_wait.market_closed_clear() == 1
    assert cycles.cycle_open(symbol="AAPL") is not None
    assert len(fake_broker.calls_to("quote")) == 2


def test_a_clock_that_jumps_while_a_cycle_quotes_leaves_no_skip_behind(fake_broker, monkeypatch):
    """The quote said closed, but the clock jumped (skips cleared) before the cycle noted
    it: the note is dropped, or the skip would last until the next real open (hours at
    night: `run_stack`'s Saturday-then-Monday case stalled so). The next beat asks again."""
    from trading import market_wait

    fake_broker.set_quote("US.AAPL", "180", market_open=False, market_state="CLOSED")
    real_quote = fake_broker.quote

    def quote_then_clock_jumps(*args, **kwargs):  # type: ignore[no-untyped-def]
        answer = real_quote(*args, **kwargs)
        fake_broker.set_quote("US.AAPL", "180")  # Monday's open
        market_wait.market_closed_clear()  # what the simulator's set_clock does
        return answer

    monkeypatch.setattr(fake_broker, "quote", quote_then_clock_jumps)
    _deposit(500)
    assert cycles.cycle_open(symbol="AAPL") is None  # its quote said closed
    assert market_wait.market_closed_state("US.AAPL") is None  # but no skip was noted
    monkeypatch.setattr(fake_broker, "quote", real_quote)
    assert cycles.cycle_open(symbol="AAPL") is not None
    assert len(fake_broker.calls_to("quote")) == 2


@pytest.mark.parametrize(
    ("at", "sessions", "reopens"),
    [
        # Saturday 12:00 ET: Monday's open of the sessions traded.
        ("2026-12-05T17:00:00+00:00", "REGULAR", "2026-12-07T14:30:00+00:00"),
        ("2026-12-05T17:00:00+00:00", "REGULAR,PRE_MARKET", "2026-12-07T09:00:00+00:00"),
        # Thanksgiving: the Friday half day's open.
        ("2026-11-26T16:00:00+00:00", "REGULAR", "2026-11-27T14:30:00+00:00"),
        # Tuesday 11:00 ET, a regular session by the calendar, OpenD said closed: a minute.
        ("2026-12-08T16:00:00+00:00", "REGULAR", "2026-12-08T16:01:00+00:00"),
    ],
)
def test_when_a_closed_market_is_asked_again(settings, at, sessions, reopens):
    from datetime import datetime

    from trading.market_wait import market_reopens_at

    settings.TRADING_SESSIONS = {"US": sessions, "HK": ""}
    settings.TRADING_MARKET_RECHECK_SECONDS = 60
    got = market_reopens_at("US.AAPL", datetime.fromisoformat(at))
    assert got == datetime.fromisoformat(reopens)


def test_an_order_about_to_expire_joins_no_cycle_and_is_refunded_at_its_expiry(
    fake_broker, settings
):
    """Within NETTING_EXPIRY_GUARD_SECONDS of its expiry an order joins no cycle: its trade
    could not be settled before the vault's expiry (the vault then takes only a full
    refund). It waits, and its expiry refunds it in full with no broker request."""
    settings.NETTING_EXPIRY_GUARD_SECONDS = 300
    soon = _deposit(500, expires_at=timezone.now() + timedelta(seconds=200))
    later = _deposit(500, expires_at=timezone.now() + timedelta(seconds=400))
    _run_cycle(fake_broker)
    soon.refresh_from_db()
    later.refresh_from_db()
    assert soon.status == OrderStatus.PENDING and not soon.allocations.exists()
    assert later.status == OrderStatus.SETTLING and later.tokens_minted > 0
    assert fake_broker.placed[0].qty == 3  # later's 2.8 shares only

    Order.objects.filter(pk=soon.pk).update(expires_at=timezone.now())
    assert cycles.cycle_open(symbol="AAPL") is None
    soon.refresh_from_db()
    assert soon.status == OrderStatus.SETTLING and soon.refund_usdt == 500 * USDT
    _settle_all()
    _check_conservation()


def test_orders_that_joined_during_a_cycle_get_the_next_one_without_a_beat(
    fake_broker, monkeypatch
):
    """A cycle_open that ends without a broker step (allocated at once, or nothing it could
    do) kicks its symbol again when orders that wait for nothing are in the book and no
    cycle is in flight: they joined while it was open. A stack without beat (the main
    tests') stalled on them; with beat they waited up to a beat."""
    from orders import tasks

    fake_broker.set_quote("US.AAPL", "180")
    _deposit(500)
    assert cycles.book_has_newcomers("AAPL")
    nxt = cycles.cycle_open(symbol="AAPL")  # takes it; its broker step is next
    assert nxt is not None
    _deposit(300)  # joins while the cycle is in flight
    assert not cycles.book_has_newcomers("AAPL")  # the cycle's own end will take it
    Cycle.objects.filter(pk=nxt.cycle_id).update(status=CycleStatus.ALLOCATED)
    assert cycles.book_has_newcomers("AAPL")

    kicks: list[str] = []
    monkeypatch.setattr(tasks, "cycle_kick", kicks.append)
    monkeypatch.setattr(tasks.cycles, "cycle_open", lambda *, symbol: None)
    tasks.cycle_open("AAPL")
    assert kicks == ["AAPL"]

    # Orders waiting for their market are no newcomers: no kick (the beat looks again).
    Order.objects.filter(symbol="AAPL", cycle__isnull=True).update(waiting_for="market")
    tasks.cycle_open("AAPL")
    assert kicks == ["AAPL"]


def test_a_symbol_with_a_cycle_in_flight_is_not_kicked_and_its_open_waits_on_nothing(
    fake_broker, monkeypatch
):
    """While a cycle of a symbol is in flight, a kick (one per booked order) neither
    reserves a place slot nor enqueues a cycle_open: the cycle's end kicks the next. A
    cycle_open that finds one in flight anyway returns at once, without a quote. An order
    that has to leave the book (here a cancel) is not held back by the cycle: the kick goes
    through, and the open takes it out and stops there."""
    import redis as redis_lib
    from django.conf import settings as django_settings

    from orders import tasks
    from orders.netting.slots import SLOT_KEY

    client = redis_lib.Redis.from_url(django_settings.REDIS_URL)
    client.delete(SLOT_KEY, "bronco:cycle-open:AAPL")
    sent: list[str] = []
    monkeypatch.setattr(tasks.cycle_open, "apply_async", lambda args, **kw: sent.append(args[0]))
    _deposit(500)
    nxt = cycles.cycle_open(symbol="AAPL")
    assert nxt is not None and nxt.step == "place"
    late = _deposit(300)  # booked while the cycle is in flight
    assert tasks.cycle_kick("AAPL") is False
    assert sent == [] and client.get(SLOT_KEY) is None  # no slot spent, nothing queued

    quotes = len(fake_broker.calls_to("quote"))
    assert cycles.cycle_open(symbol="AAPL") is None
    assert len(fake_broker.calls_to("quote")) == quotes
    assert Cycle.objects.filter(symbol="AAPL").count() == 1

    # A cancel in the book during the cycle: kicked at once, and the open takes it out.
    cancelled = _deposit(200)
    assert cycles.symbols_in_flight_with_leavers() == []
    Order.objects.filter(pk=cancelled.pk).update(cancel_requested_at=timezone.now())
    assert cycles.symbols_in_flight_with_leavers() == ["AAPL"]  # the beat kicks it too
    assert tasks.cycle_kick("AAPL") is True and sent == ["AAPL"]
    client.delete("bronco:cycle-open:AAPL")
    assert cycles.cycle_open(symbol="AAPL") is None
    cancelled.refresh_from_db()
    assert cancelled.status == OrderStatus.SETTLING and cancelled.refund_usdt == 200 * USDT
    assert Cycle.objects.filter(symbol="AAPL").count() == 1  # and no second cycle
    assert tasks.cycle_kick("AAPL") is False  # nothing leaves now: no kick again

    # One past its deadline leaves too (after a quote says the market is open).
    overdue = _deposit(250)
    Order.objects.filter(pk=overdue.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert tasks.cycle_kick("AAPL") is True
    client.delete("bronco:cycle-open:AAPL")
    assert cycles.cycle_open(symbol="AAPL") is None
    overdue.refresh_from_db()
    assert overdue.status == OrderStatus.SETTLING and overdue.refund_usdt == 250 * USDT
    assert Cycle.objects.filter(symbol="AAPL").count() == 1
    sent.clear()

    # The cycle's own end (its poll task) kicks the next, which takes the late deposit.
    cycles.cycle_place(cycle_id=nxt.cycle_id)
    fake_broker.fill(Cycle.objects.get(pk=nxt.cycle_id).futu_order_id)
    monkeypatch.setattr(tasks.cycle_place, "apply_async", lambda *a, **kw: None)
    monkeypatch.setattr(tasks.cycle_poll, "apply_async", lambda *a, **kw: None)
    tasks.cycle_poll(nxt.cycle_id)
    assert Cycle.objects.get(pk=nxt.cycle_id).status == CycleStatus.ALLOCATED
    assert sent == ["AAPL"] and client.get(SLOT_KEY) is not None
    client.delete("bronco:cycle-open:AAPL")
    following = cycles.cycle_open(symbol="AAPL")
    assert following is not None
    late.refresh_from_db()
    assert late.cycle_id == following.cycle_id


# --- covered cycles and the buy-ahead ------------------------------------------------------


def _stock(shares, symbol="AAPL", code="US.AAPL"):
    """House inventory of `shares` bought by an earlier cycle's broker order (so the
    per-symbol conservation holds)."""
    units = shares * SHARE
    CycleFactory(
        symbol=symbol,
        stock_code=code,
        status=CycleStatus.ALLOCATED,
        broker_units=units,
        filled_units=units,
        inventory_after=units,
    )
    HouseInventory.objects.update_or_create(symbol=symbol, defaults={"token_units": units})


def test_a_book_the_inventory_covers_trades_at_once_without_a_place_request(fake_broker):
    """A covered cycle: AAPL's inventory holds 3 shares and its book wants about 1.6; it
    trades from inventory at the quote, and TCEHY's covered book too, on one snapshot for
    both. No place request, no place slot."""
    _stock(3)
    _stock(50, "TCEHY", "HK.00700")
    small = [_deposit(100), _deposit(200)]
    hk = _deposit(100, symbol="TCEHY", code="HK.00700")
    assert cycles.cycles_open_covered() == 2
    assert fake_broker.placed == []
    assert [c.kwargs["codes"] for c in fake_broker.calls_to("quotes")] == [
        ["US.AAPL", "HK.00700"]  # one snapshot, the longest waiting first
    ]
    assert fake_broker.calls_to("quote") == []
    for order in [*small, hk]:
        order.refresh_from_db()
        assert order.status == OrderStatus.SETTLING and order.tokens_minted > 0
        assert order.avg_fill_price in (Decimal(180), Decimal(380))
    cycle = Cycle.objects.filter(symbol="AAPL").latest("pk")
    assert cycle.broker_units == 0 and cycle.futu_order_id == "" and cycle.price == 180
    _settle_all()
    _check_conservation()
    _check_conservation("TCEHY")


def test_a_book_the_inventory_does_not_cover_waits_for_its_place_slot_untouched(fake_broker):
    _stock(1)
    order = _deposit(500)  # about 2.8 shares against 1 held
    assert cycles.cycles_open_covered() == 0
    assert Cycle.objects.count() == 1 and fake_broker.placed == []
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.cycle_id is None
    assert cycles.book("AAPL").filter(pk=order.pk).exists()
    # Its place slot's cycle takes it as always.
    _run_cycle(fake_broker, price="180")
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING


def test_no_inventory_no_snapshot(fake_broker, settings):
    _deposit(100)
    assert cycles.cycles_open_covered() == 0
    assert fake_broker.calls_to("quotes") == []
    _stock(3)
    settings.NETTING_COVERED_CYCLES = False
    assert cycles.cycles_open_covered() == 0
    assert fake_broker.calls_to("quotes") == []


def test_the_buy_ahead_keeps_the_recent_net_demand_of_its_seconds_within_the_cap(
    fake_broker, settings
):
    """30 shares of net demand over the last 30 s: 1 share a second; 10 s ahead keeps 10
    shares. The slot cycle buys them with its own book's, and the next deposits are covered
    without a place request. A cap in USDT bounds it."""
    settings.NETTING_BUY_AHEAD_SECONDS = 10
    settings.NETTING_BUY_AHEAD_WINDOW_SECONDS = 30
    settings.NETTING_INVENTORY_CAP_USDT = Decimal(10_000)  # 55 shares at 180
    CycleFactory(  # its orders' bounds left them out: demand and supply counted, no trade
        status=CycleStatus.ALLOCATED,
        demand_units=40 * SHARE,
        supply_units=10 * SHARE,
        inventory_before=0,
        inventory_after=0,
    )
    assert cycles.buy_ahead_units("AAPL") == 10 * SHARE
    assert cycles.buy_ahead_units("TSLA") == 0
    _deposit(180)  # just under a share after the fee
    cycle = _run_cycle(fake_broker, price="180")
    assert fake_broker.placed[-1].qty == 11
    assert 10 * SHARE <= cycle.inventory_after < 11 * SHARE
    later = _deposit(500)
    assert cycles.cycles_open_covered() == 1
    assert len(fake_broker.placed) == 1
    later.refresh_from_db()
    assert later.status == OrderStatus.SETTLING and later.avg_fill_price == 180

    # A lower cap (5 shares' worth; the target is 4): the inventory left after this
    # cycle's deposit, about 6.2 shares, is above it, and whole lots are sold down to it.
    settings.NETTING_INVENTORY_CAP_USDT = Decimal(900)
    _deposit(180)
    cycle = _run_cycle(fake_broker, price="180")
    assert (fake_broker.placed[-1].side, fake_broker.placed[-1].qty) == ("SELL", 2)
    assert 4 * SHARE <= cycle.inventory_after <= 5 * SHARE
    settings.NETTING_BUY_AHEAD_SECONDS = 0
    assert cycles.buy_ahead_units("AAPL") == 0
    _settle_all()
    _check_conservation()


def test_the_inventory_cap_is_the_larger_of_its_lots_and_its_usdt(settings):
    quoted = cycles.Pricing(Decimal(180), Decimal(1))
    settings.NETTING_INVENTORY_CAP_LOTS = 2
    settings.NETTING_INVENTORY_CAP_USDT = Decimal(0)
    assert cycles.inventory_cap_units(quoted, 1) == 2 * SHARE
    settings.NETTING_INVENTORY_CAP_USDT = Decimal(1000)  # 5.55 shares: 5 whole lots
    assert cycles.inventory_cap_units(quoted, 1) == 5 * SHARE
    assert cycles.inventory_cap_units(quoted, 100) == 200 * SHARE  # lots win


def test_the_covered_cycles_of_one_beat_settle_in_one_batch(fake_broker, settings):
    """Each allocation publishes its orders' settle group; the covered cycles of one beat
    publish theirs together, so two symbols' orders go out in one settlement batch."""
    import base64

    import redis as redis_lib

    client = redis_lib.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("chain")
    _stock(2)  # at its cap (2 lots): 0.55 share taken leaves it under
    _stock(50, "TCEHY", "HK.00700")
    ids = [_deposit(100).pk, _deposit(100, symbol="TCEHY", code="HK.00700").pk]
    assert cycles.cycles_open_covered() == 2
    groups = []
    for raw in client.lrange("chain", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "orders.tasks.orders_settle_group"
        groups.append(json.loads(base64.b64decode(message["body"]))[0][0])
    client.delete("chain")
    assert [sorted(pk for pk, _ in group) for group in groups] == [sorted(ids)]


def test_outside_the_regular_session_a_covered_book_waits_for_its_slot(fake_broker):
    """Pre-market the snapshot's price is still the last regular session's: only a broker
    order prices the book, at its place slot."""
    _stock(2)
    fake_broker.set_quote("US.AAPL", "180", market_state="PRE_MARKET_BEGIN")
    order = _deposit(100)
    assert cycles.cycles_open_covered() == 0
    assert Cycle.objects.count() == 1  # the stock's own
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.cycle_id is None


def test_one_symbols_failure_leaves_the_others_covered(fake_broker, monkeypatch):
    from trading import pricing

    _stock(2)
    _stock(50, "TCEHY", "HK.00700")
    fx_rate = pricing.fx_rate

    def broken_for_hk(code):
        if code.startswith("HK."):
            raise ValueError("no HKD rate")
        return fx_rate(code)

    monkeypatch.setattr(pricing, "fx_rate", broken_for_hk)
    hk = _deposit(100, symbol="TCEHY", code="HK.00700")  # waits longest: tried first
    us = _deposit(100)
    assert cycles.cycles_open_covered() == 1
    hk.refresh_from_db()
    us.refresh_from_db()
    assert hk.status == OrderStatus.PENDING and us.status == OrderStatus.SETTLING


def test_a_buy_ahead_the_account_cannot_pay_ends_the_cycle_and_pauses(fake_broker, settings):
    """The buy-ahead made the order larger than the buying power: the cycle ends with what
    crossing and inventory give (nothing here: the deposit waits), the symbol's buy-ahead
    pauses, and the next cycle asks only what its book needs."""
    settings.NETTING_BUY_AHEAD_SECONDS = 10
    settings.NETTING_INVENTORY_CAP_USDT = Decimal(10_000)
    CycleFactory(
        status=CycleStatus.ALLOCATED,
        demand_units=40 * SHARE,
        supply_units=10 * SHARE,
        inventory_before=0,
        inventory_after=0,
    )
    fake_broker.set_cash("USD", 1_000)  # 5 shares at 180, not 11
    order = _deposit(180)
    nxt = cycles.cycle_open(symbol="AAPL")
    cycle = Cycle.objects.get(pk=nxt.cycle_id)
    assert cycle.broker_units == 11 * SHARE
    assert cycles.cycle_place(cycle_id=cycle.pk) is None
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.ALLOCATED and "buying power" in cycle.last_error
    assert fake_broker.placed == []
    assert cycles.buy_ahead_units("AAPL") == 0
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.tokens_minted == 0
    # Its client id is closed: a late retry of its place step (a re-drive) places nothing,
    # even with the cash there.
    fake_broker.set_cash("USD", 10_000_000)
    assert cycles.cycle_place(cycle_id=cycle.pk) is None
    assert fake_broker.placed == []
    record = BrokerOrderRecord.objects.get(client_id=cycle.client_id)
    assert record.status == BrokerOrderRecord.ABANDONED
    fake_broker.set_cash("USD", 1_000)
    cycle = _run_cycle(fake_broker, price="180")
    assert fake_broker.placed[-1].qty == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING
    _settle_all()
    _check_conservation()


def test_the_scheduling_beat_sends_one_covered_pass_at_a_time(fake_broker, settings):
    import redis as redis_lib

    from orders import tasks

    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    queue = redis_lib.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(tasks._COVERED_KEY)
    queue.delete("broker")

    def covered_passes():
        return [
            json.loads(raw)["headers"]["task"]
            for raw in queue.lrange("broker", 0, -1)
            if json.loads(raw)["headers"]["task"] == "orders.tasks.cycles_open_covered"
        ]

    tasks.cycles_schedule()
    tasks.cycles_schedule()
    assert len(covered_passes()) == 1
    token = client.get(tasks._COVERED_KEY).decode()
    tasks.cycles_open_covered("another pass's token")
    assert client.get(tasks._COVERED_KEY).decode() == token  # not its key to free
    tasks.cycles_open_covered(token)
    assert client.get(tasks._COVERED_KEY) is None
    settings.NETTING_COVERED_CYCLES = False
    queue.delete("broker")
    tasks.cycles_schedule()
    assert covered_passes() == [] and client.get(tasks._COVERED_KEY) is None
