"""Errors of what every app shares."""


class AuditImmutable(Exception):
    """Audit entries are append-only: an existing one cannot be changed or deleted."""
