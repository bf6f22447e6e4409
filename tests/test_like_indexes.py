"""The tables a backfill COPYs into carry no `varchar_pattern_ops` (`*_like`) index (Django
adds one per CharField with `db_index=True` or `unique=True`; nothing queries with LIKE), and
keep their indexes and uniqueness (declared in Meta)."""

import pytest
from django.db import IntegrityError, connection, transaction

from core.audit import audit_record
from core.models import AuditLog
from orders.models import Order
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

TABLES = ("orders_order", "orders_auditlog", "chain_chainevent")


def indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s)", [list(TABLES)]
        )
        return dict(cursor.fetchall())


def test_no_pattern_ops_twins_and_the_plain_indexes_stay():
    found = indexes()
    assert not [d for d in found.values() if "pattern_ops" in d]
    for name in (
        "order_chain_tx_hash",
        "order_user_address",
        "order_stock_code",
        "order_futu_order_id",
        "order_settlement_tx_hash",
        "order_unique_client_id",
        "auditlog_action",
        "auditlog_unique_entry_hash",
        "chainevent_name",
    ):
        assert name in found, name
    assert "UNIQUE" in found["order_unique_client_id"]
    assert "UNIQUE" in found["auditlog_unique_entry_hash"]


def test_client_id_and_entry_hash_stay_unique():
    order = OrderFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=OrderFactory().pk).update(client_id=order.client_id)
    audit_record(actor="test", action="test.one", order_id=order.pk)
    entry = AuditLog.objects.order_by("-seq").first()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO orders_auditlog (seq, created_at, actor, action, before, after, "
            "prev_hash, entry_hash) VALUES (%s, now(), 'x', 'x', '{}', '{}', %s, %s)",
            [entry.seq + 1, entry.entry_hash, entry.entry_hash],
        )
