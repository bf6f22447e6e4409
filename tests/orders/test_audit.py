"""The audit trail is append-only and tamper-evident."""

import pytest
from django.db import DatabaseError, connection, transaction

from core.audit import audit_record, audit_verify
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
