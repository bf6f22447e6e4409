"""The audit trail is append-only and tamper-evident."""

from unittest.mock import patch

import pytest
from django.db import DatabaseError, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.audit import AuditEntry, audit_record, audit_record_many, audit_verify
from core.exceptions import AuditImmutable
from core.models import AuditLog
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db


def _three_entries():
    order = OrderFactory()
    for i in range(3):
        audit_record(actor="test", action=f"step{i}", order_id=order.pk, after={"n": i})
    return order


def test_chain_verifies_when_untouched():
    _three_entries()
    checked, broken = audit_verify()
    assert checked == 3
    assert broken is None


def test_row_altered_behind_the_model_is_detected():
    _three_entries()
    victim = AuditLog.objects.get(action="step1")
    with connection.cursor() as cursor:
        # A superuser can switch triggers off for the session: exactly what an attacker with
        # database access would do. The hash chain still catches it.
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(
            "UPDATE orders_auditlog SET after = %s WHERE id = %s", ['{"n": 99}', victim.pk]
        )
        cursor.execute("SET session_replication_role = origin")
    checked, broken = audit_verify()
    assert broken is not None
    assert broken.seq == victim.seq
    assert checked == victim.seq - 1


def test_deleted_row_is_detected():
    _three_entries()
    victim = AuditLog.objects.get(action="step1")
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("DELETE FROM orders_auditlog WHERE id = %s", [victim.pk])
        cursor.execute("SET session_replication_role = origin")
    _, broken = audit_verify()
    assert broken is not None
    assert broken.seq == victim.seq


@pytest.mark.parametrize(
    "sql",
    ["UPDATE orders_auditlog SET actor = 'mallory'", "DELETE FROM orders_auditlog"],
)
def test_database_refuses_update_and_delete(sql):
    _three_entries()
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditLog.objects.count() == 3
    assert not AuditLog.objects.filter(actor="mallory").exists()


def test_model_refuses_save_over_and_delete():
    _three_entries()
    entry = AuditLog.objects.first()
    entry.actor = "mallory"
    with pytest.raises(AuditImmutable):
        entry.save()
    with pytest.raises(AuditImmutable):
        entry.delete()


def test_actor_is_required():
    with pytest.raises(ValueError, match="actor"):
        audit_record(actor="", action="x")


# PostgreSQL stores no NUL character and UTF-8 no lone surrogate (refused before and after).
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | _text
_details = st.dictionaries(
    _text,
    _json_scalars
    | st.lists(_json_scalars, max_size=3)
    | st.dictionaries(_text, _json_scalars, max_size=3),
    max_size=4,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.parametrize("copy_from", [1, 10**9], ids=["COPY", "INSERT"])
@given(
    entries=st.lists(
        st.builds(
            AuditEntry,
            actor=_text.filter(bool),
            action=_text,
            order_id=st.none() | st.integers(min_value=1, max_value=2**40),
            before=st.none() | _details,
            after=st.none() | _details,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_link_built_under_the_lock_is_the_documented_entry_hash(copy_from, entries):
    """`_chained_rows` builds each entry's hashed JSON before the chain's lock and adds
    prev_hash and seq under it: the digest must be exactly `entry_hash` of the stored row,
    which `audit_verify` recomputes for every row, for any text, nesting and numbers."""
    from core import audit

    with transaction.atomic(), patch.object(audit, "_COPY_FROM", copy_from):
        audit_record_many(entries)
        first = entries[0]  # and the one-entry path
        audit_record(actor=first.actor, action=first.action, after=first.after)
        entries = [*entries, AuditEntry(actor=first.actor, action=first.action)]
        rows = list(AuditLog.objects.order_by("-seq")[: len(entries)])[::-1]
        for row, entry in zip(rows, entries, strict=True):
            assert (row.actor, row.action, row.order_id) == (
                entry.actor,
                entry.action,
                entry.order_id,
            )
        assert audit_verify()[1] is None
        transaction.set_rollback(True)


@pytest.mark.parametrize(
    "value",
    [1e16, -0.0, 1.5e-7, 0.1, 2.5, float(2**60)],
    ids=["1e16", "negative-zero", "1.5e-7", "0.1", "2.5", "2**60"],
)
def test_a_float_in_an_entry_survives_the_database_round_trip_and_the_chain_verifies(value):
    """PostgreSQL's jsonb keeps a number as a numeric: 1e16 comes back as 10000000000000000
    and -0.0 as 0, whose JSON differs from what was hashed, so the chain reported an
    untouched entry as altered. A float is kept as its text (repr), which round-trips."""
    order = OrderFactory()
    audit_record(actor="test", action="timed", order_id=order.pk, after={"seconds": value})
    audit_record_many(
        [AuditEntry(actor="test", action="timed", order_id=order.pk, before={"s": [value]})]
    )

    assert audit_verify() == (2, None)
    assert AuditLog.objects.get(action="timed", before={}).after == {"seconds": repr(value)}
