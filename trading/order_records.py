"""Broker orders by client id: submit (never twice), follow, cancel until it takes.

These work for any client id (a Bronco order's today, a netting cycle's later): the state
lives in `trading.models.BrokerOrderRecord`, never in the caller's rows.

Guarantees, under Futu's documented listing (the open list holds unfinished orders only;
finished ones are in the history, https://openapi.futunn.com/futu-api-doc/en/trade/get-order-list.html
and .../get-history-order-list.html):

- `broker_order_submit` commits the attempt (count, time, a short lease) *before* calling
  Futu, in its own transaction; it must not run inside one. A later call for the same
  client id that finds an earlier attempt looks the remark up in the open list and in the
  history over a window covering the first attempt before placing again, so a worker
  killed between "Futu accepted" and "saved" never doubles the order, even when the order
  filled (or failed) at once and left the open list. Concurrent callers serialise on the
  lease (a conditional UPDATE): the loser gets PlacementInFlight and retries.
- `broker_order_cancel` re-sends a cancel that was acknowledged but did not take, after a
  grace period that doubles each time, at most `TRADING_CANCEL_MAX_REQUESTS` times, then
  opens an operator alert (py-futu-api issue 248: check that a cancel took).
- `broker_order_sync` takes fills from deals (a cancelled deal counts for nothing, a
  changed one at its new values), cancels a DISABLED order explicitly, reads the broker's
  itemised fee once the order is final, and keeps watching a final order until
  `watch_until`: a fill that changes after the order was final opens a critical alert and
  a `BrokerFillCorrection` case for operators (`trading.corrections` turns it into what
  the vault owes or is owed once the fill is allocated).
- Pushes (`broker_order_pushed`, `broker_deal_pushed`, once per update across processes):
  a final status is recorded at once, so a finished order's sync reads only OpenD's cache;
  a deal changed after the order was final re-syncs it now. `broker_orders_watch` (beat)
  follows final orders until `watch_until` within its share of the history budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.alerts import AlertSeverity, alert_raise
from trading.broker import (
    FINAL_STATUSES,
    Broker,
    BrokerOrder,
    BrokerStatus,
    Deal,
    Side,
    fill_from_deals,
    filled_by_deals,
)
from trading.corrections import fill_corrections_assess
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    InsufficientBuyingPower,
    PlacementInFlight,
    RateLimited,
)
from trading.models import BrokerFillCorrection, BrokerOrderRecord
from trading.pricing import currency_of
from trading.selectors import broker_order_fees_read
from trading.session import get_broker

logger = logging.getLogger(__name__)

SOURCE = "trading.order_records"
# Deals of an order placed longer ago than this are read from the deal history (rate
# limited), not only from today's deal list (the Futu adapter's `deals`).
DEALS_TODAY_HOURS = 12


@dataclass(frozen=True)
class BrokerOrderState:
    """The broker's view of a client id's order, fills taken from its deals.

    `is_final`: no fill can follow (FILLED, CANCELLED, FAILED, FILL_CANCELLED);
    `watching`: final, but its fills may still be corrected until `watch_until`."""

    client_id: str
    order: BrokerOrder
    fee: Decimal | None
    watch_until: datetime | None

    @property
    def broker_order_id(self) -> str:
        return self.order.broker_order_id

    @property
    def status(self) -> BrokerStatus:
        return self.order.status

    @property
    def filled_qty(self) -> Decimal:
        return self.order.filled_qty

    @property
    def avg_fill_price(self) -> Decimal | None:
        return self.order.avg_fill_price

    @property
    def is_final(self) -> bool:
        return self.order.is_final

    @property
    def watching(self) -> bool:
        return self.is_final and self.watch_until is not None and timezone.now() < self.watch_until


def _place(**kwargs: object) -> BrokerOrder:
    # Through the module attribute, so a test can wrap the one call that reaches Futu.
    from trading import services

    return services.broker_place_order(**kwargs)  # type: ignore[arg-type]


def _check_outside_transaction(what: str) -> None:
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError(
            f"{what} must run outside a transaction: its attempt is committed before Futu "
            "is called, or a crash would forget it"
        )


def _adopt(record: BrokerOrderRecord, order: BrokerOrder) -> None:
    BrokerOrderRecord.objects.filter(pk=record.pk).update(
        broker_order_id=order.broker_order_id,
        placed_at=Coalesce(F("placed_at"), F("last_attempt_at"), timezone.now()),
        status=str(order.status),
        raw_status=order.raw_status,
        attempt_lease_until=None,
        updated_at=timezone.now(),
    )
    record.refresh_from_db()


def _release(record: BrokerOrderRecord, **changes: object) -> None:
    BrokerOrderRecord.objects.filter(pk=record.pk).update(
        attempt_lease_until=None, updated_at=timezone.now(), **changes
    )


def broker_order_submit(
    *,
    client_id: str,
    code: str,
    side: str,
    qty: Decimal,
    limit_price: Decimal,
    fee: bool = True,
) -> BrokerOrderState:
    """Place one DAY limit order tagged `client_id`, once, whatever crashes and retries.

    Returns the broker's order (an earlier attempt's, when one reached the broker). Raises
    BrokerRejected (the broker refused: nothing exists; only this should refund),
    InsufficientBuyingPower (the account is short now: wait, an alert is open),
    RateLimited / PlacementInFlight (retry after `retry_after`), BrokerUnavailable
    (outcome unknown: retry; the next call looks in the history first). Must be called
    outside a transaction. `fee=False`: an order final at once leaves its fee for
    `broker_order_fees_record`."""
    _check_outside_transaction("broker_order_submit")
    side = str(Side(side))
    if qty <= 0 or limit_price <= 0:
        raise BrokerRejected(f"quantity {qty} and limit price {limit_price} must be positive")
    record, _ = BrokerOrderRecord.objects.get_or_create(
        client_id=client_id,
        defaults={"code": code, "side": side, "qty": qty, "limit_price": limit_price},
    )
    if (record.code, record.side, record.qty) != (code, side, qty):
        raise ValueError(
            f"client id {client_id} was submitted as {record.side} {record.qty} {record.code}"
        )
    if record.broker_order_id:
        state = broker_order_sync(client_id=client_id, fee=fee)
        if state is not None:
            return state
    if record.status == BrokerOrderRecord.ABANDONED:
        raise BrokerRejected(f"client id {client_id} was closed before it reached the broker")
    if record.status == "REJECTED":
        raise BrokerRejected(record.last_error or f"client id {client_id} was rejected")

    now = timezone.now()
    lease = timedelta(seconds=settings.TRADING_PLACE_ATTEMPT_LEASE_SECONDS)
    claimed = BrokerOrderRecord.objects.filter(
        Q(attempt_lease_until__isnull=True) | Q(attempt_lease_until__lte=now),
        pk=record.pk,
        broker_order_id="",
    ).update(
        attempts=F("attempts") + 1,
        first_attempt_at=Coalesce(F("first_attempt_at"), now),
        last_attempt_at=now,
        attempt_lease_until=now + lease,
        updated_at=now,
    )
    earlier_attempts = record.attempts
    record.refresh_from_db()
    if not claimed:
        if record.broker_order_id:
            state = broker_order_sync(client_id=client_id, fee=fee)
            if state is not None:
                return state
        wait = (record.attempt_lease_until or now) - now
        raise PlacementInFlight(
            f"client id {client_id} is being placed by another worker",
            retry_after=max(wait.total_seconds(), 0.05),
        )

    broker = get_broker()
    try:
        # An earlier attempt may have reached Futu, and its order may have finished at once:
        # then it is in the history only. Without an earlier attempt the open list suffices.
        # A read never rejects anything: an error text it cannot place means "outcome
        # unknown" (retry), or an order an earlier attempt placed would be taken for
        # refused and its cycle allocated with nothing filled, then placed again.
        try:
            found = broker.find_by_remark(
                client_id,
                code=code,
                since=record.first_attempt_at if earlier_attempts else None,
            )
        except BrokerRejected as exc:
            raise BrokerUnavailable(f"look-up of {client_id} before placing: {exc}") from exc
        if found is not None:
            logger.info(
                "client id %s is already broker order %s (%s): adopting it",
                client_id,
                found.broker_order_id,
                found.raw_status,
            )
            _adopt(record, found)
            return broker_order_sync(client_id=client_id, fee=fee) or BrokerOrderState(
                client_id, found, None, None
            )
        if side == Side.BUY and settings.TRADING_CHECK_BUYING_POWER:
            try:
                _check_buying_power(client_id=client_id, code=code, qty=qty, price=limit_price)
            except BrokerRejected as exc:
                raise BrokerUnavailable(f"buying power of the account: {exc}") from exc
        placed = _place(
            client_id=client_id,
            code=code,
            side=side,
            qty=qty,
            limit_price=limit_price,
            lookup=False,
        )
    except BrokerRejected as exc:
        _release(record, status="REJECTED", last_error=str(exc)[:2000])
        raise
    except InsufficientBuyingPower as exc:
        _release(record, last_error=str(exc)[:2000])
        _alert_buying_power(client_id=client_id, code=code, qty=qty, message=str(exc))
        raise
    except (BrokerUnavailable, RateLimited):
        _release(record)
        raise
    _adopt(record, placed)
    return broker_order_sync(client_id=client_id, fee=fee) or BrokerOrderState(
        client_id, placed, None, None
    )


def _check_buying_power(*, client_id: str, code: str, qty: Decimal, price: Decimal) -> None:
    """Raise InsufficientBuyingPower when the account's cash does not buy `qty` now. The
    funds (OpenD's cache, not rate limited) answer when they clearly cover the order (with
    a margin for fees); only a close call spends a request of acctradinginfo_query's
    budget (10 per 30 s) on the exact figure."""
    broker = get_broker()
    notional = qty * price
    if broker.funds(currency_of(code)).power >= notional * Decimal("1.02") + 100:
        return
    can_buy = broker.max_buy_qty(code=code, price=price)
    if can_buy < qty:
        raise InsufficientBuyingPower(
            f"{client_id}: the account buys {can_buy} {code} at {price}, {qty} asked",
            retry_after=settings.TRADING_BUYING_POWER_RETRY_SECONDS,
        )


def _alert_buying_power(*, client_id: str, code: str, qty: Decimal, message: str) -> None:
    alert_raise(
        key="broker_buying_power",
        message=f"broker account short of buying power; orders wait: {message}",
        severity=AlertSeverity.CRITICAL,
        source=SOURCE,
        details={"client_id": client_id, "code": code, "qty": str(qty)},
    )


def broker_order_abandon(*, client_id: str) -> BrokerOrderState | None:
    """Close a client id before it reaches the broker (the caller refunds it). Returns the
    broker's order instead when one exists (the caller follows and cancels it); None when
    the client id is closed and will never be placed. Raises PlacementInFlight while an
    attempt is under way, RateLimited / BrokerUnavailable when the broker cannot be asked."""
    _check_outside_transaction("broker_order_abandon")
    record, _ = BrokerOrderRecord.objects.get_or_create(
        client_id=client_id,
        defaults={
            "code": "",
            "side": Side.BUY,
            "qty": Decimal(1),
            "limit_price": Decimal(1),
            "status": BrokerOrderRecord.ABANDONED,
        },
    )
    if record.broker_order_id:
        return broker_order_sync(client_id=client_id)
    now = timezone.now()
    if record.attempt_lease_until is not None and record.attempt_lease_until > now:
        raise PlacementInFlight(
            f"client id {client_id} is being placed",
            retry_after=(record.attempt_lease_until - now).total_seconds(),
        )
    if record.attempts:
        found = get_broker().find_by_remark(
            client_id, code=record.code, since=record.first_attempt_at
        )
        if found is not None:
            _adopt(record, found)
            return broker_order_sync(client_id=client_id)
    BrokerOrderRecord.objects.filter(
        Q(attempt_lease_until__isnull=True) | Q(attempt_lease_until__lte=now),
        pk=record.pk,
        broker_order_id="",
    ).update(status=BrokerOrderRecord.ABANDONED, updated_at=now)
    record.refresh_from_db()
    if record.broker_order_id:
        return broker_order_sync(client_id=client_id)
    if record.status != BrokerOrderRecord.ABANDONED:
        raise PlacementInFlight(f"client id {client_id} is being placed", retry_after=1.0)
    return None


def broker_order_sync(*, client_id: str, fee: bool = True) -> BrokerOrderState | None:
    """The broker's order for `client_id` now, with fills from its deals; None when the
    broker has none (nothing placed, or an order the broker no longer knows). Records the
    state, cancels a DISABLED order, fetches the fee once final (unless `fee=False`: then
    `broker_order_fees_record` reads it later, many orders a request), and opens a
    correction case when fills change after the order was final."""
    record = BrokerOrderRecord.objects.filter(client_id=client_id).first()
    broker = get_broker()
    if record is None:
        found = broker.find_by_remark(client_id, include_history=True)
        if found is None:
            return None
        record = BrokerOrderRecord.objects.create(
            client_id=client_id,
            code=found.code,
            side=str(found.side),
            qty=found.qty,
            limit_price=found.price,
        )
        _adopt(record, found)
    if not record.broker_order_id:
        now = timezone.now()
        in_flight = record.attempt_lease_until is not None and record.attempt_lease_until > now
        if not record.attempts or in_flight:
            return None
        found = broker.find_by_remark(client_id, code=record.code, since=record.first_attempt_at)
        if found is None:
            return None
        _adopt(record, found)
    since = record.placed_at or record.first_attempt_at or record.created_at
    deals = broker.deals(broker_order_id=record.broker_order_id, code=record.code, since=since)
    filled, avg = fill_from_deals(deals)
    # Its deals fill it in full: FILLED, final, without asking the open list or the history
    # (10 per 30 s, where a finished order is; the deal list is OpenD's cache).
    order = filled_by_deals(
        deals,
        broker_order_id=record.broker_order_id,
        client_id=record.client_id,
        code=record.code,
        side=Side(record.side),
        qty=record.qty,
        price=record.limit_price,
    )
    if order is None:
        # The open list (OpenD's cache, free) holds the order while it works. Once it left,
        # its final status is known from a push or an earlier sync, and only its fills may
        # still change (the deals): no history request. Only an order that finished unseen
        # costs one of the history's 10 per 30 s.
        order = _broker_view(broker, record, since=since)
        if order is None:
            return None
        if deals:
            order = replace(order, filled_qty=filled, avg_fill_price=avg)
        if _fills_not_listed(order):
            # A final status says it filled (a push recorded it) but the deal list does not
            # hold those fills yet: Futu's order push and its deal list are separate. Its
            # fills are the history's (one of its 10 per 30 s), never "nothing filled": the
            # 10,000-order chaos run allocated a cycle with 0 shares that had filled 83.
            listed = order
            order = broker.query_order(
                broker_order_id=record.broker_order_id, code=record.code, since=since
            )
            if order is None or not order.is_final or order.filled_qty < listed.filled_qty:
                # Not yet in the history either (or a listing older than the push): the
                # fills are on their way; the caller's next look finds them.
                raise BrokerUnavailable(
                    f"broker order {record.broker_order_id} is {listed.status} but its fills "
                    "are not listed yet"
                )
    if order.status == BrokerStatus.DISABLED:
        # Disabled orders can be enabled again from outside: cancel it for good.
        logger.warning("broker order %s is DISABLED: cancelling it", order.broker_order_id)
        return broker_order_cancel(client_id=client_id) or None
    return _record_state(record, order, fee=fee)


_FINAL = frozenset(str(status) for status in FINAL_STATUSES)


def _fills_not_listed(order: BrokerOrder) -> bool:
    """A final order whose status says it filled more than its fills show: FILLED below its
    quantity, or cancelled after a part filled (Futu's CANCELLED_PART) with nothing filled."""
    if order.status == BrokerStatus.FILLED:
        return order.filled_qty < order.qty
    return order.raw_status == "CANCELLED_PART" and order.filled_qty == 0


def _broker_view(
    broker: Broker, record: BrokerOrderRecord, *, since: datetime
) -> BrokerOrder | None:
    """The broker's order behind `record`, at the least cost: the open list (OpenD's cache,
    free) while it works; once it left, its final status as a push or an earlier look
    recorded it; only an order that finished unseen costs a history request (10 per 30 s,
    around `since`). None when the broker has no such order."""
    order = broker.query_order(
        broker_order_id=record.broker_order_id, code=record.code, include_history=False
    )
    if order is None and record.status in _FINAL:
        return _order_from_record(record)
    if order is None:
        return broker.query_order(
            broker_order_id=record.broker_order_id, code=record.code, since=since
        )
    return order


def _order_from_record(record: BrokerOrderRecord) -> BrokerOrder:
    """A finished order as Bronco last saw it (fills are taken from the deals after)."""
    return BrokerOrder(
        broker_order_id=record.broker_order_id,
        client_id=record.client_id,
        code=record.code,
        side=Side(record.side),
        qty=record.qty,
        price=record.limit_price,
        status=BrokerStatus(record.status),
        filled_qty=record.filled_qty,
        avg_fill_price=record.avg_fill_price,
        raw_status=record.raw_status,
        last_error=record.last_error,
    )


def _record_state(
    record: BrokerOrderRecord, order: BrokerOrder, *, fee: bool = True
) -> BrokerOrderState:
    now = timezone.now()
    with transaction.atomic():
        record = BrokerOrderRecord.objects.select_for_update().get(pk=record.pk)
        changed = order.filled_qty != record.filled_qty or (
            order.avg_fill_price is not None
            and record.avg_fill_price is not None
            and order.avg_fill_price.quantize(Decimal("1e-8")) != record.avg_fill_price
        )
        corrected = record.final_at is not None and changed
        if corrected:
            _open_correction(record, order)
        record.status = str(order.status)
        record.raw_status = order.raw_status
        record.filled_qty = order.filled_qty
        record.avg_fill_price = (
            order.avg_fill_price.quantize(Decimal("1e-8")) if order.avg_fill_price else None
        )
        record.last_error = order.last_error[:2000] if order.last_error else record.last_error
        if order.is_final and record.final_at is None:
            record.final_at = now
            record.watch_until = now + timedelta(seconds=settings.TRADING_FILL_WATCH_SECONDS)
        if order.is_final and changed and record.fee is not None:
            record.fee = None  # the fee follows the fills: read it again
        record.save()
    if corrected:
        fill_corrections_assess()
    if order.is_final and record.fee is None and record.filled_qty > 0 and fee:
        _fetch_fee(record)
    elif order.is_final and record.filled_qty == 0 and record.fee is None:
        BrokerOrderRecord.objects.filter(pk=record.pk).update(fee=Decimal(0))
        record.fee = Decimal(0)
    return BrokerOrderState(record.client_id, order, record.fee, record.watch_until)


def broker_order_fees_record(*, client_ids: list[str]) -> dict[str, Decimal]:
    """The broker's fee (market currency) of each final, filled order among `client_ids`:
    recorded ones as they are, the others read in one `order_fee_query` request and
    recorded. Client ids whose fee the broker cannot tell now (over the budget, unknown)
    are left out. Off any order's critical path: the users' prices never depend on it."""
    records = BrokerOrderRecord.objects.filter(client_id__in=client_ids).exclude(broker_order_id="")
    fees, read = broker_order_fees_read(records=list(records), final_only=True)
    for record, found in read:
        details = [[name, str(amount)] for name, amount in found.items]
        BrokerOrderRecord.objects.filter(pk=record.pk, fee__isnull=True).update(
            fee=found.total, fee_details=details, updated_at=timezone.now()
        )
        fees[record.client_id] = found.total
    return fees


def _fetch_fee(record: BrokerOrderRecord) -> None:
    try:
        fee = get_broker().order_fee(broker_order_id=record.broker_order_id)
    except (RateLimited, BrokerUnavailable) as exc:
        logger.info("fee of %s not read yet: %s", record.broker_order_id, exc)
        return
    if fee is None:
        return
    record.fee = fee.total
    record.fee_details = [[name, str(amount)] for name, amount in fee.items]
    BrokerOrderRecord.objects.filter(pk=record.pk).update(
        fee=record.fee, fee_details=record.fee_details, updated_at=timezone.now()
    )


def _open_correction(record: BrokerOrderRecord, order: BrokerOrder) -> None:
    BrokerFillCorrection.objects.create(
        record=record,
        client_id=record.client_id,
        broker_order_id=record.broker_order_id,
        before_qty=record.filled_qty,
        before_avg_price=record.avg_fill_price,
        after_qty=order.filled_qty,
        after_avg_price=order.avg_fill_price,
        raw_status=order.raw_status,
    )
    alert_raise(
        key=f"broker_fill_changed:{record.client_id}",
        message=(
            f"broker changed the fills of {record.client_id} (Futu {record.broker_order_id}) "
            f"after it was final: {record.filled_qty} @ {record.avg_fill_price} -> "
            f"{order.filled_qty} @ {order.avg_fill_price} ({order.raw_status}); "
            "a compensation case is open"
        ),
        severity=AlertSeverity.CRITICAL,
        source=SOURCE,
        details={
            "client_id": record.client_id,
            "broker_order_id": record.broker_order_id,
            "before_qty": str(record.filled_qty),
            "after_qty": str(order.filled_qty),
        },
    )
    logger.error("fills changed after final", extra={"client_id": record.client_id})


def broker_order_cancel(*, client_id: str) -> BrokerOrderState | None:
    """Cancel until it takes. Sends a cancel when none was sent, or when the last one was
    acknowledged but the order is still working after the grace period (doubling per
    request); after `TRADING_CANCEL_MAX_REQUESTS` requests it stops and opens an operator
    alert. Returns the order's state (None when the broker has no order for the client
    id). Call it again at every poll until the state is final."""
    record = BrokerOrderRecord.objects.filter(client_id=client_id).first()
    if record is None or not record.broker_order_id:
        return None
    broker = get_broker()
    order = _broker_view(broker, record, since=record.placed_at or record.created_at)
    if order is None:
        return None
    if order.is_final:
        return _record_state(record, order)
    now = timezone.now()
    grace = settings.TRADING_CANCEL_GRACE_SECONDS * 2 ** max(record.cancel_requests - 1, 0)
    due = record.last_cancel_at is None or now >= record.last_cancel_at + timedelta(seconds=grace)
    if due and record.cancel_requests >= settings.TRADING_CANCEL_MAX_REQUESTS:
        if not record.cancel_alerted:
            alert_raise(
                key=f"broker_cancel_stuck:{client_id}",
                message=(
                    f"cancel of {client_id} (Futu {record.broker_order_id}) does not take after "
                    f"{record.cancel_requests} requests; the order is still {order.raw_status}"
                ),
                severity=AlertSeverity.CRITICAL,
                source=SOURCE,
                details={"client_id": client_id, "broker_order_id": record.broker_order_id},
            )
            BrokerOrderRecord.objects.filter(pk=record.pk).update(cancel_alerted=True)
    elif due:
        claimed = BrokerOrderRecord.objects.filter(
            pk=record.pk, cancel_requests=record.cancel_requests
        ).update(cancel_requests=F("cancel_requests") + 1, last_cancel_at=now, updated_at=now)
        if claimed:
            logger.info(
                "cancelling broker order %s (request %d)",
                record.broker_order_id,
                record.cancel_requests + 1,
            )
            try:
                order = broker.cancel_order(broker_order_id=record.broker_order_id)
            except BrokerRejected as exc:
                # Typically "already filled / cancelled": the next look says which.
                logger.info("cancel of %s refused: %s", record.broker_order_id, exc)
            record.refresh_from_db()
    return _record_state(record, order)


def broker_orders_watch() -> int:
    """Sync every final order whose fills may still change (until its `watch_until`); a fill
    changed after the fact opens a correction case. Returns how many were synced. Run by
    beat (`trading.tasks.broker_orders_watch`) on the broker queue.

    Budget: Futu's history queries (history orders, history deals) allow 10 requests per
    30 s each, and netting cycles need the order history for an order that finished unseen.
    A watched order whose final status is known (from a push or a sync) and that was placed
    less than `DEALS_TODAY_HOURS` ago costs no rate-limited request: the open list and
    today's deals come from OpenD's cache. Any other watched order takes one request from
    the watch's share, `TRADING_WATCH_HISTORY_PER_RUN` per run with the beat every
    `TRADING_WATCH_INTERVAL_SECONDS`: by default 2 per 30 s, a fifth of the budget; the
    other four fifths stay the cycles'. Orders over the share wait for the next run."""
    now = timezone.now()
    records = list(
        BrokerOrderRecord.objects.filter(watch_until__gt=now)
        .order_by("updated_at")  # least recently synced first: every order gets its turn
        .values_list("client_id", "status", "placed_at", "created_at")[:500]
    )
    share = settings.TRADING_WATCH_HISTORY_PER_RUN
    old = now - timedelta(hours=DEALS_TODAY_HOURS)
    synced = 0
    for client_id, status, placed_at, created_at in records:
        if status not in _FINAL or (placed_at or created_at) < old:
            if share <= 0:
                continue
            share -= 1
        try:
            broker_order_sync(client_id=client_id)
        except (RateLimited, BrokerUnavailable) as exc:
            logger.info("watch stopped early: %s", exc)
            break
        synced += 1
    fill_corrections_assess()  # cases whose fill was allocated since they were opened
    return synced


# --- pushes (on the SDK's callback thread, once per update: trading.pushes) ----------------


def broker_order_pushed(order: BrokerOrder) -> None:
    """An order push. A final status is recorded at once (one conditional UPDATE), so the
    order's next sync learns it without a history request; a final order whose status
    changed again (FILL_CANCELLED after FILLED) is synced now, on the broker queue."""
    try:
        if not order.is_final:
            return
        changed = (
            BrokerOrderRecord.objects.filter(broker_order_id=order.broker_order_id)
            .exclude(status=str(order.status))
            .exclude(status=BrokerOrderRecord.ABANDONED)
            .update(
                status=str(order.status), raw_status=order.raw_status, updated_at=timezone.now()
            )
        )
        if changed:
            _refresh_if_final(order.broker_order_id)
    finally:
        connection.close()  # the SDK's thread is long-lived: hold no connection between pushes


def broker_deal_pushed(deal: Deal) -> None:
    """A deal push (a new fill, or one cancelled or changed after it was reported). For an
    order already final, its fills are synced now (a correction opens its case at once);
    a working order's fills are followed by its owner's polls."""
    try:
        _refresh_if_final(deal.broker_order_id)
    finally:
        connection.close()


def _refresh_if_final(broker_order_id: str) -> None:
    client_id = (
        BrokerOrderRecord.objects.filter(broker_order_id=broker_order_id, final_at__isnull=False)
        .values_list("client_id", flat=True)
        .first()
    )
    if client_id is not None:
        from trading.tasks import broker_order_refresh  # the tasks import this module: late

        broker_order_refresh.delay(client_id)
