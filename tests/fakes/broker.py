"""An in-memory broker: `trading.broker.Broker` (both `QuoteSource` and `ExecutionVenue`)
without OpenD, for tests that exercise Bronco around the broker rather than the adapter.

Deterministic: order ids count up from 1, timestamps come from a logical clock, nothing
fills or changes unless the test says so (or `fill_crossing_orders` is on). Scriptable:

    fake.set_quote("US.AAPL", "190")                  # price, lot, tick, market open
    fake.reject_next_place("risk control")            # or rate_limit_next_place(2.0),
    fake.unavailable_next_place(after_accept=True)    # ...accepted, then the answer lost
    fake.fill(order.broker_order_id, qty=2, price="189.5")   # partly; no qty = the rest
    fake.cancel(order_id) / fake.fail(order_id, "...") / fake.lose(order_id)
    fake.roll_day()                                   # today's orders become past days'

and it records every call (`calls`, `calls_to(name)`) and every order it actually created
(`placed`), so a test can assert how many placements reached the broker.

Semantics copied from the Futu adapter, because callers rely on them:
- The open list (`list_orders`, and the look-up `find_by_remark` makes without history)
  holds *unfinished* orders only, as Futu's `order_list_query` does; a finished order
  (filled, cancelled, failed) is found only with `include_history=True` or `since=...`
  (Futu's `history_order_list_query`). `place_order` looks the client id up in the open
  list only (unless `lookup=False`): a second placement for a client id whose order already
  finished is not prevented (as at Futu: that is why `trading.services.broker_order_submit`
  asks the history on every retry).
- Fills are deals (`deals`); `reverse_fills` and `change_deal` script the exchange's
  corrections after the fact. Fees come from `order_fee` (zero unless `set_fee`).
- `max_buy_qty` is the cash (less what working buys hold) over the price, in whole lots.
- Unfinished DAY orders are cancelled when the day rolls.
- Every order update (accepted, filled, cancelled, failed) is pushed to `on_order_update`
  on a thread of its own, as the SDK does; the push has been delivered when the call that
  caused it returns. `pushes` keeps every one.
- Cancel is idempotent; an unknown order is BrokerRejected; a final order comes back as is.

Money: Decimal in the security's currency; fills move cash and positions at the fill price
and charge no fees. Select it with the setting
`TRADING_BROKER_FACTORY = "tests.fakes.broker.FakeBroker"`, or use the `fake_broker` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest

from trading.broker import (
    BrokerOrder,
    BrokerStatus,
    Deal,
    DealStatus,
    Funds,
    OrderFee,
    OrderUpdateCallback,
    Position,
    Quote,
    Side,
)
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    InsufficientBuyingPower,
    NoQuote,
    RateLimited,
    TradingError,
)
from trading.pricing import currency_of

FAKE_BROKER_FACTORY = "tests.fakes.broker.FakeBroker"

_EPOCH = datetime(2025, 1, 2, 9, 30)
_PUSH_TIMEOUT_SECONDS = 10.0
# Futu's own status names, so `raw_status` reads as it does from the real adapter.
_RAW = {
    (BrokerStatus.WORKING, False): "SUBMITTED",
    (BrokerStatus.PARTIALLY_FILLED, True): "FILLED_PART",
    (BrokerStatus.FILLED, True): "FILLED_ALL",
    (BrokerStatus.CANCELLING, False): "CANCELLING_ALL",
    (BrokerStatus.CANCELLING, True): "CANCELLING_PART",
    (BrokerStatus.CANCELLED, False): "CANCELLED_ALL",
    (BrokerStatus.CANCELLED, True): "CANCELLED_PART",
    (BrokerStatus.FAILED, False): "FAILED",
    (BrokerStatus.FAILED, True): "FAILED",
}


@dataclass(frozen=True)
class BrokerCall:
    """One call a test made through the broker protocols."""

    name: str
    kwargs: Mapping[str, Any]


@dataclass
class _Scripted:
    error: TradingError
    after_accept: bool = False


@dataclass
class _FakeOrder:
    broker_order_id: str
    client_id: str
    code: str
    side: Side
    qty: Decimal
    price: Decimal
    day: int
    created_at: str
    status: BrokerStatus = BrokerStatus.WORKING
    filled_qty: Decimal = Decimal(0)
    filled_value: Decimal = Decimal(0)
    last_error: str = ""
    updated_at: str = ""
    raw: str = ""  # a Futu status the Bronco status does not say (DISABLED, FILL_CANCELLED)

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    def view(self) -> BrokerOrder:
        filled = self.filled_qty > 0
        return BrokerOrder(
            broker_order_id=self.broker_order_id,
            client_id=self.client_id,
            code=self.code,
            side=self.side,
            qty=self.qty,
            price=self.price,
            status=self.status,
            filled_qty=self.filled_qty,
            avg_fill_price=self.filled_value / self.filled_qty if filled else None,
            raw_status=self.raw or _RAW.get((self.status, filled), str(self.status)),
            last_error=self.last_error,
            created_at=self.created_at,
            updated_at=self.updated_at or self.created_at,
        )


@dataclass
class _Holding:
    qty: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)  # what the shares held cost, in the security's currency


class FakeBroker:
    """In-memory `trading.broker.Broker` for one account. Thread-safe."""

    def __init__(
        self,
        *,
        on_order_update: OrderUpdateCallback | None = None,
        on_deal_update: Any = None,
        cash: Mapping[str, Decimal | int | str] | None = None,
        fill_crossing_orders: bool = False,
        push_on_place: bool = True,
    ) -> None:
        self.on_order_update = on_order_update
        self.on_deal_update = on_deal_update
        self.deals_made: list[Deal] = []
        self._unlisted_deals: set[str] = set()  # deal ids not yet in the deal list
        self._fees: dict[str, OrderFee] = {}
        # Fill a new order in full at the quote, at once, when its limit crosses the quote
        # (as the OpenD simulator does by default); otherwise orders rest until `fill`.
        self.fill_crossing_orders = fill_crossing_orders
        # Push the accepted order (Futu's SUBMITTED push) when it is placed.
        self.push_on_place = push_on_place
        self.calls: list[BrokerCall] = []
        self.placed: list[BrokerOrder] = []
        self.pushes: list[BrokerOrder] = []
        self.closed = 0
        self._lock = threading.RLock()
        self._quotes: dict[str, Quote] = {}
        self._orders: dict[str, _FakeOrder] = {}
        self._scripted: dict[str, list[_Scripted]] = {}
        self._held_cancels = 0
        initial = cash if cash is not None else {"USD": "1000000", "HKD": "10000000"}
        self._cash: dict[str, Decimal] = {ccy: Decimal(str(v)) for ccy, v in initial.items()}
        self._holdings: dict[str, _Holding] = {}
        self._day = 0
        self._ticks = 0
        self._next_id = 1

    # --- scripting ----------------------------------------------------------------------
    def set_quote(
        self,
        code: str,
        price: Decimal | int | str,
        *,
        lot_size: int = 1,
        tick_size: Decimal | str = "0.01",
        market_open: bool = True,
        market_state: str | None = None,
        bid: Decimal | str | None = None,
        ask: Decimal | str | None = None,
        suspended: bool = False,
    ) -> Quote:
        """The quote `quote(code)` returns from now on (and the price fills and market
        values use). Returns it."""
        quote = Quote(
            code=code,
            price=Decimal(str(price)),
            lot_size=lot_size,
            tick_size=Decimal(str(tick_size)),
            currency=currency_of(code),
            market_open=market_open and not suspended,
            market_state=market_state or ("AFTERNOON" if market_open else "CLOSED"),
            bid=Decimal(str(bid)) if bid is not None else None,
            ask=Decimal(str(ask)) if ask is not None else None,
            suspended=suspended,
        )
        with self._lock:
            self._quotes[code] = quote
        return quote

    def set_cash(self, currency: str, amount: Decimal | int | str) -> None:
        with self._lock:
            self._cash[currency] = Decimal(str(amount))

    def set_position(
        self, code: str, qty: Decimal | int | str, *, cost_price: Decimal | str = "0"
    ) -> None:
        qty = Decimal(str(qty))
        with self._lock:
            self._holdings[code] = _Holding(qty=qty, cost=qty * Decimal(str(cost_price)))

    def fail_next(self, method: str, error: TradingError, *, after_accept: bool = False) -> None:
        """The next call of `method` raises `error`. For `place_order` it is the next real
        placement (not one answered by the remark look-up), and `after_accept` creates the
        order first, then raises: the broker has it, the caller never heard."""
        if after_accept and method != "place_order":
            raise ValueError("after_accept applies to place_order only")
        with self._lock:
            self._scripted.setdefault(method, []).append(_Scripted(error, after_accept))

    def reject_next_place(self, reason: str = "rejected by the fake broker") -> None:
        self.fail_next("place_order", BrokerRejected(reason))

    def rate_limit_next_place(self, retry_after: float = 1.0) -> None:
        self.fail_next("place_order", RateLimited(retry_after, "fake broker rate limit"))

    def unavailable_next_place(self, *, after_accept: bool = False) -> None:
        self.fail_next(
            "place_order",
            BrokerUnavailable("fake broker unavailable"),
            after_accept=after_accept,
        )

    def hold_next_cancel(self) -> None:
        """The next cancel is acknowledged but does not take: the order stays CANCELLING
        (not final) until the test calls `cancel` or `fill`."""
        with self._lock:
            self._held_cancels += 1

    def fill(
        self,
        broker_order_id: str,
        qty: Decimal | int | str | None = None,
        price: Decimal | int | str | None = None,
        *,
        deal_listed: bool = True,
    ) -> BrokerOrder:
        """Fill `qty` (default: all that remains) at `price` (default: the order's limit).
        Moves cash and the position; pushes the update. `deal_listed=False`: the deal is
        not in the deal list until `list_held_deals()` (Futu's order push and its deal list
        are separate: the order can read FILLED before its deals are listed)."""
        pending: list[BrokerOrder] = []
        with self._lock:
            order = self._order(broker_order_id)
            if order.status.is_final:
                raise ValueError(f"order {broker_order_id} is {order.status}; it cannot fill")
            amount = order.remaining if qty is None else Decimal(str(qty))
            if not 0 < amount <= order.remaining:
                raise ValueError(f"cannot fill {amount} of {order.remaining} remaining")
            self._apply_fill(order, amount, order.price if price is None else Decimal(str(price)))
            if not deal_listed:
                self._unlisted_deals.add(self.deals_made[-1].deal_id)
            view = order.view()
            pending.append(view)
        self._deliver(pending)
        return view

    def list_held_deals(self) -> None:
        """Deals filled with `deal_listed=False` appear in the deal list."""
        with self._lock:
            self._unlisted_deals.clear()

    def cancel(self, broker_order_id: str) -> BrokerOrder:
        """The broker cancels the order on its own (or completes a held cancel)."""
        pending: list[BrokerOrder] = []
        with self._lock:
            order = self._order(broker_order_id)
            if not order.status.is_final:
                self._set_status(order, BrokerStatus.CANCELLED)
                pending.append(order.view())
            view = order.view()
        self._deliver(pending)
        return view

    def fail(self, broker_order_id: str, reason: str = "order failed") -> BrokerOrder:
        """The exchange fails an accepted order: final, with `reason` as its last error."""
        pending: list[BrokerOrder] = []
        with self._lock:
            order = self._order(broker_order_id)
            order.last_error = reason
            self._set_status(order, BrokerStatus.FAILED)
            view = order.view()
            pending.append(view)
        self._deliver(pending)
        return view

    def lose(self, broker_order_id: str) -> None:
        """The broker forgets the order: no look-up finds it again."""
        with self._lock:
            self._order(broker_order_id)
            del self._orders[broker_order_id]

    def roll_day(self) -> None:
        """Start a new trading day: unfinished DAY orders are cancelled, and every order so
        far is a past day's (found by client id only with `include_history`)."""
        pending: list[BrokerOrder] = []
        with self._lock:
            for order in self._orders.values():
                if order.day == self._day and not order.status.is_final:
                    self._set_status(order, BrokerStatus.CANCELLED)
                    pending.append(order.view())
            self._day += 1
        self._deliver(pending)

    def calls_to(self, name: str) -> list[BrokerCall]:
        return [call for call in self.calls if call.name == name]

    # --- QuoteSource --------------------------------------------------------------------
    def quotes(self, codes: list[str]) -> dict[str, Quote]:
        with self._lock:
            self._record("quotes", codes=list(codes))
            self._raise_scripted("quotes")
            return {c: self._quotes[c] for c in codes if c in self._quotes}

    def quote(self, code: str) -> Quote:
        with self._lock:
            self._record("quote", code=code)
            self._raise_scripted("quote")
            quote = self._quotes.get(code)
            if quote is None:
                raise NoQuote(f"no quote for {code}")
            return quote

    # --- ExecutionVenue -----------------------------------------------------------------
    def place_order(
        self,
        *,
        client_id: str,
        code: str,
        side: Side | str,
        qty: Decimal,
        limit_price: Decimal,
        lookup: bool = True,
    ) -> BrokerOrder:
        side = Side(side)
        pending: list[BrokerOrder] = []
        with self._lock:
            self._record(
                "place_order",
                client_id=client_id,
                code=code,
                side=side,
                qty=qty,
                limit_price=limit_price,
            )
            if len(client_id.encode()) > 64:
                raise ValueError("client id must fit Futu's remark (64 bytes)")
            if qty <= 0 or limit_price <= 0:
                raise BrokerRejected(f"quantity {qty} and price {limit_price} must be positive")
            existing = self._find(client_id, code=code, include_history=False) if lookup else None
            if existing is not None:
                return existing.view()
            scripted = self._pop_scripted("place_order")
            if scripted is not None and not scripted.after_accept:
                raise scripted.error
            self._check_placeable(code=code, side=side, qty=qty, limit_price=limit_price)
            order = _FakeOrder(
                broker_order_id=str(self._next_id),
                client_id=client_id,
                code=code,
                side=side,
                qty=qty,
                price=limit_price,
                day=self._day,
                created_at=self._stamp(),
            )
            self._next_id += 1
            self._orders[order.broker_order_id] = order
            self.placed.append(order.view())
            if self.push_on_place:
                pending.append(order.view())
            quote = self._quotes[code]
            crosses = limit_price >= quote.price if side == Side.BUY else limit_price <= quote.price
            if self.fill_crossing_orders and quote.market_open and crosses:
                self._apply_fill(order, qty, quote.price)
                pending.append(order.view())
            view = order.view()
        self._deliver(pending)
        if scripted is not None:
            raise scripted.error
        return view

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder:
        pending: list[BrokerOrder] = []
        with self._lock:
            self._record("cancel_order", broker_order_id=broker_order_id)
            self._raise_scripted("cancel_order")
            order = self._orders.get(broker_order_id)
            if order is None:
                raise BrokerRejected(f"broker order {broker_order_id} does not exist")
            if not order.status.is_final:
                if self._held_cancels:
                    self._held_cancels -= 1
                    self._set_status(order, BrokerStatus.CANCELLING)
                else:
                    self._set_status(order, BrokerStatus.CANCELLED)
                pending.append(order.view())
            view = order.view()
        self._deliver(pending)
        return view

    def query_order(
        self,
        *,
        broker_order_id: str | None = None,
        client_id: str | None = None,
        code: str = "",
        include_history: bool = True,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        with self._lock:
            self._record(
                "query_order",
                broker_order_id=broker_order_id,
                client_id=client_id,
                code=code,
                include_history=include_history,
            )
            if bool(broker_order_id) == bool(client_id):
                raise ValueError("give exactly one of broker_order_id and client_id")
            self._raise_scripted("query_order")
            if client_id:
                found = self._find(client_id, code=code, include_history=include_history)
            else:
                found = self._orders.get(str(broker_order_id))
                if found is not None and not include_history and found.status.is_final:
                    found = None
            return found.view() if found is not None else None

    def find_by_remark(
        self,
        client_id: str,
        *,
        code: str = "",
        include_history: bool = False,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        with self._lock:
            history = include_history or since is not None
            self._record("find_by_remark", client_id=client_id, code=code, include_history=history)
            self._raise_scripted("find_by_remark")
            found = self._find(client_id, code=code, include_history=history)
            return found.view() if found is not None else None

    def list_orders(self) -> list[BrokerOrder]:
        """The open list: unfinished orders only."""
        with self._lock:
            self._record("list_orders")
            self._raise_scripted("list_orders")
            return [o.view() for o in self._orders.values() if not o.status.is_final]

    def list_history_orders(self, *, since: datetime | None = None) -> list[BrokerOrder]:
        with self._lock:
            self._record("list_history_orders")
            return [o.view() for o in self._orders.values()]

    def deals(
        self, *, broker_order_id: str, code: str = "", since: datetime | None = None
    ) -> list[Deal]:
        with self._lock:
            self._record("deals", broker_order_id=broker_order_id)
            self._raise_scripted("deals")
            return [
                d
                for d in self.deals_made
                if d.broker_order_id == str(broker_order_id)
                and d.deal_id not in self._unlisted_deals
            ]

    def order_fee(self, *, broker_order_id: str) -> OrderFee | None:
        with self._lock:
            self._record("order_fee", broker_order_id=broker_order_id)
            if str(broker_order_id) not in self._orders:
                return None
            return self._fees.get(
                str(broker_order_id),
                OrderFee(broker_order_id=str(broker_order_id), total=Decimal(0)),
            )

    def order_fees(self, *, broker_order_ids: list[str]) -> dict[str, OrderFee]:
        with self._lock:
            self._record("order_fees", broker_order_ids=list(broker_order_ids))
            return {
                str(i): self._fees.get(str(i), OrderFee(broker_order_id=str(i), total=Decimal(0)))
                for i in broker_order_ids
                if str(i) in self._orders
            }

    def max_buy_qty(self, *, code: str, price: Decimal) -> Decimal:
        with self._lock:
            self._record("max_buy_qty", code=code, price=price)
            quote = self._quotes.get(code)
            lot = quote.lot_size if quote else 1
            currency = currency_of(code)
            power = self._cash.get(currency, Decimal(0)) - self._frozen(currency)
            if price <= 0 or power <= 0:
                return Decimal(0)
            return (power / (price * lot)).to_integral_value(rounding=ROUND_FLOOR) * lot

    # --- scripting the exchange's corrections --------------------------------------------
    def set_fee(self, broker_order_id: str, total: Decimal | str, items: Any = ()) -> None:
        with self._lock:
            self._fees[str(broker_order_id)] = OrderFee(
                broker_order_id=str(broker_order_id),
                total=Decimal(str(total)),
                items=tuple((name, Decimal(str(v))) for name, v in items),
            )

    def disable(self, broker_order_id: str) -> BrokerOrder:
        """Someone outside Bronco disabled the order: inactive, not final."""
        with self._lock:
            order = self._order(broker_order_id)
            order.raw = "DISABLED"
            self._set_status(order, BrokerStatus.DISABLED)
            view = order.view()
        self._deliver([view])
        return view

    def reverse_fills(self, broker_order_id: str) -> BrokerOrder:
        """The exchange cancels every deal of the order after the fact (FILL_CANCELLED)."""
        with self._lock:
            order = self._order(broker_order_id)
            for i, deal in enumerate(self.deals_made):
                if deal.broker_order_id == order.broker_order_id:
                    self.deals_made[i] = replace(deal, status=DealStatus.CANCELLED)
            order.filled_qty = order.filled_value = Decimal(0)
            order.raw = "FILL_CANCELLED"
            self._set_status(order, BrokerStatus.FILL_CANCELLED)
            view = order.view()
        self._deliver([view])
        return view

    def change_deal(
        self, deal_id: str, qty: Decimal | str, price: Decimal | str | None = None
    ) -> Deal:
        """The exchange corrects one deal after the fact (CHANGED)."""
        with self._lock:
            i, deal = next((i, d) for i, d in enumerate(self.deals_made) if d.deal_id == deal_id)
            order = self._order(deal.broker_order_id)
            new = replace(
                deal,
                qty=Decimal(str(qty)),
                price=deal.price if price is None else Decimal(str(price)),
                status=DealStatus.CHANGED,
            )
            self.deals_made[i] = new
            order.filled_qty += new.qty - deal.qty
            order.filled_value += new.qty * new.price - deal.qty * deal.price
            view = order.view()
        self._deliver([view])
        return new

    def funds(self, currency: str = "USD") -> Funds:
        """`currency`'s own cash (no conversion between currencies); frozen is what working
        buys in it would spend at their limits; market value at the quotes."""
        with self._lock:
            self._record("funds", currency=currency)
            self._raise_scripted("funds")
            cash = self._cash.get(currency, Decimal(0))
            frozen = self._frozen(currency)
            market_value = sum(
                (p.market_value for p in self._positions() if p.currency == currency),
                Decimal(0),
            )
            return Funds(
                currency=currency,
                cash=cash,
                power=cash - frozen,
                total_assets=cash + market_value,
                frozen_cash=frozen,
                market_value=market_value,
                cash_by_currency=dict(self._cash),
            )

    def positions(self) -> list[Position]:
        with self._lock:
            self._record("positions")
            self._raise_scripted("positions")
            return self._positions()

    def close(self) -> None:
        with self._lock:
            self._record("close")
            self.closed += 1

    # --- internals ----------------------------------------------------------------------
    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append(BrokerCall(name, kwargs))

    def _pop_scripted(self, method: str) -> _Scripted | None:
        queue = self._scripted.get(method)
        return queue.pop(0) if queue else None

    def _raise_scripted(self, method: str) -> None:
        scripted = self._pop_scripted(method)
        if scripted is not None:
            raise scripted.error

    def _order(self, broker_order_id: str) -> _FakeOrder:
        order = self._orders.get(str(broker_order_id))
        if order is None:
            raise KeyError(f"the fake broker has no order {broker_order_id}")
        return order

    def _find(self, client_id: str, *, code: str, include_history: bool) -> _FakeOrder | None:
        matches = [
            o
            for o in self._orders.values()
            if o.client_id == client_id and (not code or o.code == code)
        ]
        unfinished = [o for o in matches if not o.status.is_final]
        if unfinished:
            return unfinished[0]
        return matches[0] if include_history and matches else None

    def _stamp(self) -> str:
        self._ticks += 1
        moment = _EPOCH + timedelta(days=self._day, seconds=self._ticks)
        return moment.strftime("%Y-%m-%d %H:%M:%S.000")

    def _set_status(self, order: _FakeOrder, status: BrokerStatus) -> None:
        order.status = status
        order.updated_at = self._stamp()

    def _check_placeable(
        self, *, code: str, side: Side, qty: Decimal, limit_price: Decimal
    ) -> None:
        quote = self._quotes.get(code)
        if quote is None:
            raise BrokerRejected(f"unknown security {code}")
        if qty % quote.lot_size:
            raise BrokerRejected(f"quantity {qty} is not a multiple of the lot size")
        if quote.tick_size > 0 and limit_price % quote.tick_size:
            raise BrokerRejected(f"price {limit_price} is not on the price step")
        if side == Side.SELL:
            held = self._holdings.get(code, _Holding()).qty
            if qty > held - self._selling(code):
                raise BrokerRejected(f"{qty} {code} exceeds the sellable quantity")
        else:
            power = self._cash.get(quote.currency, Decimal(0)) - self._frozen(quote.currency)
            if qty * limit_price > power:
                raise InsufficientBuyingPower("insufficient buying power")

    def _frozen(self, currency: str) -> Decimal:
        """What working buys in `currency` would still spend at their limits."""
        return sum(
            (
                o.remaining * o.price
                for o in self._orders.values()
                if o.side == Side.BUY and not o.status.is_final and currency_of(o.code) == currency
            ),
            Decimal(0),
        )

    def _selling(self, code: str) -> Decimal:
        return sum(
            (
                o.remaining
                for o in self._orders.values()
                if o.code == code and o.side == Side.SELL and not o.status.is_final
            ),
            Decimal(0),
        )

    def _apply_fill(self, order: _FakeOrder, qty: Decimal, price: Decimal) -> None:
        holding = self._holdings.setdefault(order.code, _Holding())
        currency = currency_of(order.code)
        value = qty * price
        if order.side == Side.BUY:
            self._cash[currency] = self._cash.get(currency, Decimal(0)) - value
            holding.cost += value
            holding.qty += qty
        else:
            self._cash[currency] = self._cash.get(currency, Decimal(0)) + value
            holding.cost -= holding.cost * qty / holding.qty if holding.qty else Decimal(0)
            holding.qty -= qty
        order.filled_qty += qty
        order.filled_value += value
        self.deals_made.append(
            Deal(
                deal_id=f"d{len(self.deals_made) + 1}",
                broker_order_id=order.broker_order_id,
                code=order.code,
                side=order.side,
                qty=qty,
                price=price,
                status=DealStatus.OK,
            )
        )
        filled = order.filled_qty == order.qty
        self._set_status(order, BrokerStatus.FILLED if filled else BrokerStatus.PARTIALLY_FILLED)

    def _positions(self) -> list[Position]:
        positions = []
        for code, holding in sorted(self._holdings.items()):
            if holding.qty == 0:
                continue
            quote = self._quotes.get(code)
            positions.append(
                Position(
                    code=code,
                    qty=holding.qty,
                    can_sell_qty=holding.qty - self._selling(code),
                    cost_price=holding.cost / holding.qty,
                    market_value=holding.qty * quote.price if quote else Decimal(0),
                    currency=currency_of(code),
                )
            )
        return positions

    def _deliver(self, pending: list[BrokerOrder]) -> None:
        """Push each update, in order, on a thread of its own (as the SDK does: a callback
        may use the database or enqueue tasks, never on the caller's connection), and wait
        for it. Called without the lock held, so a callback may call the broker."""
        for order in pending:
            self.pushes.append(order)
            callback = self.on_order_update
            if callback is None:
                continue
            thread = threading.Thread(
                target=callback, args=(order,), name="fake-broker-push", daemon=True
            )
            thread.start()
            thread.join(_PUSH_TIMEOUT_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"order-update callback {callback!r} did not return")


@pytest.fixture
def fake_broker(settings: Any) -> Iterator[FakeBroker]:
    """This process's broker is a fresh FakeBroker (through `TRADING_BROKER_FACTORY`, wired
    to `trading.session.dispatch_order_update` like the Futu adapter) for the test. Every
    registered callback sees its pushes, the orders app's too (it reads the database: mark
    the test `django_db`)."""
    from trading.market_wait import market_closed_clear
    from trading.session import get_broker, reset_broker

    market_closed_clear()  # no closed-market skip of an earlier test holds
    settings.TRADING_BROKER_FACTORY = FAKE_BROKER_FACTORY
    reset_broker()
    broker = get_broker()
    assert isinstance(broker, FakeBroker)
    yield broker
    reset_broker()
