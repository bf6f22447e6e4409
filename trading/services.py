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

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from trading import pricing
from trading.broker import BrokerOrder, Quote, Side
from trading.exceptions import BrokerRejected, DepositTooSmall, MarketClosed, NoQuote
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
    "BuyPlan",
    "broker_order_abandon",
    "broker_order_cancel",
    "broker_order_fees_record",
    "broker_order_submit",
    "broker_order_sync",
    "broker_orders_watch",
    "SellPlan",
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
    "plan_buy",
    "plan_sell",
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


@dataclass(frozen=True)
class BuyPlan:
    quote: Quote
    limit_price: Decimal
    qty: Decimal
    max_cost: Decimal  # market currency, fees included, if filled in full at the limit
    max_cost_usdt_units: int


@dataclass(frozen=True)
class SellPlan:
    quote: Quote
    limit_price: Decimal
    qty: Decimal


def _tradable_quote(code: str) -> Quote:
    quote = broker_quote(code=code)
    if quote.suspended:
        raise NoQuote(f"{code} is suspended")
    if not quote.market_open:
        raise MarketClosed(f"{code}: market is {quote.market_state or 'closed'}")
    return quote


def plan_buy(*, code: str, usdt_units: int, slippage: Decimal | None = None) -> BuyPlan:
    """Quote, limit price and whole-lot quantity for a deposit. Raises MarketClosed, NoQuote
    or DepositTooSmall (with the reason the pipeline puts on the refund)."""
    quote = _tradable_quote(code)
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    limit = pricing.buy_limit_price(quote, slip)
    qty = pricing.size_buy(usdt_units=usdt_units, quote=quote, limit_price=limit)
    cost = pricing.buy_cost(code, qty, limit)
    return BuyPlan(
        quote=quote,
        limit_price=limit,
        qty=qty,
        max_cost=cost,
        max_cost_usdt_units=pricing.market_to_usdt_units(code, cost),
    )


def plan_sell(*, code: str, token_units: int, slippage: Decimal | None = None) -> SellPlan:
    """Quote, limit price and whole-lot quantity for a redeem. Raises MarketClosed, NoQuote,
    or DepositTooSmall when the tokens cover less than one lot (all are returned)."""
    quote = _tradable_quote(code)
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    qty = pricing.size_sell(token_units=token_units, quote=quote)
    if qty <= 0:
        raise DepositTooSmall(f"redeemed tokens cover less than one lot of {code}")
    return SellPlan(quote=quote, limit_price=pricing.sell_limit_price(quote, slip), qty=qty)
