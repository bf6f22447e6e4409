"""Celery doors into the order pipeline. Each task takes an order id and its run's
generation, calls one stage, and carries the run on to what the stage says comes next
(`orders.runs`). Every task is safe to run twice: the stages re-read state and act only when
the order is still where they expect it, and a task of a superseded run does nothing.

Queues by the resource waited on (`core.tasks`): the cycle steps call OpenD (`broker`);
settle sends and confirms chain transactions (`chain`); validate (which only books the
order), the scan and the cycle scheduler touch the database alone (`default`).
"""

import logging
import socket
import uuid

import redis
from celery import Task
from django.conf import settings
from django.db import connection

from core.metrics import count_stage_run
from core.tasks import (
    QUEUE_BROKER,
    QUEUE_CHAIN,
    QUEUE_DEFAULT,
    TRANSIENT_ERRORS,
    bronco_task,
    queue_depth,
    queued_tasks,
)
from orders import held, pipeline, runs
from orders.exceptions import StaleOrderVersion
from orders.models import Cycle, Order, OrderStatus
from orders.netting import cycles, slots
from orders.pipeline import Next, Stage

logger = logging.getLogger(__name__)

# Another worker moved the order first, or the database blinked: a retry re-reads state.
_STAGE_OPTIONS = {
    "autoretry_for": (StaleOrderVersion, *TRANSIENT_ERRORS),
    "retry_backoff": 0.2,
    "retry_backoff_max": 10,
    "max_retries": None,
}


def _run_stage(stage: Stage, order_id: int, gen: int | None) -> None:
    if gen is None:
        # A task sent without a generation (an older message, or by hand): it starts a run
        # of its own rather than joining one it cannot name.
        runs.run_take_over(order_id=order_id, stage=stage)
        return
    if not runs.run_step_begin(order_id=order_id, gen=gen):
        count_stage_run(stage=stage, superseded=True)
        return
    count_stage_run(stage=stage, superseded=False)
    with runs.run_heartbeat(order_id=order_id, gen=gen):
        nxt = _STAGES[stage](order_id=order_id)
    runs.run_continue(order_id=order_id, gen=gen, nxt=nxt)


@bronco_task(name="orders.tasks.order_validate", queue=QUEUE_DEFAULT, **_STAGE_OPTIONS)
def order_validate(order_id: int, gen: int | None = None) -> None:
    """Validate and book the order (no broker request: cycles price the book), then ask
    for a cycle of its symbol at once rather than at the scheduler's next beat."""
    _run_stage(Stage.VALIDATE, order_id, gen)
    symbol = (
        Order.objects.filter(pk=order_id, status=OrderStatus.PENDING, booked_at__isnull=False)
        .values_list("symbol", flat=True)
        .first()
    )
    if symbol:
        cycle_kick(symbol)


@bronco_task(name="orders.tasks.order_settle", queue=QUEUE_CHAIN, **_STAGE_OPTIONS)
def order_settle(order_id: int, gen: int | None = None) -> None:
    _run_stage(Stage.SETTLE, order_id, gen)


@bronco_task(name="orders.tasks.orders_settle_group", queue=QUEUE_CHAIN, **_STAGE_OPTIONS)
def orders_settle_group(runs_gens: list[list[int]]) -> None:
    """The settle stage for many orders at once (`[[order id, gen], ...]`, at most
    CHAIN_SETTLEMENT_BATCH_MAX): sends the unsent in batched transactions, then follows
    each transaction with one task of its own (its orders, after
    ORDER_SETTLE_CHECK_SECONDS) until it confirms, when all its orders settle in one bulk
    transition. Orders that need their own step (`GroupNext.alone`) go back to
    `order_settle` in their run. Superseded runs are skipped, like `_run_stage`."""
    gens = runs.runs_step_begin_many(gens={int(pk): int(gen) for pk, gen in runs_gens})
    count_stage_run(stage="settle_group", superseded=not gens)
    if not gens:
        return
    with runs.run_heartbeat(runs=gens):
        out = pipeline.orders_settle_group(order_ids=list(gens))
    for order_ids in out.follow:
        runs.runs_continue_many(
            gens={pk: gens[pk] for pk in order_ids},
            nxt=Next(Stage.SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS),
            grouped=True,
        )
    by_next: dict[Next, dict[int, int]] = {}
    for pk, nxt in out.alone.items():
        by_next.setdefault(nxt, {})[pk] = gens[pk]
    for nxt, alone in by_next.items():
        runs.runs_continue_many(gens=alone, nxt=nxt)


@bronco_task(
    name="orders.tasks.runs_enqueue",
    queue=QUEUE_DEFAULT,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=0.2,
    retry_backoff_max=10,
    max_retries=None,
    soft_time_limit=50,
    time_limit=60,
)
def runs_enqueue(order_ids: list[int], gen: int, stage: str, countdown: float = 0.0) -> None:
    """Publish the `stage` task of run `gen` for each of up to `runs.RUN_ENQUEUE_FANOUT`
    orders (the fan-out of a large batch). Safe twice: a stage task of a run acts only
    while its generation is live, and does nothing once the order moved on."""
    runs.run_enqueue_many(gens=dict.fromkeys(order_ids, gen), nxt=Next(Stage(stage), countdown))


_STAGES = {
    Stage.VALIDATE: pipeline.order_validate,
    Stage.SETTLE: pipeline.order_settle,
}
_TASKS: dict[Stage, Task] = {
    Stage.VALIDATE: order_validate,
    Stage.SETTLE: order_settle,
}


def task_for_stage(stage: Stage) -> Task:
    """The Celery task that runs `stage` (its decorator names the queue)."""
    return _TASKS[stage]


@bronco_task(
    name="orders.tasks.compensation_scan",
    queue=QUEUE_DEFAULT,
    soft_time_limit=20,
    time_limit=30,
    # A late scan is worthless once the next one is due (COMPENSATION_SCAN_SECONDS).
    expires=10,
)
def compensation_scan() -> int:
    """Beat, every COMPENSATION_SCAN_SECONDS (2 s): re-drive lost work in seconds.

    - A Redis broker that restarted or was wiped (`runs.broker_lost_work`) lost every queued
      task: every run and cycle in flight is taken over at once, and every order waiting to
      trade gets its deadline's grace (`runs.orders_deadline_extend`).
    - An open order whose run's lease ran out (its worker was killed with the task, the task
      was dropped) is taken over: a new generation at its stage, its deadline given grace
      (settling orders by the batch, `orders_settle_group`).
      A stage's queue is never filled past ORDER_REDRIVE_QUEUE_MAX by re-drives, and on a
      Redis broker a run whose task still waits in the queue is left to it: a lease that
      ran out behind a deep queue is late work, not lost work.

    Returns how many orders it re-drove."""
    if runs.broker_lost_work():
        runs.runs_expire_all()
        runs.orders_deadline_extend(
            order_ids=runs.orders_trading_ids(), reason="the broker lost its queues"
        )
    count = 0
    for stage in (Stage.VALIDATE, Stage.SETTLE):
        task = task_for_stage(stage)
        depth = queue_depth(task.bronco_queue)
        room = settings.ORDER_REDRIVE_QUEUE_MAX - depth
        if room <= 0:
            continue
        queued = _runs_queued(task.bronco_queue, depth=depth)
        if stage == Stage.VALIDATE and queued:
            # Late, not lost, but its wait is Bronco's, not the user's: the deadline's grace
            # as for a re-drive (settling orders have no deadline left to count).
            runs.orders_deadline_extend(
                order_ids=runs.runs_overdue(queued),
                reason="its task waited in the queue past its lease",
            )
        gens = {
            pk: gen for pk, gen, _ in runs.runs_dead_claim(stage=stage, limit=room, queued=queued)
        }
        if not gens:
            continue
        runs.orders_deadline_extend(order_ids=gens, reason="its run was lost and re-driven")
        if stage == Stage.SETTLE:
            # Re-driven by the batch too: one task per CHAIN_SETTLEMENT_BATCH_MAX orders,
            # never one per order flooding the chain queue behind a slow batch.
            runs.settle_groups_enqueue(gens=gens)
        else:
            runs.run_enqueue_many(gens=gens, nxt=Next(stage))
        count += len(gens)
    if count:
        logger.info("compensation scan re-drove %d orders", count)
    return count


def _runs_queued(queue: str, *, depth: int) -> dict[int, int]:
    """The runs (order id -> generation) whose tasks wait in `queue` (a Redis broker; none
    known on RabbitMQ, whose queues lose nothing they hold but cannot be read). Under a load
    the stage's workers cannot keep up with, a task waits in its queue longer than the lease
    its run set: it is late, not lost, and re-driving it sent the run to the back of the
    queue again (the 200 deposits/s benchmark re-drove 8,479 of 13,200 orders, some several
    times, and settlement fell behind)."""
    if depth <= 0:
        return {}
    found: dict[int, int] = {}
    for name, args, kwargs in queued_tasks(queue, limit=depth) or ():
        try:
            held.task_runs(name, args, kwargs, runs_into=found)
        except (ValueError, TypeError, AttributeError):
            continue  # not a task Bronco sent as it sends them: it vouches for nothing
    return found


# --- netting cycles ------------------------------------------------------------------------

_CYCLE_OPEN_KEY = "bronco:cycle-open:{}"
_CYCLE_OPEN_TTL = 10  # seconds: a lost cycle_open task frees its symbol after this long


def cycle_kick(symbol: str) -> bool:
    """Enqueue a cycle_open of `symbol` at its place slot (`orders.netting.slots`: cycles of
    all symbols take turns at Futu's place budget, the first to ask first) unless one is
    already queued (one per symbol at a time, through a Redis key that expires if its task
    is lost) or a cycle of the symbol is in flight and no order has to leave its book (a
    cancel, an expiry, a deadline: those leave at once, `cycles.book_has_leavers`). The
    cycle in flight kicks the next when it ends (`_cycle_follow`), and the scheduler's beat
    re-drives a symbol left waiting. A kick per booked order during a cycle used to reserve
    a place slot each (slots every other symbol then waited behind) and open a cycle that
    waited on the one in flight. True when enqueued."""
    if cycles.open_waits_on_flight(symbol):
        return False
    client = _redis()
    key = _CYCLE_OPEN_KEY.format(symbol)
    if not client.set(key, 1, nx=True, ex=_CYCLE_OPEN_TTL):
        return False
    delay = slots.place_slot_reserve(client)
    if delay > 0:
        client.expire(key, int(delay) + _CYCLE_OPEN_TTL)
    cycle_open.apply_async(args=[symbol], countdown=delay or None)
    return True


def _cycle_follow(nxt: cycles.CycleNext | None, symbol: str | None = None) -> None:
    if nxt is None:
        if symbol is not None and cycles.book(symbol).exists():
            cycle_kick(symbol)  # the cycle ended: the next one takes who waits meanwhile
        return
    task = cycle_place if nxt.step == "place" else cycle_poll
    task.apply_async(args=[nxt.cycle_id], countdown=nxt.countdown or None)


@bronco_task(name="orders.tasks.cycle_open", queue=QUEUE_BROKER, **_STAGE_OPTIONS)
def cycle_open(symbol: str) -> None:
    """Open a cycle of `symbol` (one quote for its whole book)."""
    try:
        with cycles.step_timer("cycle_open"):
            nxt = cycles.cycle_open(symbol=symbol)
    finally:
        _redis().delete(_CYCLE_OPEN_KEY.format(symbol))
    if nxt is None and cycles.book_has_newcomers(symbol):
        # Allocated at once (or found a cycle in flight that ended since): orders that
        # joined meanwhile are not left to the next beat (a stack without beat stalled).
        cycle_kick(symbol)
        return
    _cycle_follow(nxt)


@bronco_task(name="orders.tasks.cycle_place", queue=QUEUE_BROKER, **_STAGE_OPTIONS)
def cycle_place(cycle_id: int) -> None:
    with runs.run_heartbeat(cycle_id=cycle_id), cycles.step_timer("cycle_place"):
        nxt = cycles.cycle_place(cycle_id=cycle_id)
    _cycle_follow(nxt, _symbol_of(cycle_id))


@bronco_task(name="orders.tasks.cycle_poll", queue=QUEUE_BROKER, **_STAGE_OPTIONS)
def cycle_poll(cycle_id: int) -> None:
    count_stage_run(stage="cycle_poll", superseded=False)
    with runs.run_heartbeat(cycle_id=cycle_id), cycles.step_timer("cycle_poll"):
        nxt = cycles.cycle_poll(cycle_id=cycle_id)
    _cycle_follow(nxt, _symbol_of(cycle_id))


@bronco_task(
    name="orders.tasks.cycles_fees_record",
    queue=QUEUE_BROKER,
    soft_time_limit=50,
    time_limit=60,
    expires=60,
)
def cycles_fees_record() -> int:
    """Beat: read the broker's fee of allocated cycles that lack it (Bronco's cost, off the
    cycles' critical path). Returns how many it recorded."""
    return cycles.cycles_fees_record()


def _symbol_of(cycle_id: int) -> str | None:
    return Cycle.objects.filter(pk=cycle_id).values_list("symbol", flat=True).first()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@bronco_task(
    name="orders.tasks.cycles_schedule",
    queue=QUEUE_DEFAULT,
    soft_time_limit=20,
    time_limit=30,
    # A late run is worthless once the next one is due.
    expires=10,
)
def cycles_schedule() -> int:
    """Beat: re-drive cycles whose steps stopped, and open a cycle for every symbol with
    orders waiting, the longest-waiting first (one open request per symbol at a time).
    Returns how many cycles it opened."""
    stalled = cycles.cycles_stalled()
    if stalled:
        # Their orders waited on lost work: that time never counts against their deadline.
        runs.orders_deadline_extend(
            order_ids=Order.objects.filter(cycle_id__in=[n.cycle_id for n in stalled])
            .values_list("pk", flat=True)
            .iterator(),
            reason="its cycle's work was lost and re-driven",
        )
    for nxt in stalled:
        _cycle_follow(nxt)
    for symbol in cycles.symbols_in_flight_with_leavers():
        cycle_kick(symbol)  # its cancelled and late orders leave now, not after the cycle
    if settings.NETTING_COVERED_CYCLES:
        token = uuid.uuid4().hex
        if _redis().set(_COVERED_KEY, token, nx=True, ex=_COVERED_TTL):
            cycles_open_covered.apply_async(args=[token], expires=_COVERED_TTL)
    return sum(cycle_kick(symbol) for symbol in cycles.symbols_waiting())


# One covered pass at a time: the key names the pass's token, and lives as long as a pass
# may run (its time limit) or wait in the queue (its expiry).
_COVERED_KEY = "bronco:cycles-covered"
_COVERED_TTL = 15
# Deletes the key only while it still names this pass (a later pass's key stays).
_DELETE_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@bronco_task(
    name="orders.tasks.cycles_open_covered",
    queue=QUEUE_BROKER,
    soft_time_limit=_COVERED_TTL - 5,
    time_limit=_COVERED_TTL,
)
def cycles_open_covered(token: str = "") -> int:
    """Beat (through `cycles_schedule`, one pass at a time): symbols whose house inventory
    squares their book trade from it now, on one snapshot for all
    (`cycles.cycles_open_covered`). The place slots `cycles_schedule` reserves are not
    touched: a slot whose book a covered cycle emptied opens nothing, or with a buy-ahead
    tops the inventory up. Returns the cycles it allocated."""
    try:
        with cycles.step_timer("cycles_open_covered"):
            return cycles.cycles_open_covered()
    finally:
        if token:
            _redis().eval(_DELETE_IF_MINE, 1, _COVERED_KEY, token)


@bronco_task(name="orders.tasks.ping", queue=QUEUE_DEFAULT, soft_time_limit=10, time_limit=20)
def ping(token: str) -> dict:
    """Round-trip check for operators and tests: proves a worker took the task from the
    broker and reached the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (db_ok,) = cursor.fetchone()
    return {"token": token, "db": db_ok == 1, "worker": socket.gethostname()}
