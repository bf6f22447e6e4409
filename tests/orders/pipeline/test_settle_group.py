"""Settlement by the batch (`orders_settle_group`), against a fake settlement sender: one
step sends a batch of ready orders, one `check_many` per transaction follows it, and every
order settles exactly once, also beside its own per-order `order_settle` (a re-drive)."""

import pytest

from core.models import Alert, AuditLog
from orders.models import Order, OrderStatus, OrderType
from orders.pipeline import SETTLE, Next, order_settle, orders_settle_group
from refunds.models import Refund, RefundOrigin, RefundStatus
from tests.fakes.settlement import Outcome
from tests.orders.pipeline.test_settle import _settling_deposit

pytestmark = pytest.mark.django_db(transaction=True)


def _settling(n: int, **kwargs):
    return [_settling_deposit(**kwargs) for _ in range(n)]


def _settled_entries(ids):
    return list(
        AuditLog.objects.filter(order_id__in=ids, action="order.settled").values_list(
            "order_id", flat=True
        )
    )


def test_a_batch_of_orders_is_sent_once_followed_by_one_check_and_settles_each_once(
    fake_sender, settings
):
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 100
    orders = _settling(12)
    ids = [o.pk for o in orders]
    for order in orders:
        fake_sender.script("deposit", int(order.onchain_id), Outcome.PEND)

    sent = orders_settle_group(order_ids=ids)
    assert sent.alone == {}
    assert sent.follow == [ids]  # one transaction, one task follows it
    assert len(fake_sender.batches) == 1 and len(fake_sender.batches[0]) == 12
    assert fake_sender.check_many_calls == []  # just broadcast: nothing to read yet
    hashes = set(Order.objects.filter(pk__in=ids).values_list("settlement_tx_hash", flat=True))
    assert len(hashes) == 1 and "" not in hashes

    pending = orders_settle_group(order_ids=sent.follow[0])
    assert pending.follow == [ids] and pending.alone == {}
    for order in orders:
        fake_sender.confirm("deposit", int(order.onchain_id))
    done = orders_settle_group(order_ids=pending.follow[0])
    assert done.follow == [] and done.alone == {}

    # Two follow steps: two check_many calls for the whole batch, no per-id check.
    assert [len(ids_) for _, ids_ in fake_sender.check_many_calls] == [12, 12]
    assert fake_sender.checks == []
    assert set(Order.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        OrderStatus.EXECUTED
    }
    assert sorted(_settled_entries(ids)) == ids  # exactly once each
    refunds = Refund.objects.filter(order_id__in=ids, origin=RefundOrigin.AUTOMATIC)
    assert refunds.count() == 12
    assert {(r.amount, r.status, r.tx_hash) for r in refunds} == {
        (49 * 10**6, RefundStatus.CONFIRMED, hashes.pop())
    }
    assert len(fake_sender.paid) == 12 and len(fake_sender.submissions) == 12

    # Again (a duplicate task, a re-drive): nothing is sent, moved or recorded twice.
    assert orders_settle_group(order_ids=ids) == type(done)()
    for pk in ids:
        assert order_settle(order_id=pk) is None
    assert sorted(_settled_entries(ids)) == ids
    assert refunds.count() == 12 and len(fake_sender.submissions) == 12


def test_deposits_and_redeems_go_in_the_same_batches_bounded_by_the_setting(fake_sender, settings):
    """Both kinds ride in one transaction (the vault's settleBatch): a group of 6 deposits
    and 3 redeems, at most 4 ids a batch, is 3 transactions, not the 4 that batches of one
    kind need; a follow-up checks each kind it holds once."""
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 4
    deposits = _settling(6)
    redeems = _settling(
        3,
        order_type=OrderType.SELL,
        usdt_amount=0,
        token_amount=5 * 10**18,
        payout_usdt=569 * 10**6,
        tokens_returned=0,
        refund_usdt=0,
    )
    ids = [o.pk for o in deposits + redeems]
    out = orders_settle_group(order_ids=ids)
    assert [len(batch) for batch in fake_sender.batches] == [4, 4, 1]
    assert [sorted({r.kind for r in batch}) for batch in fake_sender.batches] == [
        ["deposit"],
        ["deposit", "redeem"],
        ["redeem"],
    ]
    assert sorted(len(f) for f in out.follow) == [1, 4, 4]
    for follow in out.follow:  # each transaction followed on its own
        assert orders_settle_group(order_ids=follow).follow == []
    assert sorted((kind, len(ids_)) for kind, ids_ in fake_sender.check_many_calls) == [
        ("deposit", 2),
        ("deposit", 4),
        ("redeem", 1),
        ("redeem", 2),
    ]
    assert sorted(_settled_entries(ids)) == sorted(ids)
    assert set(Order.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        OrderStatus.EXECUTED
    }
    # Only deposits with a refund get an automatic refund record.
    assert Refund.objects.filter(origin=RefundOrigin.AUTOMATIC).count() == 6


def test_an_order_its_own_task_settled_first_is_not_moved_again(fake_sender):
    orders = _settling(5)
    ids = [o.pk for o in orders]
    for order in orders:
        fake_sender.script("deposit", int(order.onchain_id), Outcome.PEND)
    out = orders_settle_group(order_ids=ids)
    first = orders[0]
    for order in orders:
        fake_sender.confirm("deposit", int(order.onchain_id))
    # A re-driven per-order task confirms its order before the batch's follow-up runs.
    assert order_settle(order_id=first.pk) is None
    assert orders_settle_group(order_ids=out.follow[0]).follow == []
    assert sorted(_settled_entries(ids)) == ids
    assert Refund.objects.filter(order_id__in=ids, origin=RefundOrigin.AUTOMATIC).count() == 5


def test_orders_needing_their_own_step_go_back_to_it(fake_sender):
    """A held order, one with a manual refund unpaid, one the vault would refuse: the rest of
    the batch goes out; these go back to `order_settle`, which holds and alerts the refused
    one alone."""
    held, waiting, refused, *fine = _settling(6)
    from orders.services import order_hold

    order_hold(order_id=held.pk, reason="reorg: test", actor="test")
    Refund.objects.create(
        order=waiting,
        amount=10 * 10**6,
        reason="operator",
        origin=RefundOrigin.MANUAL,
        status=RefundStatus.SENT,
        requested_by="cli:alice",
    )
    fake_sender.record(
        "deposit", int(refused.onchain_id), user=refused.user_address, symbol="TSLA", amount=1
    )
    ids = [held.pk, waiting.pk, refused.pk, *(o.pk for o in fine)]
    out = orders_settle_group(order_ids=ids)
    # The first batch had the refused element: nothing of it was sent, each goes alone.
    assert fake_sender.batches == []
    assert out.alone == dict.fromkeys(
        [held.pk, waiting.pk, refused.pk, *(o.pk for o in fine)], Next(SETTLE)
    )
    for order in fine:
        assert order_settle(order_id=order.pk) is None
    assert order_settle(order_id=refused.pk).stage == SETTLE
    refused.refresh_from_db()
    assert refused.held_at is not None and "DepositMismatch" in refused.hold_reason
    assert Alert.objects.get(key=f"settlement_reverted:{refused.pk}").severity == "critical"
    assert (int(refused.onchain_id)) not in {k[1] for k in fake_sender.paid}
    assert sorted(_settled_entries(ids)) == sorted(o.pk for o in fine)


def test_a_reverted_batch_goes_back_to_each_order_held_alerted_and_retried(fake_sender):
    orders = _settling(4)
    ids = [o.pk for o in orders]
    for order in orders:
        fake_sender.script("deposit", int(order.onchain_id), Outcome.REVERT, Outcome.CONFIRM)
    out = orders_settle_group(order_ids=ids)
    reverted = orders_settle_group(order_ids=out.follow[0])
    assert reverted.follow == [] and reverted.alone == dict.fromkeys(ids, Next(SETTLE))
    assert _settled_entries(ids) == []
    for pk in ids:  # each order's own step: hold + critical alert + resubmit
        assert order_settle(order_id=pk).stage == SETTLE
        assert Alert.objects.get(key=f"settlement_reverted:{pk}").severity == "critical"
        assert Order.objects.get(pk=pk).held_at is not None
    for pk in ids:
        assert order_settle(order_id=pk) is None
    assert sorted(_settled_entries(ids)) == ids
    assert len(fake_sender.paid) == 4
    assert not Order.objects.filter(pk__in=ids, held_at__isnull=False).exists()


def test_a_refused_batch_leaves_its_orders_leases_renewed_as_a_sent_one_does(fake_sender, settings):
    """The batch's node calls ran under its rows' locks, which the lease beats skip: the
    step renews those leases before its commit whatever the vault said, so none that ran
    out meanwhile is stale when the locks go (`orders.runs.leases_hold`)."""
    from datetime import timedelta

    from django.utils import timezone

    settings.CHAIN_SETTLEMENT_BATCH_MAX = 3  # two batches: the three refused, the two sent
    refused, sent = _settling(3), _settling(2)
    Order.objects.filter(pk__in=[o.pk for o in refused + sent]).update(
        run_lease_until=timezone.now() - timedelta(seconds=30)
    )
    fake_sender.script("deposit", int(refused[0].onchain_id), Outcome.REFUSE)

    out = orders_settle_group(order_ids=[o.pk for o in refused + sent])

    assert set(out.alone) == {o.pk for o in refused}  # the refused batch, each alone
    assert out.follow == [[o.pk for o in sent]]
    held = settings.ORDER_RUN_HELD_LEASE_SECONDS
    for order in Order.objects.filter(pk__in=[o.pk for o in refused + sent]):
        assert (order.run_lease_until - timezone.now()).total_seconds() > held - 2
