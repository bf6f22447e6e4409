"""Operators' view of orders and the audit trail. Money fields are read-only: money moves
only through the pipeline and the refunds app, never by editing a row."""

from django.contrib import admin
from django.http import HttpRequest

from orders.models import AuditLog, Order


class AuditLogInline(admin.TabularInline):
    model = AuditLog
    extra = 0
    can_delete = False
    fields = ("seq", "created_at", "actor", "action", "before", "after")
    readonly_fields = fields
    ordering = ("seq",)
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "order_type",
        "stock_code",
        "status",
        "usdt_amount",
        "filled_qty",
        "refund_usdt",
        "user_address",
        "created_at",
    )
    list_filter = ("status", "order_type", "stock_code", "created_at")
    search_fields = ("=id", "client_id", "chain_tx_hash", "user_address", "futu_order_id")
    date_hierarchy = "created_at"
    inlines = (AuditLogInline,)
    readonly_fields = tuple(f.name for f in Order._meta.concrete_fields)

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


import orders.admin_alerts  # noqa: E402,F401
