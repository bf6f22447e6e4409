"""Futu's data in Bronco's types: the SDK's DataFrame rows, status strings, market states
and error messages become `trading.broker` types and `trading.exceptions`.

Pure functions over plain values (nautilus_trader's `parsing` module): no session, no I/O,
so every translation is testable without OpenD.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from futu import OrderStatus, TrdSide

from trading.broker import BrokerOrder, BrokerStatus, Funds, Position, Quote
from trading.broker import Side as BrokerSide
from trading.exceptions import BrokerRejected, BrokerUnavailable, RateLimited, TradingError

# Every Futu order status -> Bronco's. `is_final` on the Bronco side says no fill can follow.
FUTU_STATUS_MAP: Mapping[str, BrokerStatus] = {
    OrderStatus.NONE: BrokerStatus.UNKNOWN,
    OrderStatus.UNSUBMITTED: BrokerStatus.SUBMITTING,
    OrderStatus.WAITING_SUBMIT: BrokerStatus.SUBMITTING,
    OrderStatus.SUBMITTING: BrokerStatus.SUBMITTING,
    # The request failed before reaching the exchange: final, nothing filled.
    OrderStatus.SUBMIT_FAILED: BrokerStatus.FAILED,
    # "Processing timed out, result unknown": not final, keep polling until Futu knows.
    OrderStatus.TIMEOUT: BrokerStatus.UNKNOWN,
    OrderStatus.SUBMITTED: BrokerStatus.WORKING,
    OrderStatus.FILLED_PART: BrokerStatus.PARTIALLY_FILLED,
    OrderStatus.FILLED_ALL: BrokerStatus.FILLED,
    OrderStatus.CANCELLING_PART: BrokerStatus.CANCELLING,
    OrderStatus.CANCELLING_ALL: BrokerStatus.CANCELLING,
    OrderStatus.CANCELLED_PART: BrokerStatus.CANCELLED,
    OrderStatus.CANCELLED_ALL: BrokerStatus.CANCELLED,
    OrderStatus.FAILED: BrokerStatus.FAILED,
    # Disabled (HK) orders rest inactive until re-enabled; Bronco never re-enables one, so
    # no fill can follow: treat as cancelled with whatever filled before.
    OrderStatus.DISABLED: BrokerStatus.CANCELLED,
    # Only orders without fills can be deleted.
    OrderStatus.DELETED: BrokerStatus.CANCELLED,
    # The exchange reversed the fills; the order is void.
    OrderStatus.FILL_CANCELLED: BrokerStatus.FAILED,
}

OPEN_MARKET_STATES = frozenset({"MORNING", "AFTERNOON"})
EXTENDED_MARKET_STATES = frozenset({"PRE_MARKET_BEGIN", "AFTER_HOURS_BEGIN", "NIGHT_OPEN"})

_RATE_LIMITED = re.compile(r"frequen|频繁|频率|too many requests", re.IGNORECASE)
_DISCONNECTED = re.compile(
    r"connection lost|not connected|connection closed|disconnect|timeout|time out|"
    r"context status bad|sendfail|connect fail",
    re.IGNORECASE,
)


def map_status(raw: str) -> BrokerStatus:
    """Futu's status string -> Bronco's; a status this code does not know is UNKNOWN (not
    final), so an SDK upgrade can never make an order look finished."""
    return FUTU_STATUS_MAP.get(raw, BrokerStatus.UNKNOWN)


def classify_error(message: str, *, retry_after: float = 1.0) -> TradingError:
    """An SDK error message -> the domain exception it means."""
    text = str(message)
    if _RATE_LIMITED.search(text):
        return RateLimited(retry_after, f"Futu rate limit: {text}")
    if _DISCONNECTED.search(text):
        return BrokerUnavailable(f"OpenD unavailable: {text}")
    return BrokerRejected(text)


def to_decimal(value: Any) -> Decimal:
    """An SDK number (float, int, str, "N/A" or NaN) as an exact Decimal; missing is 0.
    A float goes through its shortest repr, so 190.1 is Decimal("190.1")."""
    if value is None or value == "N/A" or (isinstance(value, float) and math.isnan(value)):
        return Decimal(0)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def order_from_row(row: Mapping[str, Any]) -> BrokerOrder:
    """One row of an SDK order DataFrame (order list, place_order or an order push)."""
    raw = str(row.get("order_status", OrderStatus.NONE))
    filled = to_decimal(row.get("dealt_qty"))
    avg = to_decimal(row.get("dealt_avg_price"))
    side = str(row.get("trd_side", ""))
    return BrokerOrder(
        broker_order_id=str(row["order_id"]),
        client_id=str(row.get("remark") or ""),
        code=str(row.get("code", "")),
        side=BrokerSide.SELL if side in (TrdSide.SELL, TrdSide.SELL_SHORT) else BrokerSide.BUY,
        qty=to_decimal(row.get("qty")),
        price=to_decimal(row.get("price")),
        status=map_status(raw),
        filled_qty=filled,
        avg_fill_price=avg if filled > 0 and avg > 0 else None,
        raw_status=raw,
        last_error=str(row.get("last_err_msg") or ""),
        created_at=str(row.get("create_time") or ""),
        updated_at=str(row.get("updated_time") or ""),
    )


def quote_from_snapshot(
    row: Mapping[str, Any],
    *,
    code: str,
    currency: str,
    market_state: str,
    fill_outside_rth: bool,
) -> Quote:
    """One row of `get_market_snapshot` and the security's market state (from
    `get_global_state`) -> a Quote. The market counts as open in the regular sessions, and
    in the extended ones too when orders may fill outside regular trading hours."""
    open_states = OPEN_MARKET_STATES | (EXTENDED_MARKET_STATES if fill_outside_rth else frozenset())
    suspended = bool(row.get("suspension"))
    bid, ask = to_decimal(row.get("bid_price")), to_decimal(row.get("ask_price"))
    return Quote(
        code=code,
        price=to_decimal(row.get("last_price")),
        lot_size=int(row.get("lot_size") or 1),
        tick_size=to_decimal(row.get("price_spread")),
        currency=currency,
        market_open=market_state in open_states and not suspended,
        market_state=market_state,
        bid=bid or None,
        ask=ask or None,
        suspended=suspended,
    )


def funds_from_row(row: Mapping[str, Any], *, currency: str) -> Funds:
    """The one row of `accinfo_query`, asked in `currency`."""
    by_currency = {
        name: to_decimal(row.get(column))
        for name, column in (("USD", "us_cash"), ("HKD", "hk_cash"))
        if row.get(column) not in (None, "N/A")
    }
    return Funds(
        currency=currency,
        cash=to_decimal(row.get("cash")),
        power=to_decimal(row.get("power")),
        total_assets=to_decimal(row.get("total_assets")),
        frozen_cash=to_decimal(row.get("frozen_cash")),
        market_value=to_decimal(row.get("market_val")),
        cash_by_currency=by_currency,
    )


def position_from_row(row: Mapping[str, Any]) -> Position:
    """One row of `position_list_query`."""
    return Position(
        code=str(row["code"]),
        qty=to_decimal(row.get("qty")),
        can_sell_qty=to_decimal(row.get("can_sell_qty")),
        cost_price=to_decimal(row.get("cost_price")) if row.get("cost_price") != "N/A" else None,
        market_value=to_decimal(row.get("market_val")),
        currency=str(row.get("currency") or ""),
    )
