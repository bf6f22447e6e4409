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
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({BrokerStatus.FILLED, BrokerStatus.CANCELLED, BrokerStatus.FAILED})


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


@runtime_checkable
class QuoteSource(Protocol):
    """Prices and market state. A read: safe to call again at any time."""

    def quote(self, code: str) -> Quote:
        """The latest snapshot of `code`: last price (> 0), lot size (shares per lot), tick
        (smallest price step), currency, and the security's market state (`market_open` says
        whether an order can trade now; `market_state` is the venue's own name for it;
        `suspended` is the security's own halt). Raises NoQuote for an unknown code or one
        without a price, BrokerUnavailable or RateLimited when the venue cannot answer."""
        ...


@runtime_checkable
class ExecutionVenue(Protocol):
    """Orders, fills, funds and positions of one account.

    Orders are limit orders tagged with Bronco's `client_id` (at Futu: the order's remark,
    at most 64 bytes). Every call may raise BrokerUnavailable (the venue could not be
    reached; for a write the outcome is unknown) or RateLimited(retry_after seconds)."""

    def place_order(
        self, *, client_id: str, code: str, side: Side, qty: Decimal, limit_price: Decimal
    ) -> BrokerOrder:
        """Place a DAY limit order for `qty` shares at `limit_price` (market currency), or
        return the order already tagged with `client_id` among today's orders without placing
        another. Raises BrokerRejected when the venue refuses it (lot size, tick, buying
        power, sellable shares, risk checks)."""
        ...

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder:
        """Cancel; idempotent: an order already final comes back as it is. Raises
        BrokerRejected for an order the venue does not know."""
        ...

    def query_order(
        self,
        *,
        broker_order_id: str | None = None,
        client_id: str | None = None,
        code: str = "",
        include_history: bool = True,
    ) -> BrokerOrder | None:
        """One order by exactly one of the venue's id or our client id; None when the
        venue has no such order. By client id, past days are searched only with
        `include_history` (that look-up has a small budget at Futu: 10 per 30 s)."""
        ...

    def find_by_remark(
        self, client_id: str, *, code: str = "", include_history: bool = False
    ) -> BrokerOrder | None:
        """The order tagged with `client_id` among today's orders (and past days' with
        `include_history`), or None: the look-up `place_order` makes before placing."""
        ...

    def list_orders(self) -> list[BrokerOrder]:
        """Today's orders of the account, in any state."""
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
