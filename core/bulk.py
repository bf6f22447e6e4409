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
import io
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models
from django.utils import timezone

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escaped(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPES)
    return text  # the common case (hashes, addresses, symbols): no per-character pass


def _text(value: Any, *, is_json: bool) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    kind = type(value)
    if kind is str and not is_json:
        return _escaped(value)
    if kind is int and not is_json:
        return str(value)
    if is_json:
        return _escaped(json.dumps(value, cls=DjangoJSONEncoder))
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _escaped(str(value))


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
    given: list[tuple[str, bool, str | None]] = []  # (attname, JSON?, text for a None)
    constant: list[str] = []  # the text of defaults that are the same for every row
    per_row: list[tuple[Any, bool]] = []  # (callable default, JSON?)
    columns: list[str] = []
    trailing: list[str] = []
    for f in model._meta.concrete_fields:
        is_json = isinstance(f, models.JSONField)
        auto = getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        if f.attname in names:
            given.append((f.attname, is_json, _text(now, is_json=False) if auto else None))
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
    buffer = io.StringIO()
    for row in rows:
        if row.keys() != names:
            raise ValueError(f"rows name different fields: {sorted(row)} != {sorted(names)}")
        values = []
        for attname, is_json, if_none in given:
            value = row[attname]
            values.append(if_none if value is None and if_none else _text(value, is_json=is_json))
        if tail:
            values.append(tail)
        values.extend(_text(default(), is_json=is_json) for default, is_json in per_row)
        buffer.write("\t".join(values))
        buffer.write("\n")
    buffer.seek(0)
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.copy_expert(f"COPY {table} ({quoted}) FROM STDIN", buffer)
    return len(rows)
