"""Broker writes and business rules. The order pipeline calls only these (and the reads in
`trading.selectors`, re-exported here): keyword-only, Bronco types in and out.

Idempotency: placing is keyed by `client_id` (Futu remark). `broker_order_submit` (in
`trading.order_records`) records the attempt before calling Futu and, on any retry, looks
the remark up in the open list and the history first: calling it twice for one client id,
from any process, whatever crashed in between, leaves one order at the broker. Follow the
order with `broker_order_sync`, cancel it with `broker_order_cancel` (re-sent until it
takes). Over Futu's request budget a call either waits briefly or raises
RateLimited(retry_after): the caller re-schedules, the work never fails for it.
"""

from __future__ import annotations

from decimal import Decimal

from trading.broker import BrokerOrder, Side
from trading.exceptions import BrokerRejected
from trading.order_records import (
    BrokerOrderState,
    broker_order_abandon,
    broker_order_cancel,
    broker_order_fees_record,
    broker_order_submit,
    broker_order_sync,
    broker_orders_watch,
)
from trading.selectors import (
    broker_funds,
    broker_list_orders,
    broker_order_fees,
    broker_positions,
    broker_query_order,
    broker_quote,
    broker_quotes,
)
from trading.session import (
    get_broker,
    register_order_update_callback,
    reset_broker,
    unregister_order_update_callback,
)

__all__ = [
    "BrokerOrderState",
    "broker_order_abandon",
    "broker_order_cancel",
    "broker_order_fees_record",
    "broker_order_submit",
    "broker_order_sync",
    "broker_orders_watch",
    "broker_cancel_order",
    "broker_funds",
    "broker_list_orders",
    "broker_order_fees",
    "broker_place_order",
    "broker_positions",
    "broker_query_order",
    "broker_quote",
    "broker_quotes",
    "get_broker",
    "register_order_update_callback",
    "reset_broker",
    "unregister_order_update_callback",
]


def broker_place_order(
    *,
    client_id: str,
    code: str,
    side: str,
    qty: Decimal,
    limit_price: Decimal,
    lookup: bool = True,
) -> BrokerOrder:
    """The one call that reaches Futu's place_order (with `lookup`, after asking the open
    list for the remark). Use `broker_order_submit`: only it records the attempt and asks
    the history on a retry. Raises RateLimited, BrokerRejected or BrokerUnavailable."""
    if qty <= 0 or limit_price <= 0:
        raise BrokerRejected(f"quantity {qty} and limit price {limit_price} must be positive")
    return get_broker().place_order(
        client_id=client_id,
        code=code,
        side=Side(side),
        qty=qty,
        limit_price=limit_price,
        lookup=lookup,
    )


def broker_cancel_order(
    *, client_id: str | None = None, broker_order_id: str | None = None
) -> BrokerOrder:
    """Cancel by our client id or Futu's order id. Idempotent: an order that is already
    final comes back as it is. Raises BrokerRejected when the broker has no such order."""
    if bool(client_id) == bool(broker_order_id):
        raise ValueError("give exactly one of client_id and broker_order_id")
    broker = get_broker()
    if client_id:
        order = broker.query_order(client_id=client_id)
        if order is None:
            raise BrokerRejected(f"no broker order carries client id {client_id}")
        if order.is_final:
            return order
        broker_order_id = order.broker_order_id
    assert broker_order_id is not None
    return broker.cancel_order(broker_order_id=broker_order_id)
