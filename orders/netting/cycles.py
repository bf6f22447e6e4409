"""Netting cycles on the database and the broker: open (take the book on one quote), place
(one broker order for the net, tagged with the cycle's client id as Futu's remark), poll,
and allocate (everyone at one price; what is left of a deposit waits for the next cycle).

Each step is a service that loads fresh state and returns what runs next (`CycleNext`);
`orders.tasks` runs them. Guarantees:

- one cycle of a symbol in flight at a time (a partial unique index), and an order takes part
  in at most one cycle at a time (it is EXECUTING with `cycle` set, under its row lock);
- the cycle's broker order is placed at most once: the attempt is committed before the
  broker is called, and a retry looks the remark up (open orders, and history once an
  attempt was made) before placing;
- allocation happens once (a conditional update of the cycle's status in the same
  transaction as the allocation rows, the orders and the inventory);
- lock order: inventory row, then cycle, then orders by pk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from core.alerts import alert_raise
from core.audit import audit_deferred
from core.exceptions import TIME_LIMITS
from core.metrics import observe_stage
from core.money import market_to_usdt_units_up, usdt_to_units
from orders.models import (
    Allocation,
    Cycle,
    CycleStatus,
    HouseInventory,
    Order,
    OrderStatus,
    OrderType,
    Waiting,
)
from orders.netting import bounds, waiting
from orders.netting.allocation import (
    TOKEN_UNITS_PER_SHARE,
    Buyer,
    FeeSchedule,
    Pricing,
    Seller,
    allocate_cycle,
    buyer_demand,
    plan_cycle,
    whole_lots_up,
)
from orders.runs import (
    lease_ran_out_before,
    run_take_over,
    runs_take_over_many,
    settle_groups_deferred,
)
from orders.selectors import order_usdt_remaining
from orders.stages import Stage
from orders.state import order_transition, orders_transition_many
from trading import market_wait, pricing
from trading import services as broker
from trading.broker import Quote
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    InsufficientBuyingPower,
    NoQuote,
    PlacementInFlight,
    RateLimited,
)
from trading.market_calendar import REGULAR, session_of_state

logger = logging.getLogger(__name__)

ACTOR = "task:orders.cycle"
S = OrderStatus


@dataclass(frozen=True)
class CycleNext:
    """What a cycle step asks to run next: `step` ("place" or "poll") of `cycle_id` after
    `countdown` seconds."""

    step: str
    cycle_id: int
    countdown: float = 0.0


@contextmanager
def step_timer(step: str) -> Iterator[None]:
    """Time one cycle step (`cycle_open`, `cycle_place`, `cycle_poll`) into the stage
    latency metric (`core.metrics`, kept in Redis: /metrics and the benchmark read it),
    broker calls and limiter waits included."""
    started = time.monotonic()
    try:
        yield
    finally:
        observe_stage(step, time.monotonic() - started)


def fee_schedule() -> FeeSchedule:
    """Bronco's published fee (settings NETTING_FEE_RATE, NETTING_FEE_FLAT_USDT)."""
    return FeeSchedule(
        rate=settings.NETTING_FEE_RATE,
        flat_units=usdt_to_units(settings.NETTING_FEE_FLAT_USDT),
    )


def _participant(order: Order) -> Buyer | Seller:
    if order.order_type == OrderType.BUY:
        return Buyer(order.pk, order_usdt_remaining(order), prior_cost_units=int(order.cost_usdt))
    return Seller(order.pk, int(order.token_amount))


def _past_deadline(order: Order) -> bool:
    return order.deadline is not None and timezone.now() >= order.deadline


def book(symbol: str):  # type: ignore[no-untyped-def]
    """Orders of `symbol` waiting in the book (validated, in no cycle, not held after a
    reorg), oldest first."""
    return Order.objects.filter(
        symbol=symbol,
        status=S.PENDING,
        booked_at__isnull=False,
        cycle__isnull=True,
        held_at__isnull=True,
    ).order_by("booked_at", "pk")


def symbols_waiting() -> list[str]:
    """Symbols with orders in the book and no cycle in flight, the one whose order has
    waited longest first: the order in which cycles spend the broker's place budget, so no
    symbol starves."""
    in_flight = Cycle.objects.exclude(status=CycleStatus.ALLOCATED).values("symbol")
    rows = (
        Order.objects.filter(
            status=S.PENDING, booked_at__isnull=False, cycle__isnull=True, held_at__isnull=True
        )
        .exclude(symbol__in=in_flight)
        .values_list("symbol", "booked_at")
        .order_by("booked_at")
    )
    seen: dict[str, None] = {}
    for symbol, _ in rows.iterator():
        seen.setdefault(symbol, None)
    return list(seen)


def cycle_in_flight(symbol: str) -> bool:
    """Has `symbol` a cycle not yet allocated (at most one: `cycle_one_in_flight_per_symbol`)?"""
    return Cycle.objects.filter(symbol=symbol).exclude(status=CycleStatus.ALLOCATED).exists()


def book_has_leavers(symbol: str) -> bool:
    """Has the book of `symbol` orders that leave it at the next cycle_open: cancelled,
    expired, or past their deadline (`waiting.leaving_book`)? A cycle in flight does not
    hold them back."""
    return book(symbol).filter(waiting.leaving_book(timezone.now(), by_deadline=True)).exists()


def open_waits_on_flight(symbol: str) -> bool:
    """True when opening a cycle of `symbol` now would only wait on the one in flight: a
    cycle is in flight and no order has to leave the book (`book_has_leavers`). Its end
    kicks the next (`orders.tasks._cycle_follow`)."""
    return cycle_in_flight(symbol) and not book_has_leavers(symbol)


def symbols_in_flight_with_leavers() -> list[str]:
    """Symbols with a cycle in flight and orders that leave the book (`book_has_leavers`):
    the scheduler's beat opens for them, which takes those orders out and then finds the
    cycle in flight (`symbols_waiting` leaves such symbols out)."""
    in_flight = Cycle.objects.exclude(status=CycleStatus.ALLOCATED).values_list("symbol", flat=True)
    return [symbol for symbol in in_flight if book_has_leavers(symbol)]


def book_has_newcomers(symbol: str) -> bool:
    """True when `symbol` has no cycle in flight and orders in its book that wait for
    nothing (no closed market, no price bound): orders that joined the book while the last
    cycle was open, for the next cycle now rather than at the next beat."""
    if cycle_in_flight(symbol):
        return False
    return book(symbol).filter(waiting_for=Waiting.NOTHING).exists()


# --- leaving the book --------------------------------------------------------------------


def order_settle_from_book(*, order: Order, reason: str, actor: str = ACTOR) -> Order:
    """A booked order leaves (cancelled, past its deadline, or nothing left to trade):
    PENDING -> SETTLING with what it got so far and the rest returned, and its settle run
    starts after commit. Call under the order's row lock."""
    if order.order_type == OrderType.BUY:
        minted = int(order.tokens_minted)
        changes = {"refund_usdt": order_usdt_remaining(order), "tokens_minted": minted}
        traded = minted > 0
    else:
        changes = {"tokens_returned": int(order.token_amount)}
        traded = False
    outcome = _outcome(order, traded=traded)
    order = order_transition(
        order=order,
        to_status=S.SETTLING,
        actor=actor,
        action="order.left_book",
        outcome=outcome,
        last_error=reason,
        **changes,
    )
    run_take_over(order_id=order.pk, stage=Stage.SETTLE)
    return order


def _outcome(order: Order, *, traded: bool) -> str:
    """EXECUTED when anything traded; else CANCELED for a user's cancel, FAILED otherwise."""
    if traded:
        return S.EXECUTED
    return S.CANCELED if order.cancel_requested_at is not None else S.FAILED


def _unfilled_reason(order: Order) -> str:
    return waiting.unfilled_reason(order)


def _leave_book(
    symbol: str,
    *,
    by_deadline: bool = True,
    deadline_by: datetime | None = None,
    deadline_reason: str = "",
) -> None:
    """Cancelled and expired orders, and with `by_deadline` those whose deadline is at or
    before `deadline_by` (default now) while not waiting for their market, leave the book
    before a cycle (`orders.netting.waiting`): a closed market never ends an order by its
    deadline. `deadline_reason` replaces the usual reason of one leaving by its deadline."""
    now = timezone.now()
    leaving_q = waiting.leaving_book(now, by_deadline=by_deadline, deadline_by=deadline_by)
    with transaction.atomic(), audit_deferred():
        leaving = list(book(symbol).filter(leaving_q).values_list("pk", flat=True))
        for order in (
            Order.objects.filter(pk__in=leaving, status=S.PENDING, cycle__isnull=True)
            .order_by("pk")
            .select_for_update(skip_locked=True, of=("self",))
        ):
            reason = _unfilled_reason(order)
            if deadline_reason and waiting.by_deadline_only(order, now):
                reason = deadline_reason
            order_settle_from_book(order=order, reason=reason)


def _broker_answers() -> bool:
    """Broker truth, cheaply: does the broker answer now? One read of the account's open
    orders (OpenD's cache: no request budget spent, `trading.services.broker_list_orders`)."""
    try:
        broker.broker_list_orders()
    except (BrokerUnavailable, RateLimited) as exc:
        logger.info("the broker does not answer: %s", exc)
        return isinstance(exc, RateLimited)  # refused by a budget: it answered
    return True


def _leave_book_unquoted(symbol: str, exc: Exception) -> None:
    """The symbol's quote failed (`exc`: NoQuote, BrokerUnavailable or RateLimited).
    Cancelled and expired orders leave as always. An order past its deadline leaves blaming
    the broker only when that is true of the broker: it said there is no price (NoQuote), or
    it does not answer now either (`_broker_answers`). Otherwise (Bronco's own request
    budget, or a request that failed on a slow moment while the broker answers) the order
    waits in the book for the next cycle, until its hard deadline
    (ORDER_DEADLINE_HARD_EXTRA_SECONDS past the deadline) ends it."""
    now = timezone.now()
    if not book(symbol).filter(waiting.leaving_book(now, by_deadline=True)).exists():
        return  # nobody leaves: the broker is not asked
    if isinstance(exc, NoQuote):
        _leave_book(symbol, deadline_reason=f"the broker gave no price before the deadline: {exc}")
        return
    if isinstance(exc, BrokerUnavailable) and not _broker_answers():
        reason = f"could not reach the broker before the deadline: {exc}"
        _leave_book(symbol, deadline_reason=reason)
        return
    extra = timedelta(seconds=settings.ORDER_DEADLINE_HARD_EXTRA_SECONDS)
    logger.warning(
        "cycle of %s: no quote (%s) but the broker answers: orders past their deadline wait",
        symbol,
        exc,
    )
    _leave_book(
        symbol,
        deadline_by=now - extra,
        deadline_reason="the hard deadline passed before the order could be quoted "
        f"(the broker answered; the quote failed: {exc})",
    )


# --- open --------------------------------------------------------------------------------


def _joinable(order: Order) -> bool:
    """Whether a book order may join a cycle: not when its expiry is within
    NETTING_EXPIRY_GUARD_SECONDS (its trade could not settle before the vault's expiry; it
    waits and is refunded in full at its expiry). The limit still keeps to its bound."""
    guard = timezone.now() + timezone.timedelta(seconds=settings.NETTING_EXPIRY_GUARD_SECONDS)
    return order.expires_at is None or order.expires_at > guard


def _inventory(symbol: str) -> HouseInventory:
    HouseInventory.objects.get_or_create(symbol=symbol)
    return HouseInventory.objects.select_for_update().get(symbol=symbol)


def inventory_cap_units(quoted: Pricing, lot_shares: int) -> int:
    """The house inventory's cap for a symbol (token units): NETTING_INVENTORY_CAP_LOTS
    lots, or NETTING_INVENTORY_CAP_USDT worth at `quoted` in whole lots when that is more."""
    lot = lot_shares * TOKEN_UNITS_PER_SHARE
    by_lots = settings.NETTING_INVENTORY_CAP_LOTS * lot
    by_value = quoted.units_for(usdt_to_units(settings.NETTING_INVENTORY_CAP_USDT)) // lot * lot
    return max(by_lots, by_value)


_BUY_AHEAD_PAUSED = "bronco:buy-ahead-paused:{}"


def buy_ahead_pause(symbol: str) -> None:
    """Stop `symbol`'s buy-ahead for NETTING_BUY_AHEAD_WINDOW_SECONDS (the account lacked
    the buying power for it)."""
    seconds = max(int(settings.NETTING_BUY_AHEAD_WINDOW_SECONDS), 1)
    redis.Redis.from_url(settings.REDIS_URL).set(_BUY_AHEAD_PAUSED.format(symbol), 1, ex=seconds)
    logger.warning("buy-ahead of %s paused for %s s: the account's buying power", symbol, seconds)


def buy_ahead_units(symbol: str) -> int:
    """What the buy-ahead keeps in inventory for `symbol` (token units; 0 when
    NETTING_BUY_AHEAD_SECONDS is 0): its net demand (demand less supply of its cycles) over
    the last NETTING_BUY_AHEAD_WINDOW_SECONDS, as a rate, times NETTING_BUY_AHEAD_SECONDS.
    A deposit carried over several cycles counts in each, and so does one its price bound
    left out: the rate errs high, within the cap. 0 while paused (`buy_ahead_pause`)."""
    ahead = settings.NETTING_BUY_AHEAD_SECONDS
    window = settings.NETTING_BUY_AHEAD_WINDOW_SECONDS
    if ahead <= 0 or window <= 0:
        return 0
    if redis.Redis.from_url(settings.REDIS_URL).exists(_BUY_AHEAD_PAUSED.format(symbol)):
        return 0
    since = timezone.now() - timedelta(seconds=window)
    totals = Cycle.objects.filter(symbol=symbol, created_at__gte=since).aggregate(
        demand=Sum("demand_units"), supply=Sum("supply_units")
    )
    net = int(totals["demand"] or 0) - int(totals["supply"] or 0)
    if net <= 0:
        return 0
    return int(Fraction(net) * Fraction(ahead) / Fraction(window))


def cycle_open(
    *, symbol: str, quote: Quote | None = None, covered_only: bool = False
) -> CycleNext | None:
    """Take every order of `symbol` in the book into a new cycle priced on one fresh quote
    (`quote` when the caller just took it, else one snapshot request). When crossing and
    inventory square it, it is allocated at once at the quote (no broker request);
    otherwise its broker order is to be placed. With a buy-ahead (`buy_ahead_units`) a
    cycle at its place slot also tops the inventory up to the target, even when its book
    alone would not need the broker (the slot is the symbol's turn at the place budget).
    With `covered_only` (no place slot: `cycles_open_covered`, regular session only) a book
    the inventory does not square makes no cycle and waits for its place slot. None when
    there is nothing to do (empty book, a cycle already in flight, no tradable quote now:
    the orders wait). A quote that finds the market closed stops the quotes of the symbol's
    code until the next session opens (`trading.market_wait`)."""
    return _open(symbol=symbol, quote=quote, covered_only=covered_only)[0]


def _open(
    *,
    symbol: str,
    quote: Quote | None,
    covered_only: bool,
    skips_generation: int | None = None,
) -> tuple[CycleNext | None, bool]:
    """`cycle_open`, and whether it made a cycle. With a `quote` the caller took, pass the
    market skips' generation it read before taking it (`market_wait.market_closed_look`)."""
    _leave_book(symbol, by_deadline=False)
    code = settings.BRONCO_SYMBOLS.get(symbol, "")
    if not code or not book(symbol).exists():
        return None, False
    if open_waits_on_flight(symbol):
        # Going on would spend a quote, then wait on the inventory row while that cycle
        # allocates, holding a broker worker.
        return None, False
    closed_state, generation_now = market_wait.market_closed_look(code)
    if skips_generation is None:
        skips_generation = generation_now
    if closed_state is not None:
        # Known closed until the next session opens: no quote (Futu's snapshot budget).
        waiting.book_wait_for_market(orders=book(symbol), market_state=closed_state, actor=ACTOR)
        return None, False
    if quote is None:
        try:
            quote = broker.broker_quote(code=code)
        except (NoQuote, BrokerUnavailable, RateLimited) as exc:
            logger.info("cycle of %s waits: %s", symbol, exc)
            _leave_book_unquoted(symbol, exc)
            return None, False
    if quote.suspended or not quote.market_open:
        logger.info("cycle of %s waits: market %s", symbol, quote.market_state or "closed")
        waiting.book_wait_for_market(
            orders=book(symbol), market_state=quote.market_state, actor=ACTOR
        )
        if not quote.market_open:
            market_wait.market_closed_note(code, quote.market_state, generation=skips_generation)
        return None, False
    if covered_only and session_of_state(quote.market_state) != REGULAR:
        # The snapshot's price is the regular session's last: outside it, only a broker
        # order (at its place slot) prices the book.
        return None, False
    _leave_book(symbol)
    if cycle_in_flight(symbol):
        # Those past their deadline have left; the cycle's end kicks the next.
        return None, False
    fees = fee_schedule()
    rate = pricing.fx_rate(code)
    quoted = Pricing(quote.price, rate)
    target = 0 if covered_only else buy_ahead_units(symbol)
    try:
        # The audit chain's lock, taken by the first append, is held to the commit: the
        # entries go in at the end, not before the cycle's allocation.
        with transaction.atomic(), audit_deferred():
            inventory = _inventory(symbol)
            bounded = bounds.cycle_participants(
                list(book(symbol).select_for_update(skip_locked=True, of=("self",)).order_by("pk")),
                code=code,
                quote_price=quote.price,
                tick=quote.tick_size,
                ccy_per_usdt=rate,
                actor=ACTOR,
            )
            orders = [o for o in bounded.orders if _joinable(o)]
            if not orders:
                return None, False
            participants = [_participant(o) for o in orders]
            buyers = [p for p in participants if isinstance(p, Buyer)]
            sellers = [p for p in participants if isinstance(p, Seller)]
            cap = inventory_cap_units(quoted, quote.lot_size)
            plan = plan_cycle(
                buyers=buyers,
                sellers=sellers,
                quote=quoted,
                fees=fees,
                lot_shares=quote.lot_size,
                inventory_units=int(inventory.token_units),
                inventory_cap_units=cap,
                # A tenth of the cap left for price moves: a cap in USDT holds fewer shares
                # as the price rises, and inventory at it would be sold and bought back.
                inventory_target_units=min(target, cap * 9 // 10),
            )
            if covered_only and plan.broker_units:
                return None, False  # no cycle: the book waits for its place slot
            limit = None
            if plan.broker_units > 0:
                limit = pricing.buy_limit_price(quote)
            elif plan.broker_units < 0:
                limit = pricing.sell_limit_price(quote)
            limit = bounded.clamp(limit, plan.broker_units)
            cycle = Cycle.objects.create(
                symbol=symbol,
                stock_code=code,
                quote_price=quote.price,
                ccy_per_usdt=rate,
                lot_size=quote.lot_size,
                fee_rate=fees.rate,
                fee_flat_usdt=fees.flat_units,
                demand_units=plan.demand_units,
                supply_units=plan.supply_units,
                broker_units=plan.broker_units,
                limit_price=limit,
                inventory_before=int(inventory.token_units),
                lease_until=_lease(),
            )
            now = timezone.now()
            orders_transition_many(
                moves=[
                    (order, S.EXECUTING, {"cycle": cycle, **waiting.joining_cycle(order, now)})
                    for order in orders
                ],
                actor=ACTOR,
                action="order.joined_cycle",
            )
            logger.info(
                "cycle %s of %s: %d buys, %d sells, net %s units, broker %s units",
                cycle.pk,
                symbol,
                len(buyers),
                len(sellers),
                plan.net_units,
                plan.broker_units,
            )
            if plan.broker_units == 0:
                _allocate(cycle=cycle, inventory=inventory, filled_units=0, price=quote.price)
                return None, True
    except IntegrityError:
        logger.info("a cycle of %s is already in flight", symbol)
        return None, False
    return CycleNext("place", cycle.pk), True


def symbols_covered_candidates() -> dict[str, int]:
    """Symbols waiting (`symbols_waiting`, longest first) whose house inventory holds
    anything and whose market is not known closed: those a covered cycle may serve, each
    with the market skips' generation read now (before their snapshot is taken). A book
    crossing alone would square, with no inventory, waits for its slot."""
    waiting_now = symbols_waiting()
    if not waiting_now:
        return {}
    stocked = set(
        HouseInventory.objects.filter(symbol__in=waiting_now, token_units__gt=0).values_list(
            "symbol", flat=True
        )
    )
    found = {}
    for symbol in waiting_now:
        code = settings.BRONCO_SYMBOLS.get(symbol, "")
        if symbol not in stocked or not code:
            continue
        closed_state, generation = market_wait.market_closed_look(code)
        if closed_state is None:
            found[symbol] = generation
    return found


def cycles_open_covered() -> int:
    """Covered cycles (NETTING_COVERED_CYCLES): every symbol waiting whose inventory squares
    its book in the regular session trades now from inventory at one fresh quote, without
    a place request; the others' books are left for their place slots. One snapshot request
    quotes them all (Futu: up to 400 codes a request, 60 requests per 30 s; at one beat a
    second this spends 30 of them, the place-slot cycles 15 more). OpenD refuses a whole
    snapshot when one code in it is unknown: then no covered cycle runs (logged) and the
    place-slot cycles, one code each, go on. The cycles settle in one batch
    (`settle_groups_deferred`); one symbol's failure is logged and the others go on.
    Returns how many cycles it allocated."""
    if not settings.NETTING_COVERED_CYCLES:
        return 0
    candidates = symbols_covered_candidates()
    if not candidates:
        return 0
    codes = {symbol: settings.BRONCO_SYMBOLS[symbol] for symbol in candidates}
    try:
        quotes = broker.broker_quotes(codes=list(codes.values()))
    except (NoQuote, BrokerUnavailable, RateLimited) as exc:
        logger.warning("covered cycles wait: %s", exc)
        return 0
    opened = 0
    with settle_groups_deferred():  # one settlement batch for all symbols' cycles
        for symbol, code in codes.items():
            quote = quotes.get(code)
            if quote is None:
                continue
            try:
                opened += _open(
                    symbol=symbol,
                    quote=quote,
                    covered_only=True,
                    skips_generation=candidates[symbol],
                )[1]
            except TIME_LIMITS:
                raise
            except Exception:
                logger.exception("covered cycle of %s failed; its place slot still comes", symbol)
    return opened


def _lease(countdown: float = 0.0) -> timezone.datetime:
    return timezone.now() + timezone.timedelta(
        seconds=countdown + settings.NETTING_CYCLE_LEASE_SECONDS
    )


# --- place -------------------------------------------------------------------------------


def cycle_place(*, cycle_id: int) -> CycleNext | None:
    """Place the cycle's broker order once, through `trading.services.broker_order_submit`
    (idempotent per client id: the attempt is committed before Futu is called and a retry
    looks the remark up in the open list and the history). A rejection allocates the cycle
    at the quote with nothing from the broker (crossing and inventory only; what remains of
    each deposit waits for the next cycle)."""
    cycle = Cycle.objects.get(pk=cycle_id)
    if cycle.status != CycleStatus.OPEN:
        return CycleNext("poll", cycle.pk) if cycle.status == CycleStatus.PLACED else None
    if cycle.placed_at is None:
        Cycle.objects.filter(pk=cycle.pk, placed_at__isnull=True).update(placed_at=timezone.now())
    side = "BUY" if cycle.broker_units > 0 else "SELL"
    qty = Decimal(abs(int(cycle.broker_units)) // TOKEN_UNITS_PER_SHARE)
    try:
        placed = broker.broker_order_submit(
            client_id=cycle.client_id,
            code=cycle.stock_code,
            side=side,
            qty=qty,
            limit_price=cycle.limit_price,
            fee=False,  # Bronco's cost, read after allocation (cycles_fees_record)
        )
    except InsufficientBuyingPower as exc:
        if not _buys_ahead(cycle):
            return CycleNext("place", cycle.pk, max(exc.retry_after, 0.05))
        # The buy-ahead made the order too large for the account: its client id is closed
        # first (an earlier attempt that reached the broker is followed instead), then the
        # cycle ends with what crossing and inventory give (the rest of each deposit waits
        # for the next cycle), and the symbol's buy-ahead pauses, so the next cycle asks
        # only what its book needs.
        try:
            found = broker.broker_order_abandon(client_id=cycle.client_id)
        except (PlacementInFlight, RateLimited) as wait:
            return CycleNext("place", cycle.pk, max(wait.retry_after, 0.05))
        except BrokerUnavailable:
            return CycleNext("place", cycle.pk, settings.NETTING_BROKER_RETRY_SECONDS)
        if found is not None:
            return _placed(cycle_id=cycle.pk, state=found)
        buy_ahead_pause(cycle.symbol)
        return _allocate_unplaced(cycle_id=cycle.pk, reason=f"buying power: {exc}")
    except (RateLimited, PlacementInFlight) as exc:
        return CycleNext("place", cycle.pk, max(exc.retry_after, 0.05))
    except BrokerUnavailable:
        return CycleNext("place", cycle.pk, settings.NETTING_BROKER_RETRY_SECONDS)
    except BrokerRejected as exc:
        alert_raise(
            key=f"cycle_rejected:{cycle.symbol}",
            message=f"cycle {cycle.pk} of {cycle.symbol}: the broker rejected its order: {exc}",
            severity="warning",
            source=ACTOR,
            details={"cycle_id": cycle.pk},
        )
        return _allocate_unplaced(cycle_id=cycle.pk, reason=f"broker rejected: {exc}")
    return _placed(cycle_id=cycle.pk, state=placed)


def _placed(*, cycle_id: int, state: broker.BrokerOrderState) -> CycleNext | None:
    """The cycle's order is at the broker: the cycle is PLACED and followed."""
    Cycle.objects.filter(pk=cycle_id, status=CycleStatus.OPEN).update(
        status=CycleStatus.PLACED,
        futu_order_id=state.broker_order_id,
        lease_until=_lease(settings.ORDER_POLL_INTERVAL_SECONDS),
    )
    if state.is_final:
        # Filled (or ended) at once: allocate now rather than a poll interval later.
        return _allocate_final(cycle_id=cycle_id, state=state)
    return CycleNext("poll", cycle_id, settings.ORDER_POLL_INTERVAL_SECONDS)


def _lock_cycle(cycle_id: int, status: str) -> tuple[Cycle, HouseInventory] | None:
    """Inside a transaction: lock the symbol's inventory row, then the cycle (the lock
    order), and return both while the cycle is still in `status` (None otherwise)."""
    cycle = Cycle.objects.get(pk=cycle_id)
    inventory = _inventory(cycle.symbol)
    cycle = Cycle.objects.select_for_update().get(pk=cycle_id)
    return (cycle, inventory) if cycle.status == status else None


def _allocate_unplaced(*, cycle_id: int, reason: str) -> None:
    """The cycle's order was refused (nothing placed): allocate it at its quote with
    nothing from the broker (crossing and inventory only; what remains of each deposit
    waits for the next cycle), once."""
    with transaction.atomic(), audit_deferred():
        locked = _lock_cycle(cycle_id, CycleStatus.OPEN)
        if locked is None:
            return None
        cycle, inventory = locked
        cycle.last_error = reason
        _allocate(cycle=cycle, inventory=inventory, filled_units=0, price=cycle.quote_price)
    return None


def _buys_ahead(cycle: Cycle) -> bool:
    """Does the cycle's broker order buy more than its book needs (a buy-ahead part)?"""
    lot = int(cycle.lot_size) * TOKEN_UNITS_PER_SHARE
    short = int(cycle.demand_units) - int(cycle.supply_units) - int(cycle.inventory_before)
    return int(cycle.broker_units) > whole_lots_up(max(short, 0), lot)


# --- poll --------------------------------------------------------------------------------


def cycle_poll(*, cycle_id: int) -> CycleNext | None:
    """Follow the cycle's broker order (fills from its deals, `broker_order_sync`); allocate
    once it is final, at its average fill price, with the broker's own fee as Bronco's cost;
    past NETTING_CYCLE_TIMEOUT_SECONDS cancel it until the cancel takes
    (`broker_order_cancel`, called at every poll): what filled is allocated, the rest of each
    deposit waits for the next cycle. Never allocates while the broker still works it."""
    cycle = Cycle.objects.get(pk=cycle_id)
    if cycle.status != CycleStatus.PLACED:
        return None
    timeout = timezone.timedelta(seconds=settings.NETTING_CYCLE_TIMEOUT_SECONDS)
    cancelling = cycle.cancel_sent_at is not None or (
        timezone.now() - (cycle.placed_at or cycle.created_at) >= timeout
    )
    try:
        if cancelling:
            state = broker.broker_order_cancel(client_id=cycle.client_id)
            if cycle.cancel_sent_at is None:
                Cycle.objects.filter(pk=cycle.pk).update(cancel_sent_at=timezone.now())
        else:
            state = broker.broker_order_sync(client_id=cycle.client_id, fee=False)
    except (BrokerUnavailable, RateLimited) as exc:
        return CycleNext(
            "poll", cycle.pk, getattr(exc, "retry_after", settings.NETTING_BROKER_RETRY_SECONDS)
        )
    if state is None:
        alert_raise(
            key=f"broker_lost_cycle:{cycle.pk}",
            message=f"cycle {cycle.pk}: the broker does not know Futu order "
            f"{cycle.futu_order_id}; still polling",
            severity="critical",
            source=ACTOR,
            details={"cycle_id": cycle.pk, "futu_order_id": cycle.futu_order_id},
        )
        return CycleNext("poll", cycle.pk, settings.ORDER_RETRY_SECONDS)
    if state.is_final:
        return _allocate_final(cycle_id=cycle.pk, state=state)
    Cycle.objects.filter(pk=cycle.pk).update(
        lease_until=_lease(settings.ORDER_POLL_INTERVAL_SECONDS)
    )
    return CycleNext("poll", cycle.pk, settings.ORDER_POLL_INTERVAL_SECONDS)


# --- allocate ----------------------------------------------------------------------------


def _allocate_final(*, cycle_id: int, state: broker.BrokerOrderState) -> None:
    """The cycle's broker order is final: allocate its fill at its average price (the
    quote when nothing filled), once. The broker's fee is Bronco's cost, not the user's
    price: the cycle keeps the fee when the broker already told it, and
    `cycles_fees_record` reads it later otherwise (off the cycle's critical path)."""
    with transaction.atomic(), audit_deferred():
        locked = _lock_cycle(cycle_id, CycleStatus.PLACED)
        if locked is None:
            return None
        cycle, inventory = locked
        sign = 1 if cycle.broker_units > 0 else -1
        filled = sign * int(state.filled_qty) * TOKEN_UNITS_PER_SHARE
        price = state.avg_fill_price if filled else cycle.quote_price
        if state.fee is not None or not filled:
            cycle.broker_fee_usdt = market_to_usdt_units_up(
                state.fee or Decimal(0), ccy_per_usdt=cycle.ccy_per_usdt
            )
            cycle.broker_fee_read_at = timezone.now()
        _allocate(cycle=cycle, inventory=inventory, filled_units=filled, price=price)
    return None


def _allocate(
    *, cycle: Cycle, inventory: HouseInventory, filled_units: int, price: Decimal
) -> None:
    """Allocate `cycle` (locked, with the inventory row) at `price`: write the allocation
    rows, move each order on (settle it, or back to the book with what remains), update the
    inventory and close the cycle. Runs inside the caller's transaction."""
    orders, priced_out = bounds.priced_out(
        list(
            Order.objects.filter(cycle=cycle, status=S.EXECUTING)
            .order_by("pk")
            .select_for_update(of=("self",))
        ),
        price=price,
        ccy_per_usdt=cycle.ccy_per_usdt,
    )
    by_pk = {o.pk: o for o in orders}
    participants = [_participant(o) for o in orders]
    buyers = [p for p in participants if isinstance(p, Buyer)]
    sellers = [p for p in participants if isinstance(p, Seller)]
    fees = FeeSchedule(rate=cycle.fee_rate, flat_units=int(cycle.fee_flat_usdt))
    cycle_pricing = Pricing(price, cycle.ccy_per_usdt)
    result = allocate_cycle(
        buyers=buyers,
        sellers=sellers,
        pricing=cycle_pricing,
        fees=fees,
        inventory_units=int(inventory.token_units),
        broker_units=filled_units,
    )
    Allocation.objects.bulk_create(
        _allocation_rows(cycle, OrderType.BUY, result.buyers)
        + _allocation_rows(cycle, OrderType.SELL, result.sellers)
    )
    min_units = usdt_to_units(settings.ORDER_MIN_USDT)
    share = Decimal(TOKEN_UNITS_PER_SHARE)
    finished: list[tuple[Order, str, dict]] = []
    carried: list[tuple[Order, str, dict]] = []
    for buyer, fill in zip(buyers, result.buyers, strict=True):
        order = by_pk[fill.key]
        minted = int(order.tokens_minted) + fill.token_units
        changes: dict = {
            "cycle": None,
            "cost_usdt": int(order.cost_usdt) + fill.cost_units,
            "fees_usdt": int(order.fees_usdt) + fill.fee_units,
            "tokens_minted": minted,
            "filled_qty": (Decimal(minted) / share).quantize(Decimal("0.000001")),
            "avg_fill_price": price if minted else None,
        }
        left = buyer.usdt_units - fill.cost_units - fill.fee_units
        demand = buyer_demand(buyer, cycle_pricing, fees)
        done = (
            fill.token_units == demand
            or left < min_units
            or order.cancel_requested_at is not None
            or _past_deadline(order)
        )
        if done:
            _observe_execute(order)
            changes.update(
                outcome=_outcome(order, traded=minted > 0),
                refund_usdt=left,
                last_error=_unfilled_reason(order) if left >= min_units else "",
            )
            finished.append((order, S.SETTLING, changes))
        else:
            carried.append((order, S.PENDING, changes))
    for fill in result.sellers:
        order = by_pk[fill.key]
        _observe_execute(order)
        finished.append(
            (
                order,
                S.SETTLING,
                {
                    "cycle": None,
                    "outcome": S.EXECUTED,
                    "cost_usdt": fill.proceeds_units,
                    "fees_usdt": fill.fee_units,
                    "payout_usdt": fill.payout_units,
                    "tokens_returned": 0,
                    "filled_qty": (Decimal(fill.token_units) / share).quantize(Decimal("0.000001")),
                    "avg_fill_price": price,
                },
            )
        )
    orders_transition_many(moves=finished, actor=ACTOR, action="order.finalized")
    orders_transition_many(moves=carried, actor=ACTOR, action="order.carried_over")
    now = timezone.now()
    orders_transition_many(
        moves=[
            (order, S.PENDING, bounds.back_to_book_for_price(order, price, now))
            for order in priced_out
        ],
        actor=ACTOR,
        action="order.waiting_for_price",
    )
    runs_take_over_many(order_ids=[o.pk for o, _, _ in finished], stage=Stage.SETTLE)
    HouseInventory.objects.filter(pk=inventory.pk).update(token_units=result.inventory_after)
    updated = Cycle.objects.filter(pk=cycle.pk, status=cycle.status).update(
        status=CycleStatus.ALLOCATED,
        last_error=cycle.last_error,
        filled_units=filled_units,
        price=price,
        broker_fee_usdt=cycle.broker_fee_usdt,
        broker_fee_read_at=cycle.broker_fee_read_at,
        inventory_after=result.inventory_after,
        allocated_at=timezone.now(),
        lease_until=None,
    )
    if updated != 1:
        raise IntegrityError(f"cycle {cycle.pk} was allocated by another worker")


def _allocation_rows(cycle: Cycle, kind: str, fills: list) -> list[Allocation]:
    """One Allocation row per participant of `kind` (BUY or SELL) that got tokens: a
    buyer's USDT is its cost, a seller's its proceeds (base units)."""
    return [
        Allocation(
            cycle=cycle,
            order_id=f.key,
            order_type=kind,
            token_units=f.token_units,
            usdt_units=f.cost_units if kind == OrderType.BUY else f.proceeds_units,
            fee_units=f.fee_units,
        )
        for f in fills
        if f.token_units
    ]


def _observe_execute(order: Order) -> None:
    """Stage latency "execute": from joining the book to the end of trading."""
    if order.booked_at is not None:
        observe_stage("execute", (timezone.now() - order.booked_at).total_seconds())


# --- the broker's fee, after allocation ----------------------------------------------------

FEES_PER_RUN = 200  # cycles whose fee one order_fee_query request reads (Futu: 10 per 30 s)


def cycles_fees_record(*, limit: int = FEES_PER_RUN) -> int:
    """Record the broker's fee (Bronco's cost, `trading.services.broker_order_fees_record`:
    one order_fee_query request for all of them) on allocated cycles whose broker order
    filled and whose fee is not known yet, oldest first, at most `limit` a run. The users'
    prices never depend on it, so no cycle waits for it. Returns how many it recorded; a
    fee the broker cannot tell now is tried at the next run."""
    pending = list(
        Cycle.objects.filter(status=CycleStatus.ALLOCATED, broker_fee_read_at__isnull=True)
        .exclude(futu_order_id="")
        .exclude(filled_units=0)
        .order_by("allocated_at")[:limit]
    )
    if not pending:
        return 0
    fees = broker.broker_order_fees_record(client_ids=[c.client_id for c in pending])
    recorded = 0
    for cycle in pending:
        fee = fees.get(cycle.client_id)
        if fee is None:
            continue
        recorded += Cycle.objects.filter(pk=cycle.pk, broker_fee_read_at__isnull=True).update(
            broker_fee_usdt=market_to_usdt_units_up(fee, ccy_per_usdt=cycle.ccy_per_usdt),
            broker_fee_read_at=timezone.now(),
        )
    return recorded


# --- re-driving --------------------------------------------------------------------------


def cycles_stalled() -> list[CycleNext]:
    """Cycles in flight whose steps stopped: the step to re-drive. As for an order's run
    (`orders.runs.runs_dead_claim`), a lease counts as run out one beat interval after its
    end (`lease_ran_out_before`), and a cycle whose row another transaction holds is
    working and left alone."""
    cutoff = lease_ran_out_before()
    found = []
    with transaction.atomic():
        for cycle_id, status in (
            Cycle.objects.exclude(status=CycleStatus.ALLOCATED)
            .filter(lease_until__lt=cutoff)
            .select_for_update(skip_locked=True)
            .values_list("pk", "status")
        ):
            Cycle.objects.filter(pk=cycle_id).update(lease_until=_lease())
            found.append(CycleNext("place" if status == CycleStatus.OPEN else "poll", cycle_id))
    return found
