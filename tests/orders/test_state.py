"""The transition table: every allowed and every refused move, and random walks."""

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from core.models import AuditLog
from orders.exceptions import IllegalTransition, StaleOrderVersion
from orders.models import TERMINAL_STATUSES, Order, OrderStatus
from orders.state import TRANSITIONS, is_allowed, order_record, order_transition
from tests.factories import CycleFactory, OrderFactory

S = OrderStatus
ALLOWED = {
    (S.PENDING, S.EXECUTING),
    (S.PENDING, S.SETTLING),
    (S.EXECUTING, S.PENDING),  # netting: a partly filled order goes back to the book
    (S.EXECUTING, S.SETTLING),
    (S.SETTLING, S.EXECUTED),
    (S.SETTLING, S.CANCELED),
    (S.SETTLING, S.FAILED),
}
ALL_PAIRS = list(itertools.product(S.values, S.values))


def test_table_is_exactly_the_documented_one():
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == {(a.value, b.value) for a, b in ALLOWED}
    assert set(TRANSITIONS) == set(S.values)


@pytest.mark.django_db
@pytest.mark.parametrize(("from_status", "to_status"), ALL_PAIRS)
def test_every_pair(from_status, to_status):
    order = OrderFactory(status=from_status)
    audits_before = AuditLog.objects.count()
    if (from_status, to_status) in ALLOWED:
        order_transition(order=order, to_status=to_status, actor="test", action="t")
        order.refresh_from_db()
        assert order.status == to_status
        assert order.version == 1
        assert AuditLog.objects.count() == audits_before + 1
        entry = AuditLog.objects.latest("seq")
        assert entry.before["status"] == from_status
        assert entry.after["status"] == to_status
        assert entry.actor == "test"
    else:
        with pytest.raises(IllegalTransition):
            order_transition(order=order, to_status=to_status, actor="test", action="t")
        order.refresh_from_db()
        assert order.status == from_status
        assert order.version == 0
        assert AuditLog.objects.count() == audits_before


@pytest.mark.django_db
def test_stale_version_writes_nothing():
    order = OrderFactory()
    stale = Order.objects.get(pk=order.pk)
    order_transition(order=order, to_status=S.EXECUTING, actor="a", action="placed")
    with pytest.raises(StaleOrderVersion):
        order_record(order=stale, actor="b", action="late", last_error="x")
    stale.refresh_from_db()
    assert stale.last_error == ""
    assert AuditLog.objects.filter(action="late").count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_order_refuses_field_changes_too(terminal):
    order = OrderFactory(status=terminal)
    with pytest.raises(IllegalTransition):
        order_record(order=order, actor="t", action="poke", refund_usdt=1)


@pytest.mark.django_db
def test_unknown_field_is_refused():
    order = OrderFactory()
    with pytest.raises(ValueError, match="not order fields"):
        order_record(order=order, actor="t", action="poke", status="EXECUTED")


def test_is_allowed_never_leaves_terminal():
    for terminal in TERMINAL_STATUSES:
        assert not any(is_allowed(terminal, s) for s in S.values)


class OrderWalk(RuleBasedStateMachine):
    """Random sequences of requested transitions: the order only ever moves along the table,
    its version counts the moves, and a terminal order stays put."""

    @initialize()
    def make_order(self):
        self.order = OrderFactory()
        self.moves = 0
        self.reached_terminal = None

    @rule(wanted=st.sampled_from(S.values))
    def request(self, wanted):
        target = wanted
        current = Order.objects.get(pk=self.order.pk)
        if is_allowed(current.status, target):
            order_transition(order=current, to_status=target, actor="walk", action="move")
            self.moves += 1
        else:
            with pytest.raises(IllegalTransition):
                order_transition(order=current, to_status=target, actor="walk", action="move")

    @invariant()
    def consistent(self):
        current = Order.objects.get(pk=self.order.pk)
        assert current.version == self.moves
        assert current.status in S.values
        if self.reached_terminal is not None:
            assert current.status == self.reached_terminal
        if current.status in TERMINAL_STATUSES:
            self.reached_terminal = current.status
        assert AuditLog.objects.filter(order_id=current.pk).count() == self.moves


@pytest.mark.django_db
def test_random_walks():
    # Hypothesis' state machine runner inside a db-enabled test (one transaction per run).
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        OrderWalk, settings=settings(max_examples=40, stateful_step_count=12, deadline=None)
    )


@pytest.mark.django_db
def test_many_moves_at_once_are_checked_written_and_audited_together():
    from django.db import transaction

    from core.models import AuditLog
    from orders.state import orders_transition_many

    a, b = OrderFactory(), OrderFactory()
    done = OrderFactory(status=S.EXECUTED)
    with transaction.atomic():
        locked = list(Order.objects.select_for_update().filter(pk__in=[a.pk, b.pk, done.pk]))
        by_pk = {o.pk: o for o in locked}
        with pytest.raises(IllegalTransition):
            orders_transition_many(
                moves=[(by_pk[a.pk], S.EXECUTING, {}), (by_pk[done.pk], S.SETTLING, {})],
                actor="t",
                action="order.bulk",
            )
        assert Order.objects.get(pk=a.pk).status == S.PENDING  # nothing written
        orders_transition_many(
            moves=[(by_pk[a.pk], S.EXECUTING, {"last_error": "x"}), (by_pk[b.pk], S.SETTLING, {})],
            actor="t",
            action="order.bulk",
        )
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, a.version, a.last_error) == (S.EXECUTING, 1, "x")
    assert (b.status, b.version) == (S.SETTLING, 1)
    entries = {e.order_id: e for e in AuditLog.objects.filter(action="order.bulk")}
    assert entries[a.pk].before == {"status": "PENDING", "version": 0, "last_error": ""}
    assert entries[a.pk].after == {"status": "EXECUTING", "version": 1, "last_error": "x"}
    assert entries[b.pk].after == {"status": "SETTLING", "version": 1}


@pytest.mark.django_db
def test_many_records_at_once_change_fields_without_moving_and_never_a_terminal_order():
    from django.db import transaction

    from orders.state import orders_transition_many

    a, b = OrderFactory(status=S.SETTLING), OrderFactory(status=S.SETTLING)
    done = OrderFactory(status=S.EXECUTED)
    with transaction.atomic():
        locked = {
            o.pk: o for o in Order.objects.select_for_update().filter(pk__in=[a.pk, b.pk, done.pk])
        }
        with pytest.raises(IllegalTransition):
            orders_transition_many(
                moves=[(locked[done.pk], None, {"settlement_tx_hash": "0x1"})],
                actor="t",
                action="order.settlement_sent",
            )
        orders_transition_many(
            moves=[(locked[pk], None, {"settlement_tx_hash": "0xab"}) for pk in (a.pk, b.pk)],
            actor="t",
            action="order.settlement_sent",
        )
    for order in (a, b):
        order.refresh_from_db()
        assert (order.status, order.version, order.settlement_tx_hash) == (S.SETTLING, 1, "0xab")
    entries = AuditLog.objects.filter(action="order.settlement_sent").order_by("order_id")
    assert [e.after for e in entries] == [
        {"status": "SETTLING", "version": 1, "settlement_tx_hash": "0xab"}
    ] * 2
    done.refresh_from_db()
    assert done.settlement_tx_hash == ""


@pytest.mark.django_db
def test_many_moves_write_each_orders_own_values_and_audit_a_foreign_key_by_its_pk(
    django_assert_max_num_queries, monkeypatch
):
    """A cycle's allocation moves hundreds of orders with values of their own: written in
    one UPDATE per page (`core.bulk.bulk_update_values`), each order its own Decimal,
    nullable and foreign-key values; the audit's `before` names the cycle by its pk,
    read without loading the cycle (that was one query per order)."""
    from decimal import Decimal

    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from core import bulk
    from orders.state import orders_transition_many

    monkeypatch.setattr(bulk, "UPDATE_PAGE_ROWS", 7)  # 40 orders: six pages

    cycle = CycleFactory()
    made = [OrderFactory(status=S.EXECUTING) for _ in range(40)]
    Order.objects.filter(pk__in=[o.pk for o in made]).update(cycle=cycle)
    with transaction.atomic():
        locked = list(
            Order.objects.select_for_update().filter(pk__in=[o.pk for o in made]).order_by("pk")
        )
        moves = [
            (
                order,
                S.SETTLING if i % 2 else S.PENDING,
                {
                    "cycle": None,
                    "cost_usdt": 1000 + i,
                    "filled_qty": Decimal("0.1234565") + i,  # numeric(24, 6): rounded there
                    "avg_fill_price": None if i % 3 == 0 else Decimal("180.25"),
                    "last_error": f"note {i}\ttab",
                },
            )
            for i, order in enumerate(locked)
        ]
        with django_assert_max_num_queries(14), CaptureQueriesContext(connection) as seen:
            orders_transition_many(moves=moves, actor="t", action="order.finalized")
    updates = [q["sql"] for q in seen.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 6  # one per page of 7, not one per order
    for i, order in enumerate(Order.objects.filter(pk__in=[o.pk for o in made]).order_by("pk")):
        assert order.status == (S.SETTLING if i % 2 else S.PENDING)
        assert (order.version, order.cycle_id, int(order.cost_usdt)) == (1, None, 1000 + i)
        assert order.filled_qty == Decimal("0.123457") + i  # PostgreSQL's rounding, as a save
        assert order.avg_fill_price == (None if i % 3 == 0 else Decimal("180.25"))
        assert order.last_error == f"note {i}\ttab"
    entry = AuditLog.objects.filter(action="order.finalized", order_id=made[0].pk).get()
    assert entry.before["cycle"] == cycle.pk and entry.after["cycle"] is None


@pytest.mark.django_db
def test_bulk_update_values_refuses_what_is_not_a_column_it_writes():
    from core.bulk import bulk_update_values

    order = OrderFactory()
    with pytest.raises(ValueError, match="id"):
        bulk_update_values(Order, [order], ["id"])
    with pytest.raises(ValueError, match="allocations"):
        bulk_update_values(Order, [order], ["allocations"])
    assert bulk_update_values(Order, [], ["status"]) == 0
    order.last_error = "x"
    assert bulk_update_values(Order, [order], ["last_error"]) == 1
    assert Order.objects.get(pk=order.pk).last_error == "x"
    # A related object that was never saved is refused, as a save refuses it (not NULL).
    from decimal import Decimal

    from orders.models import Cycle

    order.cycle = Cycle(symbol="AAPL", stock_code="US.AAPL", quote_price=Decimal(1))
    with pytest.raises(ValueError, match="unsaved"):
        bulk_update_values(Order, [order], ["cycle"])


@pytest.mark.django_db(transaction=True)
def test_bulk_update_values_pages_commit_together_or_not_at_all(monkeypatch):
    """Outside a transaction too: a page that fails rolls back the pages before it."""
    from django.db import IntegrityError

    from core import bulk

    monkeypatch.setattr(bulk, "UPDATE_PAGE_ROWS", 2)
    orders = [OrderFactory() for _ in range(4)]
    for order in orders:
        order.last_error = "changed"
    orders[3].status = "NOT_A_STATUS"  # the CHECK constraint refuses the second page
    with pytest.raises(IntegrityError):
        bulk.bulk_update_values(Order, orders, ["last_error", "status"])
    assert set(Order.objects.values_list("last_error", flat=True)) == {""}
