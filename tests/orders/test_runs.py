"""One live pipeline run per order (orders.runs): the scan takes over only dead runs, two
scans never claim the same order, a superseded run stops at its next step; a broker push
has its cycle polled only when it is final, and never adds anything otherwise."""

import json
import threading
import time
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.models import AuditLog
from orders import runs
from orders.models import Cycle, Order, OrderStatus
from orders.services import order_broker_pushed
from orders.stages import Next, Stage
from tests.factories import CycleFactory, OrderFactory
from trading.broker import BrokerOrder, BrokerStatus, Side

pytestmark = pytest.mark.django_db


def _lease(*orders, seconds):
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(
        run_lease_until=timezone.now() + timezone.timedelta(seconds=seconds)
    )


def _expired() -> float:
    """Seconds (negative) that put a lease past the scan's grace (one beat interval)."""
    return -(runs.heartbeat_interval() + 1)


def _claim():
    return {pk: (gen, nxt) for pk, gen, nxt in runs.runs_dead_claim()}


def test_the_scan_takes_over_each_run_driven_order_whose_lease_ran_out_at_its_stage():
    pending = OrderFactory(status=OrderStatus.PENDING)
    settling = OrderFactory(status=OrderStatus.SETTLING, outcome=OrderStatus.EXECUTED)
    done = OrderFactory(status=OrderStatus.EXECUTED)
    alive = OrderFactory(status=OrderStatus.SETTLING)
    # In the book or in a cycle: the cycles drive these, not a run of their own.
    booked = OrderFactory(status=OrderStatus.PENDING, booked_at=timezone.now())
    in_cycle = OrderFactory(status=OrderStatus.EXECUTING)
    _lease(pending, settling, done, booked, in_cycle, seconds=_expired())
    _lease(alive, seconds=60)

    claimed = _claim()

    assert claimed == {
        pending.pk: (1, Next(Stage.VALIDATE)),
        settling.pk: (1, Next(Stage.SETTLE)),
    }
    # The new runs hold fresh leases: the next scan leaves them until they stop renewing.
    assert _claim() == {}
    assert Order.objects.get(pk=alive.pk).run_gen == 0


def test_a_superseded_run_stops_at_its_next_step():
    order = OrderFactory(status=OrderStatus.SETTLING)
    assert runs.run_step_begin(order_id=order.pk, gen=0)
    Order.objects.filter(pk=order.pk).update(run_gen=1)  # someone took the order over
    assert not runs.run_step_begin(order_id=order.pk, gen=0)
    assert not runs.run_continue(order_id=order.pk, gen=0, nxt=Next(Stage.SETTLE, 1.0))
    assert runs.run_step_begin(order_id=order.pk, gen=1)


def test_each_step_renews_the_lease_to_cover_its_countdown(settings):
    settings.ORDER_RUN_LEASE_SECONDS = 10
    order = OrderFactory(status=OrderStatus.PENDING)
    before = timezone.now()
    runs.run_continue(order_id=order.pk, gen=0, nxt=Next(Stage.VALIDATE, 100.0))
    lease = Order.objects.get(pk=order.pk).run_lease_until
    assert lease >= before + timezone.timedelta(seconds=110)


@pytest.mark.django_db(transaction=True)
def test_concurrent_scans_claim_disjoint_sets():
    orders = [OrderFactory(status=OrderStatus.SETTLING) for _ in range(60)]
    _lease(*orders, seconds=_expired())
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    lock = threading.Lock()

    def scan() -> None:
        try:
            barrier.wait(timeout=10)
            got = [pk for pk, _, _ in runs.runs_dead_claim()]
            with lock:
                results.append(got)
        finally:
            connection.close()

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    first, second = results
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(o.pk for o in orders)
    assert set(Order.objects.values_list("run_gen", flat=True)) == {1}


def _push(cycle, *, filled, status=BrokerStatus.WORKING):
    return BrokerOrder(
        broker_order_id=cycle.futu_order_id or "77",
        client_id=cycle.client_id,
        code=cycle.stock_code,
        side=Side.BUY,
        qty=Decimal(10),
        price=Decimal(100),
        filled_qty=Decimal(filled),
        avg_fill_price=Decimal(100) if filled else None,
        status=status,
        raw_status=status.name,
    )


def _pushed(*pushes):
    """Deliver pushes as the SDK does: on its own thread (which closes its connection)."""

    def deliver() -> None:
        for push in pushes:
            order_broker_pushed(push)

    thread = threading.Thread(target=deliver)
    thread.start()
    thread.join(timeout=30)


def _cycle(symbol: str = "AAPL"):
    return CycleFactory(
        symbol=symbol,
        stock_code=f"US.{symbol}",
        broker_units=10 * 10**18,
        futu_order_id="77",
    )


def _queued_polls():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    bodies = [json.loads(raw) for raw in client.lrange("broker", 0, -1)]
    return [b for b in bodies if b["headers"]["task"] == "orders.tasks.cycle_poll"]


@pytest.mark.django_db(transaction=True)
def test_pushes_that_are_not_final_add_nothing_and_a_final_one_polls_the_cycle_once():
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("broker")
    cycle = _cycle()
    _pushed(*[_push(cycle, filled=f) for f in (0, 0, 3, 3, 5, 5)])
    assert _queued_polls() == []
    _pushed(_push(cycle, filled=10, status=BrokerStatus.FILLED))
    assert len(_queued_polls()) == 1


# --- re-drive in seconds (issue 17, point 1) ----------------------------------------------


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has a connection of its own
def test_a_working_step_keeps_its_lease_by_heartbeat_and_never_shortens_one(settings):
    settings.ORDER_RUN_LEASE_SECONDS = 3  # a beat every second
    working = OrderFactory(status=OrderStatus.SETTLING, run_gen=2)
    waiting = OrderFactory(status=OrderStatus.SETTLING)  # its countdown asked a long lease
    superseded = OrderFactory(status=OrderStatus.SETTLING, run_gen=5)
    _lease(working, superseded, seconds=0.5)
    _lease(waiting, seconds=100)
    with (
        runs.run_heartbeat(order_id=working.pk, gen=2),
        runs.run_heartbeat(order_id=waiting.pk, gen=0),
        runs.run_heartbeat(order_id=superseded.pk, gen=4),
    ):
        time.sleep(2.5)
        now = timezone.now()
        # Without a beat its lease would have ended 2 s ago; a beat renewed it past now
        # (at least one beat of the two due, with slack for a loaded machine).
        assert Order.objects.get(pk=working.pk).run_lease_until > now
        assert Order.objects.get(pk=waiting.pk).run_lease_until > now + timezone.timedelta(
            seconds=95
        )
        assert Order.objects.get(pk=superseded.pk).run_lease_until < now  # not its run
    _lease(working, seconds=_expired())
    time.sleep(1.0)
    assert Order.objects.get(pk=working.pk).run_lease_until < timezone.now()  # step ended


def test_a_fault_extends_deadlines_of_orders_waiting_to_trade_only_and_audits_it(settings):
    settings.ORDER_FAULT_DEADLINE_GRACE_SECONDS = 60
    now = timezone.now()
    soon = OrderFactory(status=OrderStatus.PENDING, deadline=now)
    trading = OrderFactory(status=OrderStatus.EXECUTING, deadline=now)
    later = OrderFactory(status=OrderStatus.PENDING, deadline=now + timezone.timedelta(hours=1))
    settling = OrderFactory(status=OrderStatus.SETTLING, deadline=now)

    moved = runs.orders_deadline_extend(
        order_ids=[o.pk for o in (soon, trading, later, settling)], reason="test"
    )

    assert moved == 2
    for order in (soon, trading):
        deadline = Order.objects.get(pk=order.pk).deadline
        assert deadline >= now + timezone.timedelta(seconds=59)
    assert Order.objects.get(pk=later.pk).deadline == later.deadline  # never shortened
    assert Order.objects.get(pk=settling.pk).deadline == settling.deadline
    entries = AuditLog.objects.filter(action="order.deadline_extended")
    assert sorted(entries.values_list("order_id", flat=True)) == sorted([soon.pk, trading.pk])


def test_a_wiped_or_restarted_redis_broker_is_detected(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("bronco:broker-epoch")
    assert runs.broker_lost_work()  # nothing known of what it held
    assert not runs.broker_lost_work()
    assert not runs.broker_lost_work()
    client.delete("bronco:broker-epoch")  # FLUSHALL, or a restart without its data
    assert runs.broker_lost_work()
    client.set("bronco:broker-epoch", "an-earlier-run-id")  # restarted, data restored
    assert runs.broker_lost_work()
    assert not runs.broker_lost_work()


def test_after_a_broker_wipe_every_run_and_cycle_in_flight_is_taken_over_at_once():
    pending = OrderFactory(status=OrderStatus.PENDING)
    settling = OrderFactory(status=OrderStatus.SETTLING)
    _lease(pending, settling, seconds=600)
    cycle = _cycle()
    Cycle.objects.filter(pk=cycle.pk).update(
        lease_until=timezone.now() + timezone.timedelta(seconds=600)
    )
    assert _claim() == {}

    assert runs.runs_expire_all() == (2, 1)

    assert set(_claim()) == {pending.pk, settling.pk}
    lease = Cycle.objects.get(pk=cycle.pk).lease_until
    assert lease <= timezone.now() + timezone.timedelta(seconds=runs.cycle_holder_grace())


def test_after_a_broker_wipe_a_cycle_step_still_working_is_not_redriven_a_lost_one_is(settings):
    """Cycles have no generation: a step that survived the wipe (working in a worker) must
    not get a second chain beside its own; one lost with the queue is re-driven within the
    holder's grace (two heartbeats)."""
    from orders.netting.cycles import cycles_stalled

    settings.ORDER_RUN_HELD_LEASE_SECONDS = 1  # heartbeats every 0.25 s: a 0.5 s grace
    working, lost = _cycle(), _cycle("TSLA")
    later = timezone.now() + timezone.timedelta(seconds=600)
    Cycle.objects.filter(pk__in=[working.pk, lost.pk]).update(lease_until=later)

    assert runs.runs_expire_all() == (0, 2)
    assert cycles_stalled() == []  # not at once: a live holder may still vouch
    deadline = time.monotonic() + 10
    redriven: list[int] = []
    while not redriven and time.monotonic() < deadline:
        runs.leases_renew(working_cycles=[working.pk])  # the working step's heartbeat
        time.sleep(runs.heartbeat_interval())
        redriven = [n.cycle_id for n in cycles_stalled()]
    assert redriven == [lost.pk]


def test_the_scan_never_fills_a_stage_queue_past_its_bound(settings):
    from orders.tasks import compensation_scan

    dead = OrderFactory.create_batch(3, status=OrderStatus.PENDING)
    _lease(*dead, seconds=_expired())
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete("default")  # what earlier tests left queued
    runs.broker_lost_work()  # the epoch is known: this is no wipe
    settings.ORDER_REDRIVE_QUEUE_MAX = 0
    assert compensation_scan() == 0
    settings.ORDER_REDRIVE_QUEUE_MAX = 2
    assert compensation_scan() == 2  # room for two in the validate queue
    assert compensation_scan() == 0  # the queue holds them now: no room for more
    queue.delete("default")
    assert compensation_scan() == 1


def test_a_held_step_lease_is_the_holders_a_working_one_only_grows_a_superseded_one_is_left():
    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    waiting, working, superseded = OrderFactory.create_batch(3, status=OrderStatus.PENDING)
    _lease(waiting, working, superseded, seconds=held + 30)  # a long countdown's lease
    runs.leases_renew(
        waiting_runs={waiting.pk: waiting.run_gen, superseded.pk: superseded.run_gen + 1},
        working_runs={working.pk: working.run_gen},
    )
    left = {
        o.pk: (o.run_lease_until - timezone.now()).total_seconds()
        for o in Order.objects.filter(pk__in=[waiting.pk, working.pk, superseded.pk])
    }
    assert held - 2 < left[waiting.pk] <= held  # the holder vouches now, not the countdown
    assert left[working.pk] > held + 25 and left[superseded.pk] > held + 25

    _lease(working, seconds=0.5)
    runs.leases_renew(working_runs={working.pk: working.run_gen})
    working.refresh_from_db()
    assert (working.run_lease_until - timezone.now()).total_seconds() > held - 2


def test_a_lease_with_most_of_its_time_left_is_not_written_again(settings):
    """A beat writes only the leases that need it: one renewed less than half a beat
    interval ago is left as it is, working or waiting, run or cycle (before, every beat
    rewrote every row a worker held, several times a second under a backlog)."""
    settings.ORDER_RUN_HELD_LEASE_SECONDS = 40  # half an interval: 5 s, whatever the load
    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    working, waiting = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    _lease(working, waiting, seconds=held)
    cycle = _cycle()
    Cycle.objects.filter(pk=cycle.pk).update(
        lease_until=timezone.now() + timezone.timedelta(seconds=held)
    )
    before = dict(
        Order.objects.filter(pk__in=[working.pk, waiting.pk]).values_list("pk", "run_lease_until")
    )
    cycle_before = Cycle.objects.get(pk=cycle.pk).lease_until
    time.sleep(0.05)

    runs.leases_renew(
        working_runs={working.pk: working.run_gen},
        waiting_runs={waiting.pk: waiting.run_gen},
        working_cycles=[cycle.pk],
    )

    after = dict(
        Order.objects.filter(pk__in=[working.pk, waiting.pk]).values_list("pk", "run_lease_until")
    )
    assert after == before
    assert Cycle.objects.get(pk=cycle.pk).lease_until == cycle_before


def test_a_lease_that_ran_out_less_than_a_beat_ago_is_not_claimed_yet(settings):
    """A beat skips rows another transaction holds, so a step that held its rows past its
    lease is renewed by the first beat after its commit: until one beat interval past a
    lease's end the scan leaves the run to it."""
    settings.ORDER_RUN_HELD_LEASE_SECONDS = 40  # a beat every 10 s
    just, long_ago = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    _lease(just, seconds=-3)
    _lease(long_ago, seconds=-15)

    assert set(_claim()) == {long_ago.pk}


def test_a_cycle_lease_that_ran_out_less_than_a_beat_ago_is_not_stalled_yet(settings):
    from orders.netting.cycles import cycles_stalled

    settings.ORDER_RUN_HELD_LEASE_SECONDS = 40  # a beat every 10 s
    just, long_ago = _cycle(), _cycle("TSLA")
    now = timezone.now()
    Cycle.objects.filter(pk=just.pk).update(lease_until=now - timezone.timedelta(seconds=3))
    Cycle.objects.filter(pk=long_ago.pk).update(lease_until=now - timezone.timedelta(seconds=15))

    assert [n.cycle_id for n in cycles_stalled()] == [long_ago.pk]


def test_a_step_holding_its_rows_renews_their_leases_before_it_commits():
    """`leases_hold`: what a step that called the node under its rows' locks does before
    its commit, so no lease that ran out meanwhile is stale when the locks go."""
    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    ran_out, long_lease = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    _lease(ran_out, seconds=-30)
    _lease(long_lease, seconds=600)
    with transaction.atomic():
        list(Order.objects.select_for_update().filter(pk__in=[ran_out.pk, long_lease.pk]))
        runs.leases_hold([ran_out.pk, long_lease.pk])
    left = {
        o.pk: (o.run_lease_until - timezone.now()).total_seconds()
        for o in Order.objects.filter(pk__in=[ran_out.pk, long_lease.pk])
    }
    assert held - 2 < left[ran_out.pk] <= held
    assert left[long_lease.pk] > 590  # never shortened


@pytest.mark.django_db(transaction=True)  # another connection holds a row lock
def test_a_lease_renewal_skips_a_row_another_transaction_holds_rather_than_wait():
    """The beat must not queue behind a step's row locks (often its own task's, held to that
    task's commit): it renews what is free and leaves a locked row to the next beat. Before,
    it waited, and the rows it had locked meanwhile were left out of a settle batch's
    `skip_locked` selection, each order then settled alone."""
    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    locked, free = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    _lease(locked, free, seconds=0.5)
    taken, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Order.objects.select_for_update().get(pk=locked.pk)
                taken.set()
                release.wait(30)
        finally:
            connection.close()

    def renew():
        try:
            runs.leases_renew(working_runs={o.pk: o.run_gen for o in (locked, free)})
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    renewer = threading.Thread(target=renew)
    renewer.start()
    renewer.join(5)
    try:
        assert not renewer.is_alive()
    finally:
        release.set()
        holder.join(10)
        renewer.join(10)
    left = {
        o.pk: (o.run_lease_until - timezone.now()).total_seconds()
        for o in Order.objects.filter(pk__in=[locked.pk, free.pk])
    }
    assert held - 2 < left[free.pk] <= held
    assert left[locked.pk] < 0.5  # untouched: the next beat renews it


def test_a_worker_holding_a_settle_group_vouches_for_each_of_its_runs():
    """orders.held reads the requests this worker holds from Celery's own worker state: a
    batch's settle task names its runs as [[order id, gen], ...]."""
    from celery.worker import state

    class Request:  # the fields orders.held reads of Celery's Request (weak-referenceable)
        def __init__(self, name, args):
            self.name, self.args, self.kwargs = name, args, {}

    from orders.held import held_leases_renew

    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    first, second = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    _lease(first, second, seconds=held + 30)  # the lease a queued task's countdown set
    request = Request(
        "orders.tasks.orders_settle_group",
        ([[first.pk, first.run_gen], [second.pk, second.run_gen]],),
    )
    state.scheduled_requests.add(request)
    try:
        assert held_leases_renew() == 2
    finally:
        state.scheduled_requests.discard(request)
    for order in (first, second):
        order.refresh_from_db()
        assert held - 2 < (order.run_lease_until - timezone.now()).total_seconds() <= held


def test_a_run_whose_task_waits_in_its_queue_is_late_not_lost(settings):
    """Under a load its workers cannot keep up with, a stage task waits in the broker's
    queue longer than its run's lease. The scan leaves such a run to its queued task (a
    re-drive would only send it to the back of the queue again) and re-drives it once the
    task is gone."""
    from orders.tasks import compensation_scan, order_validate, orders_settle_group

    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete("default", "chain")  # what earlier tests left queued
    runs.broker_lost_work()  # the epoch is known: this is no wipe
    waiting_settle, lost_settle = OrderFactory.create_batch(2, status=OrderStatus.SETTLING)
    waiting_validate = OrderFactory(status=OrderStatus.PENDING)
    # A queued task of an older generation does not vouch for the current run.
    superseded = OrderFactory(status=OrderStatus.SETTLING, run_gen=3)
    orders_settle_group.apply_async(
        args=[[[waiting_settle.pk, waiting_settle.run_gen], [superseded.pk, 2]]]
    )
    order_validate.apply_async(args=[waiting_validate.pk], kwargs={"gen": waiting_validate.run_gen})
    _lease(waiting_settle, lost_settle, waiting_validate, superseded, seconds=_expired())
    Order.objects.filter(pk=waiting_validate.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=5)
    )

    assert compensation_scan() == 2
    gens = dict(Order.objects.values_list("pk", "run_gen"))
    assert gens[lost_settle.pk] == 1 and gens[superseded.pk] == 4
    assert gens[waiting_settle.pk] == 0 and gens[waiting_validate.pk] == 0
    # Its wait is Bronco's: the late order's deadline gets the fault's grace all the same.
    waiting_validate.refresh_from_db()
    left = (waiting_validate.deadline - timezone.now()).total_seconds()
    assert left > settings.ORDER_FAULT_DEADLINE_GRACE_SECONDS - 5
    assert AuditLog.objects.filter(
        order_id=waiting_validate.pk, action="order.deadline_extended"
    ).exists()

    queue.delete("default", "chain")  # the queued tasks are lost after all
    assert compensation_scan() == 2
    gens = dict(Order.objects.values_list("pk", "run_gen"))
    assert gens[waiting_settle.pk] == 1 and gens[waiting_validate.pk] == 1


def test_runs_waiting_in_the_queue_never_hide_a_lost_one_behind_the_claim_limit():
    """Under a backlog the lowest expired ids are the queued ones: a lost run behind them is
    still claimed, whatever the limit."""
    late = OrderFactory.create_batch(3, status=OrderStatus.SETTLING)
    lost = OrderFactory(status=OrderStatus.SETTLING)
    _lease(*late, lost, seconds=_expired())
    queued = {o.pk: o.run_gen for o in late}

    claimed = list(runs.runs_dead_claim(limit=1, stage=Stage.SETTLE, queued=queued))

    assert [pk for pk, _, _ in claimed] == [lost.pk]


def test_a_malformed_message_in_a_stage_queue_never_stops_the_scan(settings):
    """What the scan reads of the queue only ever spares runs: a message it cannot read
    (not JSON, no properties, arguments that are no ids) is left out, and lost runs are
    re-driven all the same."""
    from orders.tasks import compensation_scan, order_validate

    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete("default", "chain")
    runs.broker_lost_work()
    lost = OrderFactory(status=OrderStatus.PENDING)
    order_validate.apply_async(args=["not-an-id"], kwargs={"gen": 0})
    order_validate.apply_async(args=[{"order": lost.pk}], kwargs={"gen": 0})
    queue.lpush("default", b"not json", json.dumps({"body": "", "properties": None}))
    _lease(lost, seconds=_expired())

    assert compensation_scan() == 1
    lost.refresh_from_db()
    assert lost.run_gen == 1
    queue.delete("default")


def test_a_group_step_renews_only_the_leases_near_their_end(settings):
    """`runs_step_begin_many` returns every live run, superseded ones left out, and writes
    only a lease with less than half of ORDER_RUN_LEASE_SECONDS left (the step's heartbeat
    renews the rest while it works)."""
    settings.ORDER_RUN_LEASE_SECONDS = 8
    fresh, near, superseded = OrderFactory.create_batch(3, status=OrderStatus.SETTLING)
    _lease(fresh, superseded, seconds=7)
    _lease(near, seconds=2)
    before = dict(Order.objects.values_list("pk", "run_lease_until"))
    time.sleep(0.05)

    live = runs.runs_step_begin_many(
        gens={fresh.pk: fresh.run_gen, near.pk: near.run_gen, superseded.pk: superseded.run_gen - 1}
    )

    assert live == {fresh.pk: fresh.run_gen, near.pk: near.run_gen}
    after = dict(Order.objects.values_list("pk", "run_lease_until"))
    assert after[fresh.pk] == before[fresh.pk] and after[superseded.pk] == before[superseded.pk]
    assert after[near.pk] > before[near.pk] + timezone.timedelta(seconds=5)
