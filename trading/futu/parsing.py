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

from trading.broker import (
    BrokerOrder,
    BrokerStatus,
    Deal,
    DealStatus,
    Funds,
    OrderFee,
    Position,
    Quote,
)
from trading.broker import Side as BrokerSide
from trading.exceptions import (
    BrokerRejected,
    BrokerSessionFault,
    BrokerUnavailable,
    InsufficientBuyingPower,
    RateLimited,
    TradingError,
)
from trading.market_calendar import session_of_state

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
    # Disabled orders rest inactive and can be enabled again from outside (another client,
    # the app): not final. Bronco cancels a disabled order explicitly (`broker_order_sync`).
    OrderStatus.DISABLED: BrokerStatus.DISABLED,
    # Only orders without fills can be deleted.
    OrderStatus.DELETED: BrokerStatus.CANCELLED,
    # The exchange reversed the fills after the fact; the order is void (nothing filled).
    OrderStatus.FILL_CANCELLED: BrokerStatus.FILL_CANCELLED,
}


# OpenD answers in the language it is configured with (Chinese or English); the SDK's own
# transport errors are English ("Connection lost", "Timeout", "Not connected", "Connection
# closed": futu/common/err.py). The SDK hands back only the text (the response's errCode
# is not surfaced by `place_order` & co.), so classes are told apart by text, both languages.
_RATE_LIMITED = re.compile(r"frequen|频繁|频率|限频|too many requests", re.IGNORECASE)
_DISCONNECTED = re.compile(
    r"connection lost|not connected|connection closed|disconnect|timeout|time out|timed out|"
    r"context status bad|send ?fail|connect fail|network (error|failure)|"
    r"packet ?err|invalid packet|system busy|"
    r"连接断开|断开连接|未连接|连接失败|连接已关闭|连接中断|网络异常|网络错误|网络中断|超时|"
    r"系统繁忙",
    re.IGNORECASE,
)
_UNLOCK_FAILED = re.compile(
    r"unlock failed|wrong (trade )?password|password (is )?(wrong|incorrect)|"
    r"解锁失败|密码错误|交易密码",
    re.IGNORECASE,
)
_LOCKED = re.compile(
    r"trade is locked|not unlocked|unlock trade first|please unlock|"
    r"未解锁|请先解锁|交易已锁定|交易锁定",
    re.IGNORECASE,
)
_BUYING_POWER = re.compile(
    r"insufficient buying power|buying power is insufficient|not enough (cash|buying power)|"
    r"购买力不足|资金不足|可用资金不足",
    re.IGNORECASE,
)


def map_status(raw: str) -> BrokerStatus:
    """Futu's status string -> Bronco's; a status this code does not know is UNKNOWN (not
    final), so an SDK upgrade can never make an order look finished."""
    return FUTU_STATUS_MAP.get(raw, BrokerStatus.UNKNOWN)


def classify_error(message: str, *, retry_after: float = 1.0) -> TradingError:
    """An SDK error message -> the domain exception it means. Only what is none of the
    known transient or session classes is a rejection (and only a rejection refunds)."""
    text = str(message)
    if _RATE_LIMITED.search(text):
        return RateLimited(retry_after, f"Futu rate limit: {text}")
    if _DISCONNECTED.search(text):
        return BrokerUnavailable(f"OpenD unavailable: {text}")
    if _UNLOCK_FAILED.search(text):
        return BrokerSessionFault(f"unlock failed: {text}")
    if _LOCKED.search(text):
        return BrokerSessionFault(f"trading is locked: {text}")
    if _BUYING_POWER.search(text):
        return InsufficientBuyingPower(f"insufficient buying power: {text}")
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


def deal_from_row(row: Mapping[str, Any]) -> Deal:
    """One row of `deal_list_query` / `history_deal_list_query` or a deal push."""
    status = str(row.get("status") or "OK")
    side = str(row.get("trd_side", ""))
    return Deal(
        deal_id=str(row.get("deal_id")),
        broker_order_id=str(row.get("order_id")),
        code=str(row.get("code", "")),
        side=BrokerSide.SELL if side in (TrdSide.SELL, TrdSide.SELL_SHORT) else BrokerSide.BUY,
        qty=to_decimal(row.get("qty")),
        price=to_decimal(row.get("price")),
        status=DealStatus(status) if status in DealStatus.__members__ else DealStatus.OK,
        created_at=str(row.get("create_time") or ""),
    )


def fee_from_row(row: Mapping[str, Any]) -> OrderFee:
    """One row of `order_fee_query`: total and (title, amount) items."""
    items = tuple((str(title), to_decimal(value)) for title, value in row.get("fee_details") or [])
    total = to_decimal(row.get("fee_amount"))
    return OrderFee(
        broker_order_id=str(row["order_id"]),
        total=total if total > 0 else sum((v for _, v in items), Decimal(0)),
        items=items,
    )


def quote_from_snapshot(
    row: Mapping[str, Any],
    *,
    code: str,
    currency: str,
    market_state: str,
    sessions: frozenset[str],
) -> Quote:
    """One row of `get_market_snapshot` and the security's market state (from
    `get_market_state`) -> a Quote. The market counts as open when the state belongs to one
    of `sessions`, the sessions Bronco trades in this security's market
    (`trading.market_calendar`: REGULAR, PRE_MARKET, AFTER_HOURS, OVERNIGHT)."""
    suspended = bool(row.get("suspension"))
    bid, ask = to_decimal(row.get("bid_price")), to_decimal(row.get("ask_price"))
    return Quote(
        code=code,
        price=to_decimal(row.get("last_price")),
        lot_size=int(row.get("lot_size") or 1),
        tick_size=to_decimal(row.get("price_spread")),
        currency=currency,
        market_open=session_of_state(market_state) in sessions and not suspended,
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
