"""The settle stage's Celery doors by the batch: a cycle finishing many orders publishes one
`orders_settle_group` task per CHAIN_SETTLEMENT_BATCH_MAX orders (none per order), a group
task skips runs taken over meanwhile, follows its transaction with one task, and hands an
order that needs its own step back to `order_settle`; the scan re-drives by the batch too."""

import base64
import json

import pytest
import redis
from django.db import transaction

from orders import runs
from orders.models import Order, OrderStatus
from orders.stages import Stage
from orders.tasks import compensation_scan, orders_settle_group
from tests.fakes.settlement import Outcome
from tests.orders.pipeline.test_settle import _settling_deposit

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def chain_queue(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("chain")
    runs.broker_lost_work()  # the epoch is known: no wipe seen by the scan

    def queued():
        bodies = [json.loads(raw) for raw in client.lrange("chain", 0, -1)]
        client.delete("chain")
        # Oldest first (kombu pushes on the left).
        return [(b["headers"]["task"], json.loads(_body(b))[0]) for b in reversed(bodies)]

    return queued


def _body(message):
    return base64.b64decode(message["body"])


def test_a_cycle_finishing_many_orders_publishes_one_task_per_batch(chain_queue, settings):
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 4
    ids = [_settling_deposit().pk for _ in range(10)]
    with transaction.atomic():
        runs.runs_take_over_many(order_ids=ids, stage=Stage.SETTLE)
    queued = chain_queue()
    assert [task for task, _ in queued] == ["orders.tasks.orders_settle_group"] * 3
    gens = dict(Order.objects.filter(pk__in=ids).values_list("pk", "run_gen"))
    assert [args[0] for _, args in queued] == [
        [[pk, gens[pk]] for pk in ids[i : i + 4]] for i in (0, 4, 8)
    ]


def test_a_group_task_follows_its_transaction_with_one_task_and_skips_superseded_runs(
    chain_queue, fake_sender
):
    orders = [_settling_deposit() for _ in range(5)]
    for order in orders:
        fake_sender.script("deposit", int(order.onchain_id), Outcome.PEND)
    gens = {o.pk: runs.run_take_over(order_id=o.pk, stage=Stage.SETTLE) for o in orders}
    chain_queue()  # the per-order tasks run_take_over published: not what is tested
    taken = orders[-1]
    runs.run_take_over(order_id=taken.pk)  # another run took this one over meanwhile
    chain_queue()

    orders_settle_group([[pk, gen] for pk, gen in gens.items()])

    sent = [o.pk for o in orders[:-1]]
    assert len(fake_sender.batches) == 1
    assert [r.order_id for r in fake_sender.batches[0]] == sent  # not the taken-over one
    queued = chain_queue()
    assert queued == [("orders.tasks.orders_settle_group", [[[pk, gens[pk]] for pk in sent]])]

    for order in orders[:-1]:
        fake_sender.confirm("deposit", int(order.onchain_id))
    orders_settle_group(queued[0][1][0])
    assert chain_queue() == []  # confirmed: nothing follows
    assert set(Order.objects.filter(pk__in=sent).values_list("status", flat=True)) == {
        OrderStatus.EXECUTED
    }
    assert len(fake_sender.check_many_calls) == 1 and fake_sender.checks == []


def test_an_order_needing_its_own_step_goes_back_to_order_settle(chain_queue, fake_sender):
    from orders.services import order_hold

    order = _settling_deposit()
    gen = runs.run_take_over(order_id=order.pk, stage=Stage.SETTLE)
    order_hold(order_id=order.pk, reason="reorg: test", actor="test")
    chain_queue()
    orders_settle_group([[order.pk, gen]])
    assert chain_queue() == [("orders.tasks.order_settle", [order.pk])]
    assert fake_sender.batches == []


def test_the_scan_re_drives_settling_orders_by_the_batch(chain_queue, settings):
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 100
    orders = [_settling_deposit() for _ in range(3)]
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(run_lease_until=None)
    chain_queue()
    assert compensation_scan() == 3
    queued = chain_queue()
    assert [task for task, _ in queued] == ["orders.tasks.orders_settle_group"]
    assert sorted(pk for pk, _ in queued[0][1][0]) == sorted(o.pk for o in orders)
