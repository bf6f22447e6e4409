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
from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from orders.models import OPEN_STATUSES, Order, OrderStatus
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
    from orders.tasks import task_for_stage  # the tasks import the pipeline: import late

    task_for_stage(nxt.stage).apply_async(
        args=[order_id], kwargs={"gen": gen}, countdown=nxt.countdown or None
    )


# Above this many orders, `run_enqueue_many` publishes one fan-out task per this many
# instead (a 100,000-log backfill would otherwise spend most of its time publishing).
RUN_ENQUEUE_FANOUT = 1000


def run_enqueue_many(*, order_ids: list[int], gen: int, nxt: Next) -> None:
    """`run_enqueue` for many orders at the same step, through one broker connection. More
    than `RUN_ENQUEUE_FANOUT` orders are published as fan-out tasks of that many ids each
    (`orders.tasks.runs_enqueue`, which publishes them from a worker): the caller (the
    listener's backfill) then sends one message per thousand orders. A fan-out task lost
    before it runs costs only time: each order's lease runs out and the scan takes it over."""
    from celery import current_app

    from orders.tasks import runs_enqueue, task_for_stage

    if len(order_ids) > RUN_ENQUEUE_FANOUT:
        with current_app.producer_or_acquire() as producer:
            for i in range(0, len(order_ids), RUN_ENQUEUE_FANOUT):
                runs_enqueue.apply_async(
                    args=[order_ids[i : i + RUN_ENQUEUE_FANOUT], gen, str(nxt.stage)],
                    kwargs={"countdown": nxt.countdown},
                    producer=producer,
                )
        return
    task = task_for_stage(nxt.stage)
    with current_app.producer_or_acquire() as producer:
        for order_id in order_ids:
            task.apply_async(
                args=[order_id],
                kwargs={"gen": gen},
                countdown=nxt.countdown or None,
                producer=producer,
            )


def run_step_begin(*, order_id: int, gen: int) -> bool:
    """A task of run `gen` is about to act: True (and the lease renewed) when `gen` is the
    order's live run, False when another run took the order over (the caller stops)."""
    return bool(
        Order.objects.filter(pk=order_id, run_gen=gen).update(run_lease_until=_lease_until())
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

    def publish() -> None:
        from celery import current_app

        from orders.tasks import task_for_stage

        task = task_for_stage(stage)
        with current_app.producer_or_acquire() as producer:
            for order_id, gen in gens.items():
                task.apply_async(args=[order_id], kwargs={"gen": gen}, producer=producer)

    transaction.on_commit(publish, robust=True)


def runs_dead_claim(*, limit: int = 500) -> Iterator[tuple[int, int, Next]]:
    """Claim open orders whose lease ran out: each gets a new generation (and a fresh lease)
    in one conditional UPDATE, so two concurrent scans never claim the same order, and a run
    that renews its lease meanwhile is not taken over. Yields (order id, new gen, stage)."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            Order.objects.filter(status__in=[s.value for s in OPEN_STATUSES])
            .filter(_RUN_DRIVEN)
            .filter(Q(run_lease_until__lt=now) | Q(run_lease_until__isnull=True))
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
