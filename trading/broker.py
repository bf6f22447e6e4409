"""The broker interface in Bronco's own types.

Everything the order pipeline knows about a broker is here: quotes, orders and their
status, funds and positions, and the two protocols a broker offers them through
(`QuoteSource`, `ExecutionVenue`; `Broker` is both). The Futu adapter (`trading.futu`)
produces these types; no DataFrame or futu constant ever leaves it. Tests swap in an
in-memory fake through the `TRADING_BROKER_FACTORY` setting (`trading.session`).

Units everywhere: prices and amounts are `Decimal` in the security's market currency
(`Quote.currency`: USD for `US.*`, HKD for `HK.*`); quantities are `Decimal` shares; codes
are Futu codes (`"US.AAPL"`, `"HK.00700"`). Never a float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class BrokerStatus(StrEnum):
    """Bronco's view of a broker order. `is_final` says no more fills can come."""

    SUBMITTING = "SUBMITTING"
    WORKING = "WORKING"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    CANCELLING = "CANCELLING"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    # Fills reversed by the exchange after the fact: final, nothing filled.
    FILL_CANCELLED = "FILL_CANCELLED"
    # Inactive but enabled again from outside at any time: not final; Bronco cancels it.
    DISABLED = "DISABLED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        BrokerStatus.FILLED,
        BrokerStatus.CANCELLED,
        BrokerStatus.FAILED,
        BrokerStatus.FILL_CANCELLED,
    }
)
# Statuses in which the broker may still fill the order (it is "working").
WORKING_STATUSES = frozenset(
    {
        BrokerStatus.SUBMITTING,
        BrokerStatus.WORKING,
        BrokerStatus.PARTIALLY_FILLED,
        BrokerStatus.CANCELLING,
        BrokerStatus.DISABLED,
        BrokerStatus.UNKNOWN,
    }
)


class DealStatus(StrEnum):
    """Futu's OrderFillStatus: a deal can be cancelled or changed after it was reported."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    CHANGED = "CHANGED"


@dataclass(frozen=True)
class Deal:
    """One fill of a broker order (Futu: a deal). Quantity and price are the deal's latest
    values: a CHANGED deal carries the corrected ones, a CANCELLED deal counts for nothing."""

    deal_id: str
    broker_order_id: str
    code: str
    side: Side
    qty: Decimal
    price: Decimal
    status: DealStatus
    created_at: str = ""

    @property
    def counts(self) -> bool:
        return self.status != DealStatus.CANCELLED


def fill_from_deals(deals: list[Deal]) -> tuple[Decimal, Decimal | None]:
    """Filled quantity and average price over the deals that count."""
    live = [d for d in deals if d.counts]
    qty = sum((d.qty for d in live), Decimal(0))
    if qty <= 0:
        return Decimal(0), None
    return qty, sum((d.qty * d.price for d in live), Decimal(0)) / qty


def filled_by_deals(
    deals: list[Deal],
    *,
    broker_order_id: str,
    client_id: str,
    code: str,
    side: Side,
    qty: Decimal,
    price: Decimal,
) -> BrokerOrder | None:
    """The order as FILLED (final) when its deals fill `qty` in full, else None: what the
    deal list (OpenD's cache, not rate limited) can say without Futu's history listing."""
    filled, avg = fill_from_deals(deals)
    if qty <= 0 or filled < qty:
        return None
    times = sorted(d.created_at for d in deals if d.created_at)
    return BrokerOrder(
        broker_order_id=broker_order_id,
        client_id=client_id,
        code=code,
        side=side,
        qty=qty,
        price=price,
        status=BrokerStatus.FILLED,
        filled_qty=filled,
        avg_fill_price=avg,
        raw_status="FILLED_ALL",
        created_at=times[0] if times else "",
        updated_at=times[-1] if times else "",
    )


@dataclass(frozen=True)
class OrderFee:
    """The broker's own fee for one order, itemised (Futu `order_fee_query`), in the
    order's market currency."""

    broker_order_id: str
    total: Decimal
    items: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True)
class Quote:
    code: str
    price: Decimal
    lot_size: int
    tick_size: Decimal
    currency: str
    market_open: bool
    market_state: str = ""
    bid: Decimal | None = None
    ask: Decimal | None = None
    suspended: bool = False


@dataclass(frozen=True)
class BrokerOrder:
    broker_order_id: str
    client_id: str
    code: str
    side: Side
    qty: Decimal
    price: Decimal
    status: BrokerStatus
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    raw_status: str
    last_error: str = ""
    created_at: str = ""
    updated_at: str = ""

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def remaining_qty(self) -> Decimal:
        return self.qty - self.filled_qty


@dataclass(frozen=True)
class Funds:
    currency: str
    cash: Decimal
    power: Decimal
    total_assets: Decimal
    frozen_cash: Decimal
    market_value: Decimal
    cash_by_currency: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Position:
    code: str
    qty: Decimal
    can_sell_qty: Decimal
    cost_price: Decimal | None
    market_value: Decimal
    currency: str


OrderUpdateCallback = Callable[[BrokerOrder], None]
DealUpdateCallback = Callable[["Deal"], None]


@runtime_checkable
class QuoteSource(Protocol):
    """Prices and market state. A read: safe to call again at any time."""

    def quote(self, code: str) -> Quote:
        """The latest snapshot of `code`: last price (> 0), lot size (shares per lot), tick
        (the exchange's price step at the last price: Futu's snapshot `price_spread`; a
        limit further away may fall in a band with another step), currency, and the
        security's market state (`market_open` says whether an order can trade now;
        `market_state` is the venue's own name for it; `suspended` is the security's own
        halt). Raises NoQuote for an unknown code or one
        without a price, BrokerUnavailable or RateLimited when the venue cannot answer."""
        ...

    def quotes(self, codes: list[str]) -> dict[str, Quote]:
        """Quotes for many codes in one request (Futu: a snapshot takes up to 400 codes);
        codes without a price are left out."""
        ...


@runtime_checkable
class ExecutionVenue(Protocol):
    """Orders, fills, funds and positions of one account.

    Orders are limit orders tagged with Bronco's `client_id` (at Futu: the order's remark,
    at most 64 bytes). Every call may raise BrokerUnavailable (the venue could not be
    reached; for a write the outcome is unknown) or RateLimited(retry_after seconds)."""

    def place_order(
        self,
        *,
        client_id: str,
        code: str,
        side: Side,
        qty: Decimal,
        limit_price: Decimal,
        lookup: bool = True,
    ) -> BrokerOrder:
        """Place a DAY limit order for `qty` shares at `limit_price` (market currency). With
        `lookup`, an *unfinished* order already tagged with `client_id` is returned instead
        (the open list holds nothing else: a finished one would be placed again, which is
        why `trading.services.broker_order_submit` asks the history on a retry). Raises
        BrokerRejected when the venue refuses it (lot size, tick, sellable shares, risk
        checks), InsufficientBuyingPower when the account cannot pay for it now."""
        ...

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder:
        """Ask to cancel; idempotent: an order already final comes back as it is. An
        acknowledged cancel may not take: check the order again. Raises BrokerRejected for
        an order the venue does not know."""
        ...

    def query_order(
        self,
        *,
        broker_order_id: str | None = None,
        client_id: str | None = None,
        code: str = "",
        include_history: bool = True,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        """One order by exactly one of the venue's id or our client id; None when the
        venue has no such order. The open list first; with `include_history`, the history
        around `since` (Futu: 10 requests per 30 s)."""
        ...

    def find_by_remark(
        self,
        client_id: str,
        *,
        code: str = "",
        include_history: bool = False,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        """The order tagged with `client_id` in the open list (unfinished orders), and with
        `include_history` or `since` in the history around `since` too, or None."""
        ...

    def list_history_orders(self, *, since: datetime | None = None) -> list[BrokerOrder]:
        """Every order since `since` (default the last 90 days), finished or not."""
        ...

    def deals(
        self, *, broker_order_id: str, code: str = "", since: datetime | None = None
    ) -> list[Deal]:
        """The order's deals (fills), each at its latest state (OK, CANCELLED, CHANGED)."""
        ...

    def order_fee(self, *, broker_order_id: str) -> OrderFee | None:
        """The broker's itemised fee for the order (market currency); None if unknown."""
        ...

    def order_fees(self, *, broker_order_ids: list[str]) -> dict[str, OrderFee]:
        """The fees of many orders in one request (Futu's order_fee_query takes a list);
        orders the broker does not know are left out."""
        ...

    def max_buy_qty(self, *, code: str, price: Decimal) -> Decimal:
        """Shares (whole lots) the account's cash buys at `price` now, fees included."""
        ...

    def list_orders(self) -> list[BrokerOrder]:
        """The account's unfinished orders (Futu's open list)."""
        ...

    def funds(self, currency: str = "USD") -> Funds:
        """The account's cash, buying power, frozen cash, market value and total assets,
        in `currency`; `cash_by_currency` holds each currency's own cash."""
        ...

    def positions(self) -> list[Position]:
        """Every holding: shares held and sellable (not locked by a working sell order),
        cost price and market value in the position's currency."""
        ...


@runtime_checkable
class Broker(QuoteSource, ExecutionVenue, Protocol):
    """What any broker adapter offers: quotes and execution for one account, per process.
    Writes are idempotent by `client_id`. Order updates (fills, cancels, failures) are pushed
    to the `on_order_update` callback the adapter is built with, on a thread of its own."""

    def close(self) -> None:
        """Release the session (sockets, threads); the next call may open a new one."""
        ...
