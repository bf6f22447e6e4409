"""The pieces that make a large backfill fast keep the slow path's meaning: the word decoder
is as strict as eth_abi, COPY writes what bulk_create would (defaults, JSON, escapes, the
audit chain), its errors are Django's, and a large batch's first tasks go out as fan-out
tasks of at most RUN_ENQUEUE_FANOUT ids, each of which publishes its orders' tasks."""

import base64
import json

import pytest
import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from chain.client import _static_word
from chain.models import ChainEvent
from core.audit import AuditEntry, audit_append_many, audit_record, audit_verify
from core.bulk import bulk_copy_insert
from core.models import AuditLog
from orders.models import Order, OrderStatus, OrderType
from orders.runs import RUN_ENQUEUE_FANOUT, run_enqueue_many
from orders.services import ChainOrderRequest, orders_create_from_chain_ids
from orders.stages import Next, Stage
from orders.tasks import runs_enqueue

WORDS = [
    bytes(32),
    (1).to_bytes(32, "big"),
    (2).to_bytes(32, "big"),
    (255).to_bytes(32, "big"),
    (256).to_bytes(32, "big"),
    (2**160 - 1).to_bytes(32, "big"),
    (2**160).to_bytes(32, "big"),
    b"\xff" * 32,
    bytes(11) + b"\x01" + b"\xab" * 20,
]


@pytest.mark.parametrize("abi_type", ["uint256", "uint8", "uint64", "address", "bool", "bytes32"])
def test_static_words_decode_exactly_as_eth_abi_strict(abi_type):
    for word in WORDS:
        try:
            (expected,) = abi_decode([abi_type], word, strict=True)
        except DecodingError:
            with pytest.raises(ValueError):
                _static_word(abi_type, word)
            continue
        got = _static_word(abi_type, word)
        if abi_type == "address":
            assert got.lower() == expected.lower()
        else:
            assert got == expected


def _request(i: int, **overrides) -> ChainOrderRequest:
    values = dict(
        chain_id=31337,
        order_type=OrderType.BUY,
        onchain_id=2**255 + i,
        tx_hash="0x" + f"{i:064x}",
        log_index=i,
        user_address="0x" + "ab" * 20,
        symbol="AAPL",
        usdt_amount=10**6 + i,
    )
    values.update(overrides)
    return ChainOrderRequest(**values)


@pytest.mark.django_db(transaction=True)
def test_orders_written_by_copy_read_back_like_any_order_with_their_audit_chain():
    audit_record(actor="test", action="before")  # the chain has a tail to link to
    with transaction.atomic():
        results = orders_create_from_chain_ids(
            requests=[_request(i) for i in range(150)], actor="listen_chain"
        )
    assert [created for _, created in results] == [True] * 150
    orders = Order.objects.in_bulk([pk for pk, _ in results])
    first = orders[results[0][0]]
    assert (first.status, first.version, first.run_gen) == (OrderStatus.PENDING, 0, 0)
    assert first.onchain_id == 2**255 and first.usdt_amount == 10**6
    assert first.deadline is not None and first.run_lease_until is not None
    assert first.created_at is not None and first.updated_at is not None
    assert len({o.client_id for o in orders.values()}) == 150  # a default called per row
    assert AuditLog.objects.filter(action="order.created").count() == 150
    # Valid orders are booked as they are created, audited in the same append.
    assert AuditLog.objects.filter(action="order.booked").count() == 150
    assert all(o.booked_at is not None for o in orders.values())
    checked, broken = audit_verify()
    assert broken is None and checked == 1 + 150 + 150

    again = orders_create_from_chain_ids(requests=[_request(3)], actor="listen_chain")
    assert again == [(results[3][0], False)]


@pytest.mark.django_db(transaction=True)
def test_copy_keeps_awkward_json_and_raises_djangos_integrity_error():
    args = {"note": 'tab\there\nnew "line" \\ back', "big": str(2**256 - 1), "u": "é✓"}
    event = dict(
        chain_id=1,
        tx_hash="0x" + "11" * 32,
        log_index=0,
        block_number=5,
        block_hash="0x" + "22" * 32,
        address="0x" + "33" * 20,
        name="Deposit",
        args=args,
        vault_id=2**256 - 1,
        order_id=None,
    )
    assert bulk_copy_insert(ChainEvent, [event]) == 1
    row = ChainEvent.objects.get()
    assert row.args == args and row.vault_id == 2**256 - 1 and row.created_at is not None
    assert row.removed_at is None and row.order_id is None
    with pytest.raises(ValueError, match="different fields"):
        bulk_copy_insert(ChainEvent, [event, {**event, "extra": 1}])
    with pytest.raises(IntegrityError), transaction.atomic():
        bulk_copy_insert(ChainEvent, [event])  # the same live log again: the unique key refuses it
    assert ChainEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_audit_append_many_links_like_record_many():
    audit_record(actor="a", action="one")
    audit_append_many([AuditEntry(actor="b", action=f"x{i}", after={"i": i}) for i in range(5)])
    audit_record(actor="c", action="last")
    assert list(AuditLog.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 8))
    assert audit_verify() == (7, None)
    with pytest.raises(ValueError):
        audit_append_many([AuditEntry(actor="", action="nobody")])


def _queued_tasks(client: redis.Redis) -> list[tuple[str, list]]:
    found = []
    for raw in reversed(client.lrange("default", 0, -1)):  # LPUSHed, consumed from the right
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], body[0]))
    return found


@pytest.mark.django_db
def test_a_large_batch_goes_out_as_fan_out_tasks_that_publish_each_order():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("default")
    ids = list(range(1, 2 * RUN_ENQUEUE_FANOUT + 2))
    run_enqueue_many(gens=dict.fromkeys(ids, 0), nxt=Next(Stage.VALIDATE))
    fanned = _queued_tasks(client)
    assert [name for name, _ in fanned] == ["orders.tasks.runs_enqueue"] * 3
    assert [len(args[0]) for _, args in fanned] == [RUN_ENQUEUE_FANOUT, RUN_ENQUEUE_FANOUT, 1]
    assert sum((args[0] for _, args in fanned), []) == ids

    client.delete("default")
    _, args = fanned[2]
    runs_enqueue(*args)  # what a worker does with the last one
    assert _queued_tasks(client) == [("orders.tasks.order_validate", [ids[-1]])]
    client.delete("default")


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_bookable_and_refused_orders_is_one_copy(monkeypatch):
    """Rows that book (booked_at set) and rows validation refuses (an unlisted symbol, left
    for the validate stage) go into one COPY: every row names the same fields. They named
    different ones, and every such batch fell back to one log at a time (seen in every
    `run_stack` demo)."""
    from core import bulk

    copies: list[int] = []
    real = bulk.bulk_copy_insert

    def counted(model, rows, **kwargs):  # type: ignore[no-untyped-def]
        copies.append(len(rows))
        return real(model, rows, **kwargs)

    monkeypatch.setattr("orders.services.bulk_copy_insert", counted)
    requests = [_request(i) for i in range(3)] + [_request(3, symbol="NOPE")]
    with transaction.atomic():
        results = orders_create_from_chain_ids(requests=requests, actor="listen_chain")
    assert [created for _, created in results] == [True] * 4
    assert copies == [4]
    orders = Order.objects.in_bulk([pk for pk, _ in results])
    booked = [orders[pk].booked_at is not None for pk, _ in results]
    assert booked == [True, True, True, False]
