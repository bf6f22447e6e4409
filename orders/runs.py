"""One live pipeline run per order.

A *run* is the Celery chain that drives an order's own work: validate (which books it), and
later settle, each stage enqueuing the next (`Next`); in between, the order is its netting
cycle's (`orders.netting.cycles`, which has a lease of its own). Every task of a run
carries the run's generation (`Order.run_gen`). A task acts only while its generation is
the order's current one, and every step it takes renews the order's lease
(`Order.run_lease_until`: now + the countdown to its next step + `ORDER_RUN_LEASE_SECONDS`,
which covers queueing and the task's own time limit). So:

- the compensation scan takes over (new generation) only an open order whose lease ran out:
  its run is dead (worker killed, task lost with the queue) — a live run keeps renewing;
- a takeover that must not wait (a user's or an operator's cancel, an operator's retry, a
  cycle starting an order's settle run) starts a new generation at once; the superseded run's next
  task finds another generation and stops, so two runs never go on side by side. Stages are
  safe to run concurrently anyway (row locks, versioned updates): what the generation
  prevents is runs multiplying.

Writes here are bookkeeping (no status change), conditional UPDATEs on (id, run_gen), not
state transitions; they are not audited except where a takeover is asked for by a person.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, F, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from core.audit import AuditEntry, audit_record_many
from orders.models import OPEN_STATUSES, Cycle, CycleStatus, Order, OrderStatus
from orders.stages import Next, Stage

logger = logging.getLogger(__name__)

# EXECUTING orders are their cycle's (orders.netting.cycles): no run of their own.
_STAGE_BY_STATUS = {
    OrderStatus.PENDING: Stage.VALIDATE,
    OrderStatus.SETTLING: Stage.SETTLE,
}


# Orders a run drives: validation (PENDING, not yet booked) and settlement. A booked order
# waits for a cycle, and an order in a cycle is the cycle's (orders.netting.cycles): no run.
_RUN_DRIVEN = Q(status=OrderStatus.PENDING, booked_at__isnull=True) | Q(status=OrderStatus.SETTLING)


def _lease_until(countdown: float = 0.0) -> timezone.datetime:
    return timezone.now() + timezone.timedelta(
        seconds=max(countdown, 0.0) + settings.ORDER_RUN_LEASE_SECONDS
    )


def stage_for_status(status: str) -> Stage | None:
    """The stage that moves an order in `status` on; None for a terminal status."""
    return _STAGE_BY_STATUS.get(status)


def initial_lease() -> timezone.datetime:
    """The lease a new order starts with: its first task has this long to begin."""
    return _lease_until()


def run_enqueue(*, order_id: int, gen: int, nxt: Next) -> None:
    """Send the task of `nxt.stage` for run `gen` (on its stage's queue, after `countdown`)."""
    run_enqueue_many(gens={order_id: gen}, nxt=nxt)


# Above this many orders, `run_enqueue_many` publishes one fan-out task per this many
# instead (a 100,000-log backfill would otherwise spend most of its time publishing).
RUN_ENQUEUE_FANOUT = 1000


def run_enqueue_many(*, gens: Mapping[int, int], nxt: Next) -> None:
    """Send the task of `nxt.stage` for each order (order id -> its run's generation), all
    after `nxt.countdown` seconds, through one broker connection (the one publish loop of
    every start, continuation and takeover). More than `RUN_ENQUEUE_FANOUT` orders are
    published as fan-out tasks of that many ids each (`orders.tasks.runs_enqueue`, which
    publishes them from a worker): the caller (the listener's backfill) then sends one
    message per thousand orders. A fan-out task lost before it runs costs only time: each
    order's lease runs out and the scan takes it over."""
    if not gens:
        return
    from celery import current_app

    from orders.tasks import runs_enqueue, task_for_stage  # the tasks import the pipeline

    if len(gens) > RUN_ENQUEUE_FANOUT:
        by_gen: dict[int, list[int]] = {}
        for order_id, gen in gens.items():
            by_gen.setdefault(gen, []).append(order_id)
        with current_app.producer_or_acquire() as producer:
            for gen, order_ids in by_gen.items():
                for i in range(0, len(order_ids), RUN_ENQUEUE_FANOUT):
                    runs_enqueue.apply_async(
                        args=[order_ids[i : i + RUN_ENQUEUE_FANOUT], gen, str(nxt.stage)],
                        kwargs={"countdown": nxt.countdown},
                        producer=producer,
                    )
        return
    task = task_for_stage(nxt.stage)
    with current_app.producer_or_acquire() as producer:
        for order_id, gen in gens.items():
            task.apply_async(
                args=[order_id],
                kwargs={"gen": gen},
                countdown=nxt.countdown or None,
                producer=producer,
            )


def run_step_begin(*, order_id: int, gen: int) -> bool:
    """A task of run `gen` is about to act: True (and the lease renewed to a held lease: its
    heartbeats keep it) when `gen` is the order's live run, False when another run took the
    order over (the caller stops)."""
    return bool(
        Order.objects.filter(pk=order_id, run_gen=gen).update(run_lease_until=_held_until())
    )


def run_continue(*, order_id: int, gen: int, nxt: Next | None) -> bool:
    """Carry run `gen` on to `nxt`: renew the lease to cover its countdown and enqueue it.
    Nothing happens when the run was superseded meanwhile or there is no next step.
    Returns True when the next step was enqueued."""
    if nxt is None:
        return False
    renewed = Order.objects.filter(pk=order_id, run_gen=gen).update(
        run_lease_until=_lease_until(nxt.countdown)
    )
    if not renewed:
        logger.info("run superseded; not continuing", extra={"order_id": order_id, "gen": gen})
        return False
    run_enqueue(order_id=order_id, gen=gen, nxt=nxt)
    return True


def run_take_over(*, order_id: int, stage: Stage | None = None) -> int | None:
    """Start a new run of an open order now (the old one stops at its next step): at `stage`,
    or the stage its status calls for. Enqueues after the caller's transaction commits.
    Returns the new generation, or None when the order is terminal or unknown."""
    with transaction.atomic():
        row = (
            Order.objects.select_for_update(of=("self",))
            .filter(pk=order_id)
            .values_list("status", "run_gen")
            .first()
        )
        if row is None:
            return None
        status, gen = row
        stage = stage or stage_for_status(status)
        if stage is None:
            return None
        new_gen = gen + 1
        Order.objects.filter(pk=order_id).update(run_gen=new_gen, run_lease_until=_lease_until())
        transaction.on_commit(
            lambda: run_enqueue(order_id=order_id, gen=new_gen, nxt=Next(stage)), robust=True
        )
    return new_gen


def runs_take_over_many(*, order_ids: Sequence[int], stage: Stage) -> None:
    """`run_take_over` for many orders at `stage` at once (a netting cycle settling
    hundreds): one UPDATE of their generations and leases, their tasks enqueued through one
    broker connection after the caller's transaction commits. The caller holds the orders'
    row locks."""
    ids = list(order_ids)
    if not ids:
        return
    Order.objects.filter(pk__in=ids).update(
        run_gen=F("run_gen") + 1, run_lease_until=_lease_until()
    )
    gens = dict(Order.objects.filter(pk__in=ids).values_list("pk", "run_gen"))
    if stage == Stage.SETTLE:
        # Settled by the batch: one task sends (and then follows) a batch of them, rather
        # than one task per order racing the others for their row locks.
        transaction.on_commit(lambda: _settle_groups_enqueue_or_defer(gens), robust=True)
        return
    transaction.on_commit(lambda: run_enqueue_many(gens=gens, nxt=Next(stage)), robust=True)


_settle_deferred: ContextVar[dict[int, int] | None] = ContextVar("settle_deferred", default=None)


@contextmanager
def settle_groups_deferred() -> Iterator[None]:
    """Within it, the settle runs that allocations take over (`runs_take_over_many`) are
    published together when it ends, rather than one set of group tasks per transaction:
    the covered cycles of several symbols in one beat settle in one batched transaction,
    not one small one each (more transactions than the chain worker sends). What committed
    is published even when the block raises; a process that dies inside it loses only
    time (each run's lease runs out and the scan re-drives it)."""
    token = _settle_deferred.set({})
    try:
        yield
    finally:
        gens = _settle_deferred.get() or {}
        _settle_deferred.reset(token)
        settle_groups_enqueue(gens=gens)


def _settle_groups_enqueue_or_defer(gens: Mapping[int, int]) -> None:
    deferred = _settle_deferred.get()
    if deferred is None:
        settle_groups_enqueue(gens=gens)
    else:
        deferred.update(gens)


def settle_groups_enqueue(*, gens: Mapping[int, int], countdown: float = 0.0) -> None:
    """Publish `orders.tasks.orders_settle_group` for the settle runs `gens` (order id ->
    generation), CHAIN_SETTLEMENT_BATCH_MAX orders per task, after `countdown` seconds:
    each task carries every run it drives, renews the leases near their end, and hands an
    order back to its own `order_settle` task when it needs one. A lost group task costs only time:
    each order's lease runs out and the scan re-drives it alone."""
    if not gens:
        return
    from celery import current_app

    from orders.tasks import orders_settle_group

    items = sorted(gens.items())
    size = max(1, settings.CHAIN_SETTLEMENT_BATCH_MAX)
    with current_app.producer_or_acquire() as producer:
        for i in range(0, len(items), size):
            orders_settle_group.apply_async(
                args=[[list(item) for item in items[i : i + size]]],
                countdown=countdown or None,
                producer=producer,
            )


def _live(gens: Mapping[int, int]) -> Q:
    """Orders still at the given generation (order id -> gen): one `pk IN` per distinct
    generation, not one condition per order (a batch's runs mostly share a few)."""
    by_gen: dict[int, list[int]] = {}
    for order_id, gen in gens.items():
        by_gen.setdefault(gen, []).append(order_id)
    alive = Q(pk__in=[])
    for gen, order_ids in by_gen.items():
        alive |= Q(run_gen=gen, pk__in=order_ids)
    return alive


def runs_step_begin_many(*, gens: Mapping[int, int]) -> dict[int, int]:
    """`run_step_begin` for many runs at once: returns those still their order's live run
    (order id -> generation; the others were taken over and are left alone), and renews
    the lease of each with less than half of ORDER_RUN_LEASE_SECONDS left. A lease with
    more (a group task begins within a second or two of the step that set its lease) is
    not written: the step's heartbeat renews it while it works, and each write of an order
    row touches every index of the table (an eighth of the chain worker's time at 200
    deposits/s, when every group step rewrote all its orders)."""
    if not gens:
        return {}
    alive = _live(gens)
    soon = timezone.now() + timezone.timedelta(seconds=settings.ORDER_RUN_LEASE_SECONDS / 2)
    due = Q(run_lease_until__lt=soon) | Q(run_lease_until__isnull=True)
    Order.objects.filter(alive).filter(due).update(run_lease_until=_lease_until())
    return dict(Order.objects.filter(alive).values_list("pk", "run_gen"))


def runs_continue_many(*, gens: Mapping[int, int], nxt: Next, grouped: bool = False) -> int:
    """`run_continue` for many runs: renew the leases of those still live to cover
    `nxt.countdown` and enqueue their next step, each its own task or, with `grouped` (a
    settle step), one `orders_settle_group` task for them all. Returns how many continue."""
    if not gens:
        return 0
    alive = _live(gens)
    Order.objects.filter(alive).update(run_lease_until=_lease_until(nxt.countdown))
    live = dict(Order.objects.filter(alive).values_list("pk", "run_gen"))
    if grouped:
        settle_groups_enqueue(gens=live, countdown=nxt.countdown)
    else:
        run_enqueue_many(gens=live, nxt=nxt)
    return len(live)


def runs_dead_claim(
    *, limit: int = 500, stage: Stage | None = None, queued: Mapping[int, int] | None = None
) -> Iterator[tuple[int, int, Next]]:
    """Claim open orders whose lease ran out (only those at `stage` when given, at most
    `limit`): each gets a new generation (and a fresh lease) in one conditional UPDATE, so two
    concurrent scans never claim the same order, and a run that renews its lease meanwhile is
    not taken over. A run whose task still waits in the broker's queue (`queued`: order id ->
    generation of the queued task) is not lost but late, and is left to it. Yields (order
    id, new gen, stage).

    A lease counts as run out one beat interval after its end (`lease_ran_out_before`):
    a step that held its rows past its lease (a slow node call inside its transaction) is
    renewed by the first beat after its commit, and the scan skips locked rows itself."""
    # Left out in the query, not after it: under a backlog the `limit` lowest expired ids
    # are the queued ones, and a lost run behind them would never be reached.
    waiting = _live(queued or {})
    now = lease_ran_out_before()
    statuses = [s for s, st in _STAGE_BY_STATUS.items() if stage in (None, st)]
    with transaction.atomic():
        rows = list(
            Order.objects.filter(status__in=statuses)
            .filter(_RUN_DRIVEN)
            .filter(Q(run_lease_until__lt=now) | Q(run_lease_until__isnull=True))
            .exclude(waiting)
            .order_by("pk")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", "status", "run_gen")[:limit]
        )
        claimed = []
        for pk, status, gen in rows:
            taken = (
                Order.objects.filter(pk=pk, run_gen=gen)
                .filter(Q(run_lease_until__lt=now) | Q(run_lease_until__isnull=True))
                .update(run_gen=F("run_gen") + 1, run_lease_until=_lease_until())
            )
            if taken:
                claimed.append((pk, gen + 1, Next(_STAGE_BY_STATUS[status])))
    yield from claimed


def runs_overdue(runs_gens: Mapping[int, int]) -> list[int]:
    """Of `runs_gens` (order id -> generation), the open orders still at that generation
    whose lease ran out: runs whose task is late."""
    if not runs_gens:
        return []
    now = timezone.now()
    return list(
        Order.objects.filter(_live(runs_gens), status__in=[s.value for s in OPEN_STATUSES])
        .filter(Q(run_lease_until__lt=now) | Q(run_lease_until__isnull=True))
        .values_list("pk", flat=True)
    )


# --- heartbeat: a run (or cycle step) that is working keeps its lease ----------------------

_beat_lock = threading.Lock()
_beating_runs: dict[int, int] = {}  # order id -> generation of the run working on it here
_beating_cycles: set[int] = set()
_beat_owner: tuple[int, threading.Thread] | None = None  # (pid, thread): a fork starts anew


def _held_until() -> timezone.datetime:
    return timezone.now() + timezone.timedelta(seconds=settings.ORDER_RUN_HELD_LEASE_SECONDS)


def heartbeat_interval() -> float:
    """Seconds between heartbeats: a quarter of the held lease."""
    return max(0.25, settings.ORDER_RUN_HELD_LEASE_SECONDS / 4)


def lease_ran_out_before() -> timezone.datetime:
    """A lease (a run's or a cycle step's) ending before this has run out: now less one
    beat interval. A beat skips a row another transaction holds (`_unlocked`), so a step
    that held its rows past its lease is renewed by the first beat after its commit; the
    takeovers (`runs_dead_claim`, `orders.netting.cycles.cycles_stalled`) wait that long."""
    return timezone.now() - timezone.timedelta(seconds=heartbeat_interval())


def _unlocked(queryset: QuerySet) -> QuerySet:
    """`queryset`'s rows no other transaction holds, as a subquery of their ids: a lease
    renewal skips a locked row rather than wait on it. The holder is a live step (often the
    very task whose lease this renews, mid-transaction), and the scan's claim skips locked
    rows too (`runs_dead_claim`), so nothing takes that run over while the lock is held;
    the next beat renews it. Waiting instead made the beat queue behind its own task's
    locks, and a renewal that had locked some of a batch's rows made that batch's
    `skip_locked` selection leave them out (each then settled alone)."""
    return queryset.select_for_update(skip_locked=True, of=("self",)).values("pk")


def leases_renew(
    *,
    working_runs: Mapping[int, int] | None = None,
    working_cycles: Iterable[int] = (),
    waiting_runs: Mapping[int, int] | None = None,
    waiting_cycles: Iterable[int] = (),
) -> None:
    """Renew the leases of what a live process holds to now + ORDER_RUN_HELD_LEASE_SECONDS.
    `working_*` (order id -> run generation, cycle ids): steps working here; never
    shortened (the step may have set a longer lease for its next step's countdown).
    `waiting_*`: a step's task this worker holds and has not started (waiting out its
    countdown, or for a pool slot): the lease no longer needs to cover that countdown, since
    the holder's heartbeat now vouches for it, so it is set, shortening it. A superseded
    run's generation, or an allocated cycle, is left alone.

    Only leases that need it are written: a working lease with more than
    ORDER_RUN_HELD_LEASE_SECONDS less half a beat interval still to run, or a waiting one
    already within half an interval of the new end, is left as it is. Beats come every
    `heartbeat_interval()` (the worker's held-work beat a little later: `orders.held`), so a
    renewed lease stays about two intervals ahead. A row another transaction holds is
    skipped, not waited for (`_unlocked`; the scan's grace covers it, `runs_dead_claim`)."""
    until = _held_until()
    slack = timezone.timedelta(seconds=heartbeat_interval() / 2)
    later = Value(until, output_field=DateTimeField())
    due = Q(run_lease_until__lt=until - slack) | Q(run_lease_until__isnull=True)
    if working_runs:
        rows = Order.objects.filter(_live(working_runs)).filter(due)
        _renew(rows, run_lease_until=Greatest(F("run_lease_until"), later))
    if waiting_runs:
        rows = Order.objects.filter(_live(waiting_runs)).filter(due | Q(run_lease_until__gt=until))
        _renew(rows, run_lease_until=until)
    open_cycles = Cycle.objects.exclude(status=CycleStatus.ALLOCATED)
    cycle_due = Q(lease_until__lt=until - slack) | Q(lease_until__isnull=True)
    if working := set(working_cycles):
        rows = open_cycles.filter(pk__in=working).filter(cycle_due)
        _renew(rows, lease_until=Greatest(F("lease_until"), later))
    if waiting := set(waiting_cycles) - working:
        rows = open_cycles.filter(pk__in=waiting).filter(cycle_due | Q(lease_until__gt=until))
        _renew(rows, lease_until=until)


def leases_hold(order_ids: Iterable[int]) -> None:
    """Renew the leases of orders whose rows the caller's transaction holds locked, to at
    least now + ORDER_RUN_HELD_LEASE_SECONDS, before it commits. For a step that calls
    the node or the broker under its rows' locks: a beat skips locked rows (`_unlocked`),
    and a lease that ran out during a long hold would otherwise be stale at the commit, open
    to the scan until the next beat. Never waits (the caller holds the locks); not audited
    (bookkeeping, as every lease write)."""
    ids = list(order_ids)
    if ids:
        later = Value(_held_until(), output_field=DateTimeField())
        Order.objects.filter(pk__in=ids).update(
            run_lease_until=Greatest(F("run_lease_until"), later)
        )


def _renew(rows: QuerySet, **values: object) -> None:
    """UPDATE the rows of `rows` no other transaction holds, each statement its own short
    transaction (see `_unlocked`)."""
    with transaction.atomic():
        rows.model.objects.filter(pk__in=_unlocked(rows)).update(**values)


def _heartbeat_once() -> None:
    """Renew the lease of every run and cycle step working in this process."""
    with _beat_lock:
        beating_runs, beating_cycles = dict(_beating_runs), set(_beating_cycles)
    if not beating_runs and not beating_cycles:
        # Nothing working here: the thread keeps no database session open between steps
        # (it would hold a connection per idle pool child, and keep a test database from
        # being dropped).
        connection.close()
        return
    leases_renew(working_runs=beating_runs, working_cycles=beating_cycles)


def _heartbeat_loop() -> None:
    while True:
        time.sleep(heartbeat_interval())
        try:
            _heartbeat_once()
        except Exception:  # noqa: BLE001 - a blinking database: the next beat reconnects
            logger.warning("run heartbeat failed; retrying", exc_info=True)
            connection.close()


def _heartbeat_start() -> None:
    global _beat_owner
    if _beat_owner is not None and _beat_owner[0] == os.getpid() and _beat_owner[1].is_alive():
        return
    thread = threading.Thread(target=_heartbeat_loop, name="bronco-run-heartbeat", daemon=True)
    thread.start()
    _beat_owner = (os.getpid(), thread)


@contextmanager
def run_heartbeat(
    *,
    order_id: int | None = None,
    gen: int = 0,
    cycle_id: int | None = None,
    runs: Mapping[int, int] | None = None,
):
    """While the block runs, a thread of this process renews the lease of run `gen` of
    `order_id` (and of every run of `runs`, order id -> generation, for a task driving many;
    or of cycle `cycle_id`) to ORDER_RUN_HELD_LEASE_SECONDS every quarter of it: a step
    that is working is never taken over however long it takes, and one whose process died
    (kill -9: the thread dies with it) is taken over within that lease. Leases are only
    ever extended here."""
    mine = dict(runs or {})
    if order_id is not None:
        mine[order_id] = gen
    with _beat_lock:
        _beating_runs.update(mine)
        if cycle_id is not None:
            _beating_cycles.add(cycle_id)
        _heartbeat_start()
    try:
        yield
    finally:
        with _beat_lock:
            for key, value in mine.items():
                if _beating_runs.get(key) == value:
                    del _beating_runs[key]
            if cycle_id is not None:
                _beating_cycles.discard(cycle_id)


# --- faults: lost work is re-driven at once, and never costs the user their order ----------

REDRIVE_ACTOR = "task:orders.redrive"
_BROKER_EPOCH_KEY = "bronco:broker-epoch"


def broker_lost_work() -> bool:
    """True when the Celery broker may have lost queued work since the last call: a Redis
    broker restarted (its `run_id` changed, whatever it restored from disk) or was wiped
    (the key this writes is gone). False for a broker that keeps its messages through its
    own restart (RabbitMQ's quorum queues: published with confirms, persisted, and a
    consumer's unacked messages return to the queue when its connection drops). The first
    call against a new Redis answers True: nothing can be known of what it held before."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return False
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    run_id = str(client.info("server")["run_id"])
    before = client.getset(_BROKER_EPOCH_KEY, run_id)
    lost = before is None or before.decode() != run_id
    if lost:
        logger.warning(
            "the broker restarted or was wiped: queued work is lost; taking every run over"
        )
    return lost


def cycle_holder_grace() -> float:
    """Seconds a live holder has to vouch for a cycle step after a broker wipe: two
    heartbeats (`heartbeat_interval`)."""
    return 2 * heartbeat_interval()


def runs_expire_all() -> tuple[int, int]:
    """After a broker lost its queues: end the lease of every run-driven open order, so this
    scan takes them over at once instead of waiting for leases to run out, and cut the
    lease of every cycle in flight to `cycle_holder_grace` (2 s), after which the cycle
    scheduler re-drives it. Cycles have no generation (their tasks name only the cycle), so
    a re-drive of a step that still lives would double its chain: a step working in a worker
    survives the wipe, and its heartbeat (`run_heartbeat`, every second) renews the lease
    within the grace; a step lost with the queue is renewed by nobody. A superseded order
    run stops by its generation, so orders need no grace. Returns (orders, cycles)."""
    now = timezone.now()
    orders = (
        Order.objects.filter(status__in=[s.value for s in OPEN_STATUSES])
        .filter(_RUN_DRIVEN)
        .update(run_lease_until=lease_ran_out_before() - timezone.timedelta(seconds=1))
    )
    # A beat short of the grace: the cycle scheduler re-drives a lease only a beat past its
    # end (`cycles_stalled`), which makes up the rest.
    cycles = Cycle.objects.exclude(status=CycleStatus.ALLOCATED).update(
        lease_until=now + timezone.timedelta(seconds=cycle_holder_grace() - heartbeat_interval())
    )
    return orders, cycles


def orders_deadline_extend(*, order_ids: Iterable[int], reason: str) -> int:
    """Give open orders whose work a fault lost (taken over after their lease ran out, in a
    cycle whose steps stopped, queued in a broker that was wiped) at least
    ORDER_FAULT_DEADLINE_GRACE_SECONDS before their deadline: the time a fault cost is never
    counted against an order, so it never turns into a refund while the market and the
    broker are there. Only ever extends; audited per order (`order.deadline_extended`).
    Returns how many deadlines moved."""
    ids = list(order_ids)
    if not ids:
        return 0
    until = timezone.now() + timezone.timedelta(seconds=settings.ORDER_FAULT_DEADLINE_GRACE_SECONDS)
    with transaction.atomic():
        rows = list(
            # A deadline counts while an order waits to trade; settling ones have none left.
            Order.objects.filter(
                pk__in=ids, status__in=[OrderStatus.PENDING, OrderStatus.EXECUTING]
            )
            .filter(deadline__lt=until)
            .order_by("pk")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", "deadline")
        )
        if not rows:
            return 0
        Order.objects.filter(pk__in=[pk for pk, _ in rows]).update(deadline=until)
        audit_record_many(
            [
                AuditEntry(
                    actor=REDRIVE_ACTOR,
                    action="order.deadline_extended",
                    order_id=pk,
                    before={"deadline": deadline.isoformat() if deadline else None},
                    after={"deadline": until.isoformat(), "reason": reason},
                )
                for pk, deadline in rows
            ]
        )
    logger.info("deadlines extended after a fault", extra={"orders": len(rows), "reason": reason})
    return len(rows)


def orders_trading_ids() -> list[int]:
    """Every order still waiting to trade (a wiped broker may have held work of any)."""
    return list(
        Order.objects.filter(status__in=[OrderStatus.PENDING, OrderStatus.EXECUTING]).values_list(
            "pk", flat=True
        )
    )
