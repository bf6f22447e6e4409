"""The order state machine. The only module that changes `Order.status`.

Every change is a conditional UPDATE on (id, version): when another worker moved the row
first, nothing is written and `StaleOrderVersion` is raised. A terminal order never changes
status again. Each change writes its audit entry in the same transaction.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Model
from django.utils import timezone

from core.audit import AuditEntry, audit_record, audit_record_many
from core.bulk import bulk_update_values
from orders.exceptions import IllegalTransition, StaleOrderVersion
from orders.models import TERMINAL_STATUSES, Order, OrderStatus

S = OrderStatus

# from-status -> the statuses it may move to. SETTLING holds an order whose on-chain
# settlement (mint/refund/payout) is sent but not yet confirmed: an order is terminal only
# once its money is settled.
# In netting, EXECUTING means "taking part in a cycle": an order whose cycle filled it only
# in part goes back to PENDING, to wait in the book for the next cycle.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    S.PENDING: frozenset({S.EXECUTING, S.SETTLING}),
    S.EXECUTING: frozenset({S.PENDING, S.SETTLING}),
    S.SETTLING: frozenset({S.EXECUTED, S.CANCELED, S.FAILED}),
    S.EXECUTED: frozenset(),
    S.CANCELED: frozenset(),
    S.FAILED: frozenset(),
}

# Transitions only one action may take: a deposit or redeem whose chain event vanished in a
# reorg is closed with nothing settled (orders.services.order_close_vanished); one whose
# request is mined again after that is revived to settle after all
# (orders.services.order_revive_vanished).
ACTION_TRANSITIONS: Mapping[str, Mapping[str, frozenset[str]]] = {
    "order.closed_vanished": {
        S.PENDING: frozenset({S.FAILED}),
        S.EXECUTING: frozenset({S.FAILED}),
        S.SETTLING: frozenset({S.FAILED}),
    },
    "order.revived": {
        S.FAILED: frozenset({S.SETTLING}),
    },
}

# Fields a state change may carry along; status and version are the machine's own.
_MUTABLE_FIELDS = frozenset(
    f.name
    for f in Order._meta.get_fields()
    if getattr(f, "concrete", False)
    and f.name not in {"id", "status", "version", "created_at", "updated_at", "client_id"}
)


# A foreign key's audit value is the related row's pk: read from its column (`cycle_id`),
# since reading the attribute fetches the related row, one query per order of a cycle.
_FK_COLUMNS = {f.name: f.attname for f in Order._meta.concrete_fields if f.is_relation}


def _before(order: Order, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The audit entry's `before`: status, version and the current value of each field
    `changes` sets (a foreign key as its pk, without loading the related row)."""
    before = {"status": order.status, "version": order.version}
    for name in changes:
        column = _FK_COLUMNS.get(name)
        before[name] = getattr(order, column) if column else _jsonable(getattr(order, name))
    return before


def is_allowed(from_status: str, to_status: str, action: str = "") -> bool:
    if to_status in TRANSITIONS.get(from_status, frozenset()):
        return True
    return to_status in ACTION_TRANSITIONS.get(action, {}).get(from_status, frozenset())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Model):
        return value.pk
    return value


def _apply(
    *,
    order: Order,
    to_status: str | None,
    actor: str,
    action: str,
    changes: Mapping[str, Any],
) -> Order:
    unknown = set(changes) - _MUTABLE_FIELDS
    if unknown:
        raise ValueError(f"not order fields a transition may set: {sorted(unknown)}")
    # A terminal order is final, but for a move its own action lists (order.revived).
    named = ACTION_TRANSITIONS.get(action, {}).get(order.status, frozenset())
    if order.status in TERMINAL_STATUSES and (to_status or changes) and to_status not in named:
        raise IllegalTransition(order.pk, order.status, to_status or order.status)
    if to_status is not None and not is_allowed(order.status, to_status, action):
        raise IllegalTransition(order.pk, order.status, to_status)

    values: dict[str, Any] = dict(changes)
    if to_status is not None:
        values["status"] = to_status
    before = _before(order, changes)

    with transaction.atomic():
        updated = Order.objects.filter(
            pk=order.pk, version=order.version, status=order.status
        ).update(version=F("version") + 1, updated_at=timezone.now(), **values)
        if updated != 1:
            raise StaleOrderVersion(order.pk, order.version)
        after = {"status": values.get("status", order.status), "version": order.version + 1}
        after.update({k: _jsonable(v) for k, v in changes.items()})
        audit_record(actor=actor, action=action, order_id=order.pk, before=before, after=after)

    for key, value in values.items():
        setattr(order, key, value)
    order.version += 1
    return order


def order_transition(
    *, order: Order, to_status: str, actor: str, action: str, **changes: Any
) -> Order:
    """Move `order` to `to_status` (with optional field changes) if the table allows it and
    nobody moved it first. Returns the order as it now is."""
    return _apply(order=order, to_status=to_status, actor=actor, action=action, changes=changes)


def order_record(*, order: Order, actor: str, action: str, **changes: Any) -> Order:
    """Change fields of a non-terminal order without changing its status (fills seen, broker
    id saved, cancel requested), under the same version check and audit."""
    return _apply(order=order, to_status=None, actor=actor, action=action, changes=changes)


def orders_transition_many(
    *, moves: Sequence[tuple[Order, str | None, Mapping[str, Any]]], actor: str, action: str
) -> list[Order]:
    """Move many orders at once: each `(order, to_status, changes)`, every move checked
    against the transition table like `order_transition`, then one bulk UPDATE and one
    append of their audit entries (a netting cycle moves hundreds of orders; one statement
    per order would hold the audit chain's lock for seconds).

    The caller must hold the orders' row locks (`select_for_update`) for the whole
    transaction, so the versions it read are the current ones: every other writer's
    conditional UPDATE waits on the lock and then finds the version moved on. Raises
    IllegalTransition for a move the table refuses and ValueError for a field a transition
    may not set; nothing is written then. A `to_status` of None records field changes of a
    non-terminal order without moving it (`order_record`, many at once). Returns the orders
    as they now are."""
    if not moves:
        return []
    entries = []
    fields = {"status", "version", "updated_at"}
    now = timezone.now()
    for order, to_status, changes in moves:
        unknown = set(changes) - _MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"not order fields a transition may set: {sorted(unknown)}")
        if order.status in TERMINAL_STATUSES or (
            to_status is not None and not is_allowed(order.status, to_status)
        ):
            raise IllegalTransition(order.pk, order.status, to_status or order.status)
    groups = _same_moves(moves)
    for order, to_status, changes in moves:
        to_status = to_status or order.status
        before = _before(order, changes)
        for key, value in changes.items():
            setattr(order, key, value)
        order.status = to_status
        order.version += 1
        order.updated_at = now
        fields.update(changes)
        after = {"status": to_status, "version": order.version}
        after.update({k: _jsonable(v) for k, v in changes.items()})
        entries.append(
            AuditEntry(actor=actor, action=action, order_id=order.pk, before=before, after=after)
        )
    with transaction.atomic():
        if groups is None:
            bulk_update_values(Order, [o for o, _, _ in moves], sorted(fields))
        else:
            # Moves that set the same values (a settlement batch: SETTLING -> its outcome)
            # are one plain UPDATE each, conditional on the status they leave.
            for (from_status, to_status, items), pks in groups.items():
                updated = Order.objects.filter(pk__in=pks, status=from_status).update(
                    status=to_status, version=F("version") + 1, updated_at=now, **dict(items)
                )
                if updated != len(pks):
                    raise StaleOrderVersion(pks[0], 0)
        audit_record_many(entries)
    return [o for o, _, _ in moves]


def _same_moves(
    moves: Sequence[tuple[Order, str | None, Mapping[str, Any]]],
) -> dict[tuple, list[int]] | None:
    """`moves` grouped by (from status, to status, changes), when few groups cover them
    (at most 4: each is one UPDATE); None when the changes differ per order (or are not
    hashable), for bulk_update."""
    groups: dict[tuple, list[int]] = {}
    for order, to_status, changes in moves:
        try:
            key = (order.status, to_status or order.status, tuple(sorted(changes.items())))
            hash(key)
        except TypeError:
            return None
        groups.setdefault(key, []).append(order.pk)
        if len(groups) > 4:
            return None
    return groups


def orders_record_many(
    *, orders: Sequence[Order], actor: str, action: str, **changes: Any
) -> list[Order]:
    """Set the same fields on many non-terminal orders without changing their status (the
    bulk `order_record`): one bulk UPDATE and one append of their audit entries. The caller
    must hold the orders' row locks for the whole transaction. Raises IllegalTransition for
    a terminal order and ValueError for a field a transition may not set; nothing is
    written then."""
    unknown = set(changes) - _MUTABLE_FIELDS
    if unknown:
        raise ValueError(f"not order fields a transition may set: {sorted(unknown)}")
    for order in orders:
        if order.status in TERMINAL_STATUSES:
            raise IllegalTransition(order.pk, order.status, order.status)
    if not orders:
        return []
    now = timezone.now()
    entries = []
    for order in orders:
        before = _before(order, changes)
        for key, value in changes.items():
            setattr(order, key, value)
        order.version += 1
        order.updated_at = now
        after = {"status": order.status, "version": order.version}
        after.update({k: _jsonable(v) for k, v in changes.items()})
        entries.append(
            AuditEntry(actor=actor, action=action, order_id=order.pk, before=before, after=after)
        )
    with transaction.atomic():
        bulk_update_values(Order, list(orders), sorted({"version", "updated_at", *changes}))
        audit_record_many(entries)
    return list(orders)
