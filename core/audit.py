"""Writing and verifying the audit hash chain.

Rows are appended under a transaction-scoped PostgreSQL advisory lock, so concurrent writers
take sequence numbers one after another and each row links to the true previous row.
"""

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from core.bulk import bulk_copy_insert
from core.models import AuditLog

GENESIS_HASH = "0" * 64
_AUDIT_LOCK_KEY = 0x42524F4E  # "BRON": the advisory lock that serialises appends


_JSON_PLAIN = (str, int, bool, type(None))


def _canonical(value: Any) -> Any:
    """JSON-normal form: what the row will hold after a round trip through the database.
    A flat dict of str keys and str/int/bool/None values already is (the common entry).
    A float is kept as its text (`repr`): jsonb holds a number as a numeric and gives
    1e16 back as 10000000000000000 and -0.0 as 0, whose JSON is not what was hashed, and
    the chain would call the untouched entry altered."""
    if type(value) is dict and all(
        type(k) is str and type(v) in _JSON_PLAIN for k, v in value.items()
    ):
        return dict(value)
    return json.loads(json.dumps(_floats_as_text(value), cls=DjangoJSONEncoder))


def _floats_as_text(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: _floats_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_floats_as_text(v) for v in value]
    return value


def entry_hash(
    *,
    seq: int,
    created_at: str,
    actor: str,
    action: str,
    order_id: int | None,
    before: Any,
    after: Any,
    prev_hash: str,
) -> str:
    payload = json.dumps(
        {
            "seq": seq,
            "created_at": created_at,
            "actor": actor,
            "action": action,
            "order_id": order_id,
            "before": before,
            "after": after,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        cls=DjangoJSONEncoder,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class AuditEntry(NamedTuple):
    """One entry to append: who did what to which order, with the state before and after.
    A NamedTuple (immutable, keyword-built): a backfill builds two per order, and a frozen
    dataclass's field-by-field `__init__` was a twentieth of its time."""

    actor: str
    action: str
    order_id: int | None = None
    before: dict | None = None
    after: dict | None = None


def audit_record(
    *,
    actor: str,
    action: str,
    order_id: int | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditLog | None:
    """Append one entry. Runs inside the caller's transaction (atomic if there is none), so
    the entry commits or rolls back together with the change it describes. Within
    `audit_deferred` it is kept and appended when that block ends (None is returned)."""
    entry = AuditEntry(actor=actor, action=action, order_id=order_id, before=before, after=after)
    if _defer([entry]):
        return None
    with transaction.atomic():
        (row,) = _chained_rows([entry])
        return AuditLog.objects.create(**row)


# From this many entries on, `audit_record_many` writes with COPY (no AuditLog objects).
_COPY_FROM = 32


def audit_record_many(entries: Sequence[AuditEntry]) -> int:
    """Append entries in the given order with one lock, one read of the chain's tail and one
    INSERT (one COPY from _COPY_FROM entries: a cycle's hundreds of orders). Same
    transaction rules as `audit_record`, and kept the same way within `audit_deferred`.
    Returns how many were appended (or kept)."""
    if _defer(entries):
        return len(entries)
    with transaction.atomic():
        rows = _chained_rows(entries)
        if len(rows) >= _COPY_FROM:
            return bulk_copy_insert(AuditLog, rows)
        return len(AuditLog.objects.bulk_create([AuditLog(**row) for row in rows]))


# The entries of the innermost `audit_deferred` block, each with the on-commit marker that
# tells whether the savepoint it was recorded in was rolled back since.
_deferred: ContextVar[list[tuple[AuditEntry, Callable[[], None]]] | None] = ContextVar(
    "audit_deferred", default=None
)


@contextmanager
def audit_deferred() -> Iterator[None]:
    """Within it (inside a transaction), `audit_record` and `audit_record_many` keep their
    entries, and the block's end appends them in one go, in the order recorded, still inside
    the caller's transaction. The chain's lock is held from the first append to the commit
    and serialises every writer of every process, so a transaction that does much after its
    first entry (a netting cycle allocating hundreds of orders, a settlement batch) should
    append at its end: it then holds the lock for the append and the commit only.

    The entries commit or roll back with the transaction as before. An entry recorded in a
    savepoint that was rolled back (a caught exception inside the block) is dropped, as
    Django drops that savepoint's on-commit callbacks: each entry carries a no-op on-commit
    marker, and only entries whose marker is still pending are appended. An exception out
    of the block appends nothing. Nested blocks append at the outermost one's end. Each
    entry's time is when the block appends it. Raises RuntimeError outside a transaction."""
    if _deferred.get() is not None:
        yield
        return
    conn = transaction.get_connection()
    if not conn.in_atomic_block:
        raise RuntimeError("audit_deferred must run inside a transaction")
    token = _deferred.set([])
    try:
        yield
        kept = _deferred.get() or []
    finally:
        _deferred.reset(token)
    # Django keeps (savepoint ids, callback, robust) per on_commit, and drops a rolled-back
    # savepoint's entries (tests/orders/test_audit_deferred.py checks it still does).
    pending = {id(item[1]) for item in conn.run_on_commit}
    entries = [entry for entry, marker in kept if id(marker) in pending]
    if entries:
        audit_record_many(entries)


def _defer(entries: Sequence[AuditEntry]) -> bool:
    """Keep `entries` for the enclosing `audit_deferred` block; False when there is none.
    Raises ValueError for an entry without an actor, as an append would."""
    kept = _deferred.get()
    if kept is None:
        return False
    _require_actors(entries)

    def marker() -> None:
        """Pending until commit; gone if its savepoint rolls back."""

    transaction.on_commit(marker)
    kept.extend((entry, marker) for entry in entries)
    return True


def audit_append_many(entries: Sequence[AuditEntry]) -> int:
    """`audit_record_many` always with one COPY (`core.bulk`; a backfill's order entries).
    Returns how many."""
    with transaction.atomic():
        return bulk_copy_insert(AuditLog, _chained_rows(entries))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)


def _hashed_prefix(
    *, stamp: str, actor: str, action: str, order_id: int | None, before: Any, after: Any
) -> str:
    """The start of an entry's hashed payload (`entry_hash`'s JSON, keys sorted), up to the
    two values only known under the chain's lock: `prev_hash` and `seq` come last in key
    order, so `prefix + '"prev_hash":"<hex>","seq":<n>}'` is exactly that JSON."""
    return (
        f'{{"action":{_dumps(action)},"actor":{_dumps(actor)},"after":{_dumps(after)},'
        f'"before":{_dumps(before)},"created_at":{_dumps(stamp)},'
        f'"order_id":{_dumps(order_id)},'
    )


def _require_actors(entries: Sequence[AuditEntry]) -> None:
    """Raises ValueError for an entry without an actor."""
    for entry in entries:
        if not entry.actor:
            raise ValueError("an audit entry must name its actor")


def _chained_rows(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    """The rows for `entries`, linked to the chain's tail under the advisory lock (held to
    the end of the caller's transaction). Everything but the link is built before the lock
    is taken (the entries' JSON, their time): under it, each entry costs one string join
    and one SHA-256 (the lock serialises every writer of every process). An entry's time is
    when it was built, so two writers' entries may be a few milliseconds out of time order
    against their sequence; the chain's order is `seq`. Raises ValueError for an entry
    without an actor."""
    _require_actors(entries)
    if not entries:
        return []
    created_at = timezone.now()
    stamp = created_at.isoformat()
    rows = []
    prefixes = []
    for entry in entries:
        before = _canonical(entry.before or {})
        after = _canonical(entry.after or {})
        prefixes.append(
            _hashed_prefix(
                stamp=stamp,
                actor=entry.actor,
                action=entry.action,
                order_id=entry.order_id,
                before=before,
                after=after,
            )
        )
        rows.append(
            {
                "created_at": created_at,
                "actor": entry.actor,
                "action": entry.action,
                "order_id": entry.order_id,
                "before": before,
                "after": after,
            }
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
    last = AuditLog.objects.order_by("-seq").values("seq", "entry_hash").first()
    seq = last["seq"] if last else 0
    prev = last["entry_hash"] if last else GENESIS_HASH
    sha256 = hashlib.sha256
    for row, prefix in zip(rows, prefixes, strict=True):
        seq += 1
        digest = sha256(f'{prefix}"prev_hash":"{prev}","seq":{seq}}}'.encode()).hexdigest()
        row["seq"], row["prev_hash"], row["entry_hash"] = seq, prev, digest
        prev = digest
    return rows


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    reason: str


def audit_verify(*, batch_size: int = 2000) -> tuple[int, BrokenLink | None]:
    """Walk the chain in order; return (rows checked, first broken link or None)."""
    prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    for row in AuditLog.objects.order_by("seq").iterator(chunk_size=batch_size):
        if row.seq != expected_seq:
            return checked, BrokenLink(expected_seq, f"entry {expected_seq} is missing")
        if row.prev_hash != prev:
            return checked, BrokenLink(row.seq, "prev_hash does not match the previous entry")
        digest = entry_hash(
            seq=row.seq,
            created_at=row.created_at.isoformat(),
            actor=row.actor,
            action=row.action,
            order_id=row.order_id,
            before=row.before,
            after=row.after,
            prev_hash=row.prev_hash,
        )
        if digest != row.entry_hash:
            return checked, BrokenLink(row.seq, "content does not match its hash (altered)")
        prev = row.entry_hash
        expected_seq += 1
        checked += 1
    return checked, None
