"""What every app records: the append-only, hash-chained audit log and operators' alerts.

Both tables were created by the orders app and keep their names (`db_table`).
"""

from django.db import models
from django.db.models import Q

from core.exceptions import AuditImmutable


class AuditLog(models.Model):
    """Append-only record of every money-moving step, chained by hash.

    Each row stores the hash of its own content together with the previous row's hash, so a
    row altered or removed behind the model's back breaks the chain (`verify_audit`). The
    model refuses save-over and delete; a database trigger refuses UPDATE and DELETE.
    """

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    actor = models.CharField(max_length=200, help_text="task, command or admin user")
    action = models.CharField(max_length=64)
    # A string reference: core imports no domain app; the audit entry still names its order.
    order = models.ForeignKey(
        "orders.Order",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="audit_entries",
    )
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64)

    class Meta:
        db_table = "orders_auditlog"
        ordering = ("seq",)
        # Declared here rather than `unique=True` / `db_index=True` on the fields, which on
        # PostgreSQL add a `varchar_pattern_ops` twin per column that nothing queries.
        constraints = [
            models.UniqueConstraint(fields=("entry_hash",), name="auditlog_unique_entry_hash"),
        ]
        indexes = [models.Index(fields=("action",), name="auditlog_action")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise AuditImmutable("audit entries are append-only; this one cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise AuditImmutable("audit entries are append-only; this one cannot be deleted")


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    """Something an operator must look at. One open alert per key: raising it again while it
    is open bumps its count instead of adding a row."""

    key = models.CharField(max_length=120, help_text="rule or condition, e.g. listener_lag")
    severity = models.CharField(
        max_length=10, choices=AlertSeverity.choices, default=AlertSeverity.WARNING
    )
    source = models.CharField(max_length=120, help_text="component that raised it")
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    count = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_seen_at = models.DateTimeField(auto_now=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "orders_alert"
        ordering = ("-last_seen_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("key",),
                condition=Q(resolved_at__isnull=True),
                name="alert_one_open_per_key",
            ),
            models.CheckConstraint(
                condition=Q(severity__in=AlertSeverity.values), name="alert_severity_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.key}: {self.message[:60]}"
