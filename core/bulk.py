"""Bulk writes through PostgreSQL's COPY: the listener's backfill path.

`bulk_copy_insert` writes many rows of one model with one `COPY ... FROM STDIN`, skipping
Django's per-instance machinery (model construction and per-field value preparation were
most of a 100,000-log backfill's time with `bulk_create`). Rows are plain dicts of
*database-ready* values keyed by field attname (`order_id`, not `order`): ints, Decimals,
str, bool, aware datetimes, and dict/list for JSON fields. A field missing from a row gets
its model default (a callable default is called per row; `auto_now`/`auto_now_add` get one
`now` for the batch; a nullable field without a default gets NULL).

Constraints, CHECKs and unique indexes apply exactly as for an INSERT (a violation raises
IntegrityError and nothing of the COPY is kept). Runs in the caller's transaction.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escaped(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPES)
    return text  # the common case (hashes, addresses, symbols): no per-character pass


def _plain_text(value: Any) -> str:
    """One value of a non-JSON column in COPY's text format."""
    kind = type(value)
    if kind is str:
        return _escaped(value)
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _escaped(str(value))


def _json_text(value: Any) -> str:
    """One value of a JSON column in COPY's text format (an empty dict, the common audit
    `before`, without a call to the encoder)."""
    if value is None:
        return "\\N"
    if type(value) is dict and not value:
        return "{}"
    return _escaped(json.dumps(value, cls=DjangoJSONEncoder))


def _text(value: Any, *, is_json: bool) -> str:
    """One value in COPY's text format."""
    return _json_text(value) if is_json else _plain_text(value)


# What one read of the COPY source hands psycopg2 (at least; whole lines).
_COPY_READ_CHARS = 1 << 18


class _Streamed:
    """A COPY source read as rows are formatted: PostgreSQL parses and indexes the rows
    already sent while Python formats the next ones (the whole text built first, then
    sent, made the two wait for each other: about a third of a backfill's time)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines

    def read(self, size: int = -1) -> str:
        parts: list[str] = []
        total = 0
        for line in self._lines:
            parts.append(line)
            total += len(line)
            if 0 <= size <= total:
                break
        return "".join(parts)


def _converter(field: models.Field) -> Callable[[Any], str]:
    if isinstance(field, models.JSONField):
        return _json_text
    if isinstance(field, models.DateTimeField):
        return _stamp_converter()
    return _plain_text


def _stamp_converter() -> Callable[[Any], str]:
    """A datetime column's text, the last value's remembered: a batch's rows share a few
    (now, a deadline, a lease), and `isoformat` per row was a twentieth of a backfill."""
    last: list[Any] = [None, ""]

    def text(value: Any) -> str:
        if type(value) is datetime:
            if value == last[0]:
                return last[1]
            last[0], last[1] = value, value.isoformat()
            return last[1]
        return _plain_text(value)

    return text


def _auto_text(now: datetime) -> Callable[[Any], str]:
    """An auto_now(_add) column's text: `now` where the row gives None."""
    stamp = _plain_text(now)
    return lambda value: stamp if value is None else _plain_text(value)


class AnyOf(models.Lookup):
    """`field__any=values`: `field = ANY(%s)` with the values as one array parameter (the
    server plans it exactly as `IN`). Django's `__in` prepares and binds each value on its
    own: for a backfill's 5,000-id look-ups that was a tenth of a second per query.
    Registered on every field by `core.apps`."""

    lookup_name = "any"
    prepare_rhs = False

    def get_db_prep_lookup(self, value: Any, connection: Any) -> tuple[str, list[Any]]:
        return "%s", [list(value)]

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} = ANY({rhs})", [*lhs_params, *rhs_params]


def bulk_ids_reserve(model: type[models.Model], count: int) -> list[int]:
    """`count` fresh primary keys from the model's id sequence (one query)."""
    if count <= 0:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [table, model._meta.pk.column, count],
        )
        return [row[0] for row in cursor.fetchall()]


def bulk_copy_insert(model: type[models.Model], rows: Sequence[dict[str, Any]]) -> int:
    """Insert `rows` (see the module docstring) with one COPY; returns how many. Every row
    names the same fields (ValueError otherwise). A row that names its primary key (`id`,
    e.g. from `bulk_ids_reserve`) keeps it; otherwise the sequence assigns one."""
    if not rows:
        return 0
    now = timezone.now()
    names = rows[0].keys()
    given: list[tuple[str, Callable[[Any], str]]] = []  # (attname, its text)
    constant: list[str] = []  # the text of defaults that are the same for every row
    per_row: list[tuple[Any, bool]] = []  # (callable default, JSON?)
    columns: list[str] = []
    trailing: list[str] = []
    for f in model._meta.concrete_fields:
        is_json = isinstance(f, models.JSONField)
        auto = getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        if f.attname in names:
            given.append((f.attname, _auto_text(now) if auto else _converter(f)))
            columns.append(f.column)
        elif f.primary_key:
            continue
        elif auto:
            constant.append(_text(now, is_json=False))
            trailing.append(f.column)
        elif f.has_default() and callable(f.default):
            per_row.append((f.default, is_json))
        elif f.has_default():
            constant.append(_text(f.default, is_json=is_json))
            trailing.append(f.column)
        else:
            constant.append(_text(None if f.null else f.get_default(), is_json=is_json))
            trailing.append(f.column)
    columns += trailing
    columns += [
        f.column
        for f in model._meta.concrete_fields
        if f.attname not in names and f.has_default() and callable(f.default)
    ]
    tail = "\t".join(constant)
    for row in rows:
        if row.keys() != names:
            raise ValueError(f"rows name different fields: {sorted(row)} != {sorted(names)}")

    def lines() -> Iterator[str]:
        for row in rows:
            values = [text(row[attname]) for attname, text in given]
            if tail:
                values.append(tail)
            values.extend(_text(default(), is_json=is_json) for default, is_json in per_row)
            yield "\t".join(values) + "\n"

    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.copy_expert(
            f"COPY {table} ({quoted}) FROM STDIN", _Streamed(lines()), _COPY_READ_CHARS
        )
    return len(rows)


# Rows per `UPDATE ... FROM (VALUES ...)` statement of `bulk_update_values`.
UPDATE_PAGE_ROWS = 1000


def bulk_update_values(
    model: type[models.Model], objs: Sequence[models.Model], fields: Sequence[str]
) -> int:
    """Write `fields` (field names; a foreign key by its name, `cycle`) of the saved
    instances `objs` as they are in memory: one `UPDATE table SET f = v.f ... FROM (VALUES
    (pk, f, ...), ...) AS v WHERE table.pk = v.pk` per UPDATE_PAGE_ROWS objects, each value
    a bound parameter cast to its column's type. What `QuerySet.bulk_update` writes, without
    its CASE WHEN per field per object (building those expressions was a third of a netting
    cycle's time at 1,000 orders). Values go through each field's `get_db_prep_save`, and
    related objects are checked as a save checks them (ValueError for an unsaved one). All
    pages commit or roll back together, in the caller's transaction if there is one.
    Returns the rows updated (an object whose row is gone counts none). Raises ValueError
    for a field that is not a concrete column other than the primary key."""
    if not objs:
        return 0
    meta = model._meta
    targets = [meta.get_field(name) for name in fields]
    for field in targets:
        if not getattr(field, "concrete", False) or field.primary_key or field.many_to_many:
            raise ValueError(
                f"{model.__name__}.{field.name} is not a column bulk_update_values writes"
            )
    if not targets:
        return 0
    for obj in objs:
        obj._prepare_related_fields_for_save(operation_name="bulk_update_values", fields=targets)
    columns = [meta.pk, *targets]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    pk = quote(meta.pk.column)
    names = ", ".join(quote(f.column) for f in columns)
    sets = ", ".join(f"{quote(f.column)} = v.{quote(f.column)}" for f in targets)
    row = "(" + ", ".join(f"%s::{f.db_type(connection)}" for f in columns) + ")"
    updated = 0
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        for start in range(0, len(objs), UPDATE_PAGE_ROWS):
            page = objs[start : start + UPDATE_PAGE_ROWS]
            params = [
                f.get_db_prep_save(getattr(obj, f.attname), connection)
                for obj in page
                for f in columns
            ]
            cursor.execute(
                f"UPDATE {table} SET {sets} FROM (VALUES {', '.join([row] * len(page))}) "
                f"AS v ({names}) WHERE {table}.{pk} = v.{pk}",
                params,
            )
            updated += cursor.rowcount
    return updated
