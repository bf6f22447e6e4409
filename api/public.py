"""The public view of an order: what the chain already makes public, in the seed's terms.

Left out on purpose: the broker's ids (Futu order id, our remark), operators' names (audit
actors), error texts and hold reasons (they may quote the broker), internal run bookkeeping.
Amounts are decimal strings in whole units (USDT: 6 decimals, shares: 18), never floats.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from core.models import AuditLog
from core.money import TOKEN_DECIMALS, USDT_DECIMALS
from orders.selectors import Order, OrderStatus, OrderType, allocations_of

# The seed's five statuses. SETTLING (Bronco's own: traded, settlement on chain not yet
# confirmed) is still EXECUTING in the seed's terms; `stage` carries Bronco's finer status.
SEED_STATUS = {
    OrderStatus.PENDING: "PENDING",
    OrderStatus.EXECUTING: "EXECUTING",
    OrderStatus.SETTLING: "EXECUTING",
    OrderStatus.EXECUTED: "EXECUTED",
    OrderStatus.CANCELED: "CANCELED",
    OrderStatus.FAILED: "FAILED",
}

# Audit actions shown on the timeline -> (stage name, what it means to the user). Any other
# action (operators' retries, run bookkeeping) is internal and left out.
TIMELINE_STAGES: dict[str, tuple[str, str]] = {
    "order.created": ("seen", "Bronco saw the transaction on chain"),
    "order.refused": ("refused", "Refused (e.g. below the minimum); everything is refunded"),
    "order.canceled_before_trade": ("canceled", "Canceled before trading; refunded in full"),
    "order.booked": ("booked", "Waiting in the book for the next cycle"),
    "order.joined_cycle": ("in_cycle", "Taking part in a netting cycle"),
    "order.carried_over": ("carried_over", "Filled in part; the rest waits for the next cycle"),
    "order.left_book": ("left_book", "Left the book (deadline, cancel or closed market)"),
    "order.cancel_requested": ("cancel_requested", "Cancel requested"),
    "order.operator_cancel_requested": ("cancel_requested", "Cancel requested"),
    "order.finalized": ("settling", "Trading done; settlement on chain is being prepared"),
    "order.settlement_sent": ("settlement_sent", "Settlement transaction sent"),
    "order.settled": ("settled", "Settlement confirmed on chain"),
    "order.settlement_reverted": ("settlement_reverted", "Settlement reverted; sent again"),
    "order.held": ("held", "On hold (chain reorganisation or vault refusal)"),
    "order.hold_released": ("released", "Hold released"),
    "order.closed_vanished": ("vanished", "Its transaction left the chain (reorganisation)"),
    "order.revived": ("revived", "Its transaction came back on chain; the order settles"),
    "order.manual_refund": ("refund_requested", "A refund was requested"),
    "refund.sent": ("refund_sent", "Refund transaction sent"),
    "refund.confirmed": ("refund_confirmed", "Refund confirmed on chain"),
}


def usdt(units: int | Decimal) -> str:
    """USDT base units -> '12.345678'."""
    return f"{Decimal(int(units)).scaleb(-USDT_DECIMALS):f}"


def shares(units: int | Decimal) -> str:
    """Token units (10^-18 share) -> '1.500000000000000000'."""
    return f"{Decimal(int(units)).scaleb(-TOKEN_DECIMALS):f}"


def price_str(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def kind_of(order: Order) -> str:
    return "deposit" if order.order_type == OrderType.BUY else "redeem"


def _timelines(order_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    rows = (
        AuditLog.objects.filter(order_id__in=order_ids, action__in=TIMELINE_STAGES)
        .order_by("seq")
        .values_list("order_id", "action", "created_at", "after")
    )
    for order_id, action, at, after in rows:
        stage, description = TIMELINE_STAGES[action]
        status = (after or {}).get("status")
        out[order_id].append(
            {
                "stage": stage,
                "description": description,
                "status": SEED_STATUS.get(status) if status else None,
                "at": _iso(at),
            }
        )
    return out


def _cycles(order_ids: list[int]) -> tuple[dict[int, list[dict]], dict[int, int]]:
    out: dict[int, list[dict]] = defaultdict(list)
    traded: dict[int, int] = defaultdict(int)
    rows = allocations_of(order_ids=order_ids).values_list(
        "order_id",
        "cycle_id",
        "cycle__price",
        "cycle__ccy_per_usdt",
        "token_units",
        "usdt_units",
        "fee_units",
        "cycle__allocated_at",
    )
    for order_id, cycle_id, price, fx, token_units, usdt_units, fee_units, at in rows:
        traded[order_id] += int(token_units)
        out[order_id].append(
            {
                "cycle": cycle_id,
                "price": price_str(price),
                "currency_per_usdt": price_str(fx),
                "shares": shares(token_units),
                "usdt": usdt(usdt_units),
                "fee_usdt": usdt(fee_units),
                "at": _iso(at),
            }
        )
    return out, traded


def orders_public(orders: Iterable[Order]) -> list[dict]:
    """Each order's public view (see the module doc), in the given order, with its timeline
    (from the audit trail) and its cycles (from its allocations): three queries in all."""
    orders = list(orders)
    ids = [o.pk for o in orders]
    timelines = _timelines(ids)
    cycles, traded = _cycles(ids)
    return [
        _one(o, timelines.get(o.pk, []), cycles.get(o.pk, []), traded.get(o.pk, 0)) for o in orders
    ]


def _one(order: Order, timeline: list[dict], cycles: list[dict], traded_units: int) -> dict:
    """`traded_units`: token units its cycles allocated (bought or sold) so far."""
    buy = order.order_type == OrderType.BUY
    return {
        "kind": kind_of(order),
        "vault_id": str(int(order.onchain_id)),
        "chain_id": order.chain_id,
        "tx_hash": order.chain_tx_hash,
        "log_index": order.log_index,
        "address": order.user_address,
        "symbol": order.symbol,
        "code": order.stock_code,
        "status": SEED_STATUS[order.status],
        "stage": order.status,
        "held": order.held_at is not None,
        "deposited_usdt": usdt(order.usdt_amount) if buy else None,
        "redeemed_shares": None if buy else shares(order.token_amount),
        "price": price_str(order.avg_fill_price),
        "usdt_spent": usdt(order.cost_usdt) if buy else None,
        "usdt_proceeds": None if buy else usdt(order.cost_usdt),
        "fees_usdt": usdt(order.fees_usdt),
        "shares_minted": shares(order.tokens_minted) if buy else None,
        "shares_sold": None if buy else shares(traded_units),
        "shares_returned": None if buy else shares(order.tokens_returned),
        "usdt_refunded": usdt(int(order.refund_usdt) + int(order.manual_refund_usdt)),
        "usdt_paid": None if buy else usdt(order.payout_usdt),
        "settlement_tx": order.settlement_tx_hash or None,
        "cycles": cycles,
        "timeline": timeline,
        "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at),
    }
