"""The broker interface in Bronco's own types.

Everything the order pipeline knows about a broker is here: quotes, orders and their
status, funds and positions. The Futu adapter (`trading.futu`) produces these types; no
DataFrame or futu constant ever leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


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


class Broker(Protocol):
    """What any broker adapter offers. Writes are idempotent by `client_id`."""

    def quote(self, code: str) -> Quote: ...

    def place_order(
        self, *, client_id: str, code: str, side: Side, qty: Decimal, limit_price: Decimal
    ) -> BrokerOrder: ...

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder: ...

    def query_order(
        self, *, broker_order_id: str | None = None, client_id: str | None = None
    ) -> BrokerOrder | None: ...

    def funds(self) -> Funds: ...

    def positions(self) -> list[Position]: ...

    def close(self) -> None: ...
