"""Reconciliation, the database side: the orders in scope and their own arithmetic
(invariant 3: conservation inside each order; invariant 2: no order stuck open)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

from chain.models import SettlementStatus, SettlementTx
from orders.models import TERMINAL_STATUSES, Allocation, Order, OrderStatus, OrderType
from orders.services import vanished_last_actions

if TYPE_CHECKING:
    from ops.reconciliation import Reconciliation


def read_orders(*, stuck_after: float) -> tuple[list[Order], set[int]]:
    """This chain's orders by pk, and the pks of those still in flight (open and younger than
    `stuck_after` seconds: not yet settled rather than wrong)."""
    orders = list(Order.objects.filter(chain_id=settings.CHAIN_ID).order_by("pk"))
    now = timezone.now()
    in_flight = {
        o.pk
        for o in orders
        if o.status not in TERMINAL_STATUSES and now - o.created_at < timedelta(seconds=stuck_after)
    }
    return orders, in_flight


def vanished_order_ids() -> set[int]:
    """Pks of the orders closed because their Deposit / Redeem vanished in a reorg (audit
    action `order.closed_vanished`, written by `orders.services.order_close_vanished`): the
    request is not on chain, so no USDT or tokens came in for them and nothing may be paid
    out; they are left out of the per-order conservation and of the vault's ledger. An order
    revived after that (`order.revived`: its request was mined again) counts as any."""
    latest = vanished_last_actions()
    return {pk for pk, entry in latest.items() if entry.action == "order.closed_vanished"}


def manual_refund(order: Order) -> int:
    """USDT refunded by operators before settlement (the refunds app), when the schema has
    it: paid by the vault apart from the deposit's settlement."""
    return int(getattr(order, "manual_refund_usdt", 0) or 0)


def manual_refunds_paid() -> int:
    """USDT the vault paid for manual refunds, by the settlement records of kind refund."""
    return sum(
        int(amount)
        for amount in SettlementTx.objects.filter(
            chain_id=settings.CHAIN_ID, kind="refund", status=SettlementStatus.CONFIRMED
        ).values_list("usdt_amount", flat=True)
    )


def order_label(order: Order) -> str:
    kind = "deposit" if order.order_type == OrderType.BUY else "redeem"
    return f"order {order.pk} ({kind} {int(order.onchain_id)}, {order.symbol})"


def settlement_amounts(order: Order) -> tuple[int, int]:
    """(USDT, tokens) the vault must have paid for this order's settlement."""
    if order.order_type == OrderType.BUY:
        return order.refund_usdt, order.tokens_minted
    return order.payout_usdt, order.tokens_returned


def check_orders(
    result: Reconciliation,
    orders: list[Order],
    in_flight: set[int],
    stuck_after: float,
    vanished: set[int] | None = None,
) -> None:
    """Per order: a terminal status is its outcome, no open order is stuck, and what came in
    is what went out. An order whose request vanished in a reorg (`vanished`, default
    `vanished_order_ids()`) took nothing in, so only its status and that it paid nothing
    (no manual refund) are checked; shares its cycles bought for it are the operator's
    (alert `order.vanished_traded`) and noted."""
    if vanished is None:
        vanished = vanished_order_ids()
    allocated: dict[int, int] = {}
    for order_id, units in Allocation.objects.filter(order__in=orders).values_list(
        "order_id", "token_units"
    ):
        allocated[order_id] = allocated.get(order_id, 0) + int(units)
    for o in orders:
        if o.status in TERMINAL_STATUSES and o.outcome != o.status:
            result.add("db", order_label(o), f"status {o.status} but outcome {o.outcome or '-'}")
        if o.status not in TERMINAL_STATUSES and o.pk not in in_flight:
            result.add(
                "db", order_label(o), f"still {o.status} after {stuck_after:.0f}s (stuck order)"
            )
        if not o.outcome:
            continue
        if o.pk in vanished:
            _check_vanished(result, o, allocated.get(o.pk, 0))
            continue
        # What the order's netting cycles allocated to it, in 10^-18 share units.
        sold_or_bought = allocated.get(o.pk, 0)
        if o.order_type == OrderType.BUY:
            manual = manual_refund(o)
            charged = o.cost_usdt + o.fees_usdt + o.refund_usdt + manual
            if charged != o.usdt_amount:
                result.add(
                    "db",
                    order_label(o),
                    f"USDT in {o.usdt_amount} != cost {o.cost_usdt} + fees {o.fees_usdt} "
                    f"+ refund {o.refund_usdt}"
                    + (f" + manual refunds {manual}" if manual else "")
                    + f" (= {charged})",
                )
            if o.tokens_minted != sold_or_bought:
                result.add(
                    "db",
                    order_label(o),
                    f"tokens minted {o.tokens_minted} != {sold_or_bought} allocated by its cycles",
                )
        else:
            if sold_or_bought + o.tokens_returned != o.token_amount:
                result.add(
                    "db",
                    order_label(o),
                    f"tokens in {o.token_amount} != sold {sold_or_bought} + returned "
                    f"{o.tokens_returned}",
                )
            if o.payout_usdt != o.cost_usdt - o.fees_usdt:
                result.add(
                    "db",
                    order_label(o),
                    f"payout {o.payout_usdt} != proceeds {o.cost_usdt} - fees {o.fees_usdt}",
                )


def _check_vanished(result: Reconciliation, order: Order, allocated: int) -> None:
    """An order closed as vanished: FAILED, and no manual refund paid for it (nothing came
    in). Its settlement amounts may hold what a settlement refused after the reorg would have
    paid; the chain side checks that nothing was."""
    if order.status != OrderStatus.FAILED:
        result.add("db", order_label(order), f"closed as vanished in a reorg but {order.status}")
    if manual := manual_refund(order):
        result.add(
            "db",
            order_label(order),
            f"closed as vanished in a reorg (nothing came in), yet manually refunded {manual}",
        )
    if allocated or order.cost_usdt:
        result.notes.append(
            f"{order_label(order)}: its request vanished in a reorg after it traded "
            f"({allocated} share units allocated, cost {order.cost_usdt} USDT units): the "
            "position is the operator's to unwind"
        )
