"""Reads from the broker: quotes, orders, funds and positions, in Bronco's types."""

from __future__ import annotations

from trading.broker import BrokerOrder, Funds, Position, Quote
from trading.exceptions import NoQuote
from trading.session import get_broker


def broker_quote(*, code: str) -> Quote:
    """The current quote (snapshot price, lot size, tick, market state) for a Futu code.
    Raises NoQuote for an unknown code or a security without a price."""
    quote = get_broker().quote(code)
    if quote.price <= 0:
        raise NoQuote(f"{code} has no price")
    return quote


def broker_query_order(
    *,
    client_id: str | None = None,
    broker_order_id: str | None = None,
    include_history: bool = True,
) -> BrokerOrder | None:
    """The broker's view of one order, by our client id (Futu remark) or Futu's order id;
    None when the broker has no such order. A client id not among today's orders is looked
    for in past days too unless `include_history` is False: that look-up has its own small
    budget (10 per 30 s), so the place stage skips it for an order created minutes ago."""
    return get_broker().query_order(
        client_id=client_id, broker_order_id=broker_order_id, include_history=include_history
    )


def broker_list_orders() -> list[BrokerOrder]:
    """Today's orders of the account, for reconciliation."""
    return get_broker().list_orders()


def broker_funds(*, currency: str = "USD") -> Funds:
    return get_broker().funds(currency)


def broker_positions() -> list[Position]:
    return get_broker().positions()
