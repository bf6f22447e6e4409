"""Refunds in Django admin: list, filters, search and detail, read-only (money moves only
through `refunds.services`). The "approve" action needs `refunds.approve_refund`, is refused
for a refund the operator requested, and is audited as `admin:<username>`."""

import logging

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from refunds.exceptions import RefundRefused
from refunds.models import Refund, RefundStatus
from refunds.services import refund_approve

logger = logging.getLogger(__name__)


def _admin_actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


@admin.register(Refund)
class RefundAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "order",
        "amount",
        "origin",
        "status",
        "requested_by",
        "approved_by",
        "tx_hash",
        "created_at",
    )
    list_filter = ("status", "origin", "created_at")
    search_fields = ("=id", "=order__id", "tx_hash", "requested_by", "approved_by", "reason")
    list_select_related = ("order",)
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Refund._meta.fields]
    actions = ("approve_refunds",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("refunds.approve_refund")

    @admin.action(
        description="Approve selected refunds (second operator)", permissions=("approve",)
    )
    def approve_refunds(self, request: HttpRequest, queryset: QuerySet[Refund]) -> None:
        approved, refused = [], []
        for refund_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                refund = refund_approve(refund_id=refund_id, approver=_admin_actor(request))
            except RefundRefused as exc:
                refused.append(f"refund {refund_id}: {exc}")
            else:
                approved.append(f"{refund.pk} ({RefundStatus(refund.status).label})")
        if approved:
            self.message_user(request, f"Approved refunds {', '.join(approved)}.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Refused: {line}", messages.ERROR)
