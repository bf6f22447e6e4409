"""Reads from the broker: quotes, orders, funds and positions, in Bronco's types."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from trading.broker import BrokerOrder, Funds, OrderFee, Position, Quote
from trading.exceptions import BrokerUnavailable, NoQuote, RateLimited
from trading.session import get_broker

if TYPE_CHECKING:
    from trading.models import BrokerOrderRecord

logger = logging.getLogger(__name__)


def broker_quote(*, code: str) -> Quote:
    """The current quote (snapshot price, lot size, tick, market state) for a Futu code.
    Raises NoQuote for an unknown code or a security without a price."""
    quote = get_broker().quote(code)
    if quote.price <= 0:
        raise NoQuote(f"{code} has no price")
    return quote


def broker_quotes(*, codes: list[str]) -> dict[str, Quote]:
    """Quotes for many codes from one snapshot request (per 400 codes); a code without a
    price is absent from the result."""
    return {c: q for c, q in get_broker().quotes(list(codes)).items() if q.price > 0}


def broker_query_order(
    *,
    client_id: str | None = None,
    broker_order_id: str | None = None,
    include_history: bool = True,
    since: datetime | None = None,
) -> BrokerOrder | None:
    """The broker's view of one order, by our client id (Futu remark) or Futu's order id;
    None when the broker has no such order. Futu's open list holds unfinished orders only:
    a finished one is found in the history (around `since`) unless `include_history` is
    False; that look-up has its own budget (10 per 30 s)."""
    return get_broker().query_order(
        client_id=client_id,
        broker_order_id=broker_order_id,
        include_history=include_history,
        since=since,
    )


def broker_list_orders(
    *, include_finished: bool = False, since: datetime | None = None
) -> list[BrokerOrder]:
    """The account's unfinished orders (Futu's open list, OpenD's cache, not rate
    limited); with `include_finished`, every order since `since` (default: the last 90
    days) from Futu's history, one request of its budget (10 per 30 s)."""
    if include_finished:
        return get_broker().list_history_orders(since=since)
    return get_broker().list_orders()


def broker_funds(*, currency: str = "USD") -> Funds:
    return get_broker().funds(currency)


def broker_positions() -> list[Position]:
    return get_broker().positions()


def broker_order_fees(*, client_ids: list[str]) -> dict[str, Decimal]:
    """The broker's own fee (market currency) per client id, as recorded from Futu's
    `order_fee_query` once each order was final; the client ids without a recorded fee are
    asked of the broker in one request (the query takes many order ids; 10 requests per
    30 s) and left out when the broker cannot say. Reads only."""
    from trading.models import BrokerOrderRecord

    records = BrokerOrderRecord.objects.filter(client_id__in=client_ids).exclude(broker_order_id="")
    fees, read = broker_order_fees_read(records=list(records), final_only=False)
    for record, found in read:
        fees[record.client_id] = found.total
    return fees


def broker_order_fees_read(
    *, records: list[BrokerOrderRecord], final_only: bool
) -> tuple[dict[str, Decimal], list[tuple[BrokerOrderRecord, OrderFee]]]:
    """Split `records` into the fees already recorded (client id -> fee, market currency)
    and the ones read now from Futu in one `order_fee_query` request (10 per 30 s), as
    (record, itemised fee) pairs; with `final_only`, only orders that are final are asked.
    Orders the broker cannot tell about now (over the budget, unreachable, unknown) are in
    neither. Writes nothing."""
    fees = {r.client_id: r.fee for r in records if r.fee is not None}
    missing = [r for r in records if r.fee is None and (r.final_at is not None or not final_only)]
    if not missing:
        return fees, []
    try:
        read = get_broker().order_fees(broker_order_ids=[r.broker_order_id for r in missing])
    except (RateLimited, BrokerUnavailable) as exc:
        logger.info("fees of %d orders not read yet: %s", len(missing), exc)
        return fees, []
    found = [(r, read[r.broker_order_id]) for r in missing if read.get(r.broker_order_id)]
    return fees, found
    try:
        read = get_broker().order_fees(broker_order_ids=list(missing))
    except (RateLimited, BrokerUnavailable):
        return fees
    for broker_order_id, found in read.items():
        if broker_order_id in missing and found is not None:
            fees[missing[broker_order_id]] = found.total
    return fees
