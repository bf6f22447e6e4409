"""Schema steps shared by migrations (kept stable: migrations import them)."""

from django.db import migrations


def like_twins_dropped(
    table: str,
    *,
    indexes: dict[str, str],
    uniques: dict[str, str],
    twins: dict[str, str],
) -> migrations.RunSQL:
    """The database side of moving `db_index=True` / `unique=True` string fields of `table` to
    Meta (an explicit Index / UniqueConstraint, which Django gives no `varchar_pattern_ops`
    twin): each existing index and unique constraint is renamed to its Meta name, so nothing
    is rebuilt and uniqueness holds throughout, and each `*_like` twin is dropped.

    `indexes` / `uniques`: Django's generated name -> the Meta name; `twins`: twin name ->
    its column (to re-create it when the migration is reversed)."""
    forward = [f'ALTER INDEX "{old}" RENAME TO "{new}"' for old, new in indexes.items()]
    forward += [
        f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"'
        for old, new in uniques.items()
    ]
    forward += [f'DROP INDEX "{twin}"' for twin in twins]
    backward = [
        f'CREATE INDEX "{twin}" ON "{table}" ("{column}" varchar_pattern_ops)'
        for twin, column in twins.items()
    ]
    backward += [
        f'ALTER TABLE "{table}" RENAME CONSTRAINT "{new}" TO "{old}"'
        for old, new in uniques.items()
    ]
    backward += [f'ALTER INDEX "{new}" RENAME TO "{old}"' for old, new in indexes.items()]
    return migrations.RunSQL(forward, backward)
