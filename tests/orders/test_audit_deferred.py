"""`audit_deferred`: a transaction's audit entries appended at the end of the block, so the
audit chain's lock (held from the first append to the commit, by every writer) is not held
while the transaction does its other work; entries of a rolled-back savepoint dropped."""

import pytest
from django.db import connection, transaction

from core.audit import (
    _AUDIT_LOCK_KEY,
    AuditEntry,
    audit_deferred,
    audit_record,
    audit_record_many,
    audit_verify,
)
from core.models import AuditLog

pytestmark = pytest.mark.django_db


def _actions() -> list[str]:
    return list(AuditLog.objects.order_by("seq").values_list("action", flat=True))


def _holds_chain_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND objid = %s",
            [_AUDIT_LOCK_KEY],
        )
        return cursor.fetchone()[0] > 0


def test_entries_are_appended_at_the_end_of_the_block_in_order_and_the_lock_taken_then():
    with transaction.atomic():
        with audit_deferred():
            audit_record(actor="t", action="a")
            audit_record_many([AuditEntry("t", "b"), AuditEntry("t", "c", after={"x": 1})])
            assert _actions() == [] and not _holds_chain_lock()
        assert _actions() == ["a", "b", "c"] and _holds_chain_lock()
    assert audit_verify() == (3, None)


def test_an_entry_of_a_rolled_back_savepoint_is_dropped():
    with transaction.atomic(), audit_deferred():
        audit_record(actor="t", action="kept before")
        try:
            with transaction.atomic():
                audit_record(actor="t", action="rolled back")
                with transaction.atomic():
                    audit_record(actor="t", action="inner, rolled back with it")
                raise RuntimeError("undo")
        except RuntimeError:
            pass
        with transaction.atomic():
            audit_record(actor="t", action="kept in a released savepoint")
        audit_record(actor="t", action="kept after")
    assert _actions() == ["kept before", "kept in a released savepoint", "kept after"]
    assert audit_verify() == (3, None)


def test_an_exception_out_of_the_block_appends_nothing():
    with pytest.raises(RuntimeError), transaction.atomic(), audit_deferred():
        audit_record(actor="t", action="a")
        raise RuntimeError("undo")
    assert _actions() == []


def test_nested_blocks_append_once_when_the_outermost_ends():
    with transaction.atomic(), audit_deferred():
        audit_record(actor="t", action="outer")
        with audit_deferred():
            audit_record(actor="t", action="inner")
        assert _actions() == []
    assert _actions() == ["outer", "inner"]


def test_an_entry_without_an_actor_is_refused_when_recorded():
    with transaction.atomic(), audit_deferred():
        with pytest.raises(ValueError, match="actor"):
            audit_record_many([AuditEntry("", "a")])


@pytest.mark.django_db(transaction=True)
def test_it_must_run_inside_a_transaction():
    with pytest.raises(RuntimeError, match="inside a transaction"), audit_deferred():
        pass
