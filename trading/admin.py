"""Operators' view of broker orders and fill-correction cases. Everything the broker said is
read-only; on a case, operators record only how it was settled (`resolution`,
`resolved_at`). A case's figures (`trading.compensation`): + the vault owes, - it is owed;
shares in 10^-18 share units, USDT in base units (1 USDT = 1000000)."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from trading.models import BrokerFillCorrection, BrokerOrderRecord


@admin.register(BrokerOrderRecord)
class BrokerOrderRecordAdmin(admin.ModelAdmin):
    list_display = (
        "client_id",
        "broker_order_id",
        "code",
        "side",
        "qty",
        "status",
        "filled_qty",
        "avg_fill_price",
        "fee",
        "watch_until",
    )
    list_filter = ("status", "side")
    search_fields = ("=client_id", "=broker_order_id", "code")
    ordering = ("-id",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BrokerFillCorrection)
class BrokerFillCorrectionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "client_id",
        "broker_order_id",
        "before_qty",
        "after_qty",
        "allocation_ref",
        "shares_owed_units",
        "usdt_owed_units",
        "broker_cash_units",
        "detected_at",
        "assessed_at",
        "resolved_at",
    )
    list_filter = ("resolved_at",)
    search_fields = ("=client_id", "=broker_order_id", "allocation_ref")
    ordering = ("-id",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        editable = {"resolution", "resolved_at"}
        return [f.name for f in self.model._meta.fields if f.name not in editable]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
