"""Alerts and the audit trail in Django admin, both read-only.

Alerts: list, filter by severity and open/resolved, resolve (audited); raised by code only,
no add, no edit, no delete. Audit entries are append-only and never editable here."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.alerts import alert_resolve
from core.models import Alert, AuditLog


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("open", "Open"), ("resolved", "Resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Alert]) -> QuerySet[Alert]:
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "severity",
        "key",
        "short_message",
        "count",
        "source",
        "created_at",
        "last_seen_at",
        "is_open",
    )
    list_filter = (OpenFilter, "severity", "source", "created_at")
    search_fields = ("key", "message", "source")
    date_hierarchy = "created_at"
    readonly_fields = tuple(f.name for f in Alert._meta.concrete_fields)
    actions = ("resolve_alerts",)

    @admin.display(description="message")
    def short_message(self, alert: Alert) -> str:
        return alert.message if len(alert.message) <= 100 else alert.message[:99] + "…"

    @admin.display(boolean=True, description="open")
    def is_open(self, alert: Alert) -> bool:
        return alert.resolved_at is None

    @admin.action(description="Resolve selected alerts", permissions=("change",))
    def resolve_alerts(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        actor = f"admin:{request.user.get_username()}"
        keys = queryset.filter(resolved_at__isnull=True).values_list("key", flat=True)
        resolved = [key for key in list(keys) if alert_resolve(key=key, actor=actor)]
        self.message_user(request, f"Resolved {len(resolved)} alert(s).", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("seq", "created_at", "actor", "action", "order")
    list_filter = ("action", "created_at")
    search_fields = ("actor", "action", "=order__id", "order__chain_tx_hash")
    readonly_fields = tuple(f.name for f in AuditLog._meta.concrete_fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
