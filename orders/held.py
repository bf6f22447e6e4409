"""A worker vouches for the runs and cycle steps it holds, so a kill -9 frees them in seconds.

A Redis broker hands a countdown task to a worker at once: the worker holds it (Celery's
`scheduled_requests`) until it is due, unacknowledged in Redis until the visibility timeout
(an hour). The run's lease had to cover that countdown (`orders.runs`), so a worker killed
while it held a step was taken over only a countdown plus a lease later (12–17 s measured
with a 3 s countdown). Here the worker's main process, from `worker_ready` on, renews every
ORDER_RUN_HELD_LEASE_SECONDS / 4 the lease of each run and cycle whose task it holds
(`orders.runs.leases_renew`): a held step's lease becomes now + ORDER_RUN_HELD_LEASE_SECONDS
(shortened: the holder's beat vouches for it now, not the countdown), a working one's is
only extended. When the worker dies its beats stop, and the scan takes its runs over a held
lease later, whatever their countdowns. A task received wakes the beat at once (at most one
renewal per batch of messages), so only a kill within milliseconds of a task's arrival
costs the run its countdown plus a lease, as before.

A task that waits in the broker (no worker holds it: a deep queue, or RabbitMQ's delayed
delivery) keeps the lease its run set, which covers its countdown and queueing; on a Redis
broker the scan also reads the queue and leaves a run whose task is still there
(`orders.tasks._runs_queued`, `task_runs` here names a task's runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery.signals import task_received, worker_ready
from django.db import connection

from orders import runs

logger = logging.getLogger(__name__)

RUN_TASKS = frozenset({"orders.tasks.order_validate", "orders.tasks.order_settle"})
# Tasks driving many runs at once: their first argument is [[order id, gen], ...].
RUN_GROUP_TASKS = frozenset({"orders.tasks.orders_settle_group"})
CYCLE_TASKS = frozenset({"orders.tasks.cycle_place", "orders.tasks.cycle_poll"})
_READ_ATTEMPTS = 5


def held_requests() -> tuple[list[Any], set[int]]:
    """The task requests this worker process holds (scheduled for a countdown, reserved,
    working: Celery's `celery.worker.state`), and the ids of those working. Empty when the
    sets kept changing under the read."""
    from celery.worker import state

    for _ in range(_READ_ATTEMPTS):
        try:
            held = {id(r): r for r in (*state.scheduled_requests, *state.reserved_requests)}
            working = {id(r) for r in state.active_requests}
        except RuntimeError:  # a set changed size while read: read again
            continue
        return list(held.values()), working
    return [], set()


def task_runs(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    runs_into: dict[int, int],
    cycles_into: set[int] | None = None,
) -> None:
    """Add the runs (order id -> generation) and cycle ids a task named `name` drives, as
    it was sent (`args`, `kwargs`), to `runs_into` and `cycles_into`; nothing for other
    tasks."""
    if name in RUN_TASKS:
        order_id, gen = (args[0] if args else kwargs.get("order_id")), kwargs.get("gen")
        if order_id is not None and gen is not None:
            runs_into[int(order_id)] = int(gen)
    elif name in RUN_GROUP_TASKS:
        for order_id, gen in args[0] if args else kwargs.get("runs_gens") or ():
            runs_into[int(order_id)] = int(gen)
    elif name in CYCLE_TASKS and cycles_into is not None:
        cycle_id = args[0] if args else kwargs.get("cycle_id")
        if cycle_id is not None:
            cycles_into.add(int(cycle_id))


def held_leases_renew() -> int:
    """Renew the leases of what this worker holds (`orders.runs.leases_renew`). Returns how
    many runs and cycles it vouched for."""
    requests, working = held_requests()
    working_runs: dict[int, int] = {}
    waiting_runs: dict[int, int] = {}
    working_cycles: set[int] = set()
    waiting_cycles: set[int] = set()
    for request in requests:
        is_working = id(request) in working
        task_runs(
            request.name,
            request.args or (),
            request.kwargs or {},
            runs_into=working_runs if is_working else waiting_runs,
            cycles_into=working_cycles if is_working else waiting_cycles,
        )
    runs.leases_renew(
        working_runs=working_runs,
        waiting_runs=waiting_runs,
        working_cycles=working_cycles,
        waiting_cycles=waiting_cycles,
    )
    return len(working_runs) + len(waiting_runs) + len(working_cycles) + len(waiting_cycles)


_received = threading.Event()
_MIN_GAP_SECONDS = 0.2  # between two renewals, however many tasks arrive


def _beat_forever() -> None:
    while True:
        # A received task wakes the beat at once: its lease is the holder's within ms.
        _received.wait(runs.heartbeat_interval())
        _received.clear()
        try:
            held_leases_renew()
        except Exception:  # noqa: BLE001 - a blinking database: the next beat reconnects
            logger.warning("held-work heartbeat failed; retrying", exc_info=True)
        finally:
            # No connection stays open between beats: a pool child forked from this process
            # must not inherit (and at its exit end) this thread's database session.
            connection.close()
        time.sleep(_MIN_GAP_SECONDS)


@task_received.connect
def _wake_on_received(**_: Any) -> None:
    _received.set()


@worker_ready.connect
def held_heartbeat_start(**_: Any) -> None:
    """In the worker's main process, once it consumes: start the held-work heartbeat."""
    threading.Thread(target=_beat_forever, name="bronco-held-heartbeat", daemon=True).start()
