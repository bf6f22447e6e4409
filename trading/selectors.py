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
    *, client_id: str | None = None, broker_order_id: str | None = None
) -> BrokerOrder | None:
    """The broker's view of one order, by our client id (Futu remark) or Futu's order id;
    None when the broker has no such order."""
    return get_broker().query_order(client_id=client_id, broker_order_id=broker_order_id)


def broker_funds(*, currency: str = "USD") -> Funds:
    return get_broker().funds(currency)


def broker_positions() -> list[Position]:
    return get_broker().positions()
