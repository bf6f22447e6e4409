"""Orders that wait in the book for their market (closed, lunch break, holiday, a session
Bronco does not trade: `TRADING_SESSIONS_*`).

A cycle that finds its symbol's market closed marks the book's orders as waiting for the
market (once, audited as `order.waiting_for_market`). A waiting order outlives its deadline:
it leaves the book only by its expiry (`Order.expires_at`) or the user's cancel (a full
refund or return, no broker request); when the market opens it joins the first cycle, which
clears the mark and gives it a fresh deadline to fill in. The compensation scan never takes
booked orders (`orders.runs`), so nothing else refunds a waiting order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from orders.models import Order, Waiting
from orders.state import orders_record_many


def leaving_book(now: datetime, *, by_deadline: bool, deadline_by: datetime | None = None) -> Q:
    """Book orders that leave before a cycle: cancelled, expired, and with `by_deadline`
    (the market is known open, or no quote says it is closed) those whose deadline is at or
    before `deadline_by` (default `now`; earlier for the hard deadline) that are not waiting
    for their market."""
    leaving = Q(cancel_requested_at__isnull=False) | Q(expires_at__lte=now)
    if by_deadline:
        leaving |= Q(deadline__lte=deadline_by or now) & Q(waiting_for=Waiting.NOTHING)
    return leaving


def by_deadline_only(order: Order, now: datetime) -> bool:
    """True when `order` leaves the book by its deadline alone (neither cancelled nor
    expired)."""
    expired = order.expires_at is not None and order.expires_at <= now
    return order.cancel_requested_at is None and not expired


def unfilled_reason(order: Order, now: datetime | None = None) -> str:
    """Why an order leaves the book with something unfilled (its last_error)."""
    now = now or timezone.now()
    if order.cancel_requested_at is not None:
        return "cancelled by the user"
    if order.expires_at is not None and order.expires_at <= now:
        if order.waiting_for == Waiting.MARKET:
            return "the order expired while its market was closed"
        if order.waiting_for == Waiting.PRICE:
            return "the order expired before the price reached its bound"
        return "the order expired before it filled in full"
    return "the deadline passed before the order filled in full"


def book_wait_for_market(*, orders: QuerySet[Order], market_state: str, actor: str) -> int:
    """Mark the book's orders (`orders`, the symbol's book) that are not yet marked as
    waiting for the market, under their row locks (skipping locked ones: the next cycle
    marks them). Returns how many it marked."""
    now = timezone.now()
    with transaction.atomic():
        marking = list(
            orders.exclude(waiting_for=Waiting.MARKET)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("pk")
        )
        orders_record_many(
            orders=marking,
            actor=actor,
            action="order.waiting_for_market",
            waiting_for=Waiting.MARKET,
            waiting_since=now,
            last_error=f"waiting for the market to open (market state {market_state or 'closed'})",
        )
    return len(marking)


def joining_cycle(order: Order, now: datetime) -> dict:
    """The changes an order takes with it into a cycle: a waiting one stops waiting and gets
    a fresh deadline (ORDER_DEADLINE_SECONDS from now, never past its expiry)."""
    if order.waiting_for == Waiting.NOTHING:
        return {}
    deadline = now + timedelta(seconds=settings.ORDER_DEADLINE_SECONDS)
    if order.expires_at is not None:
        deadline = min(deadline, order.expires_at)
    return {
        "waiting_for": Waiting.NOTHING,
        "waiting_since": None,
        "deadline": deadline,
        "last_error": "",
    }
