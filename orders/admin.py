"""Operators' view of orders and the audit trail. Money fields are read-only: money moves
only through the pipeline and the refunds app, never by editing a row.

Operator actions on an order (retry its stage, cancel it, refund it) each need their own
permission (`orders.retry_order`, `orders.cancel_order`, `orders.refund_order`), call one
service, and are audited with `admin:<username>` as the actor. A user without the permission
gets a 403 page (per-order actions) or does not see the bulk action at all. The operations
dashboard lives at `admin/dashboard/` (`ops.admin_site`).
"""

import logging
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from core.models import AuditLog
from orders.exceptions import OrderError
from orders.models import Allocation, Cycle, HouseInventory, Order, OrderType
from orders.services import order_operator_cancel, order_operator_retry
from refunds.exceptions import RefundRefused
from refunds.services import refund_request

logger = logging.getLogger(__name__)


def admin_actor(request: HttpRequest) -> str:
    """How the audit trail names an operator acting through the admin."""
    return f"admin:{request.user.get_username()}"


class RefundForm(forms.Form):
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), strip=True
    )
    amount = forms.IntegerField(
        required=False,
        min_value=1,
        label="Amount (USDT base units)",
        help_text="6 decimals: 1 USDT = 1000000. Leave empty to refund everything still owed.",
    )


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


class OrderAllocationInline(admin.TabularInline):
    """What the order got in each netting cycle it took part in."""

    model = Allocation
    fk_name = "order"
    extra = 0
    can_delete = False
    fields = ("cycle", "order_type", "token_units", "usdt_units", "fee_units", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class CycleAllocationInline(OrderAllocationInline):
    """Each participant's allocation in the cycle."""

    fk_name = "cycle"
    fields = ("order", "order_type", "token_units", "usdt_units", "fee_units")
    readonly_fields = fields


@admin.register(Cycle)
class CycleAdmin(admin.ModelAdmin):
    """Netting cycles: their quote, what they crossed, their one broker order (Futu id and
    remark), the one price everyone traded at, the broker's fee (Bronco's cost), the house
    inventory before and after, and each participant's allocation. Read-only."""

    list_display = (
        "id",
        "symbol",
        "status",
        "quote_price",
        "price",
        "demand_units",
        "supply_units",
        "broker_units",
        "filled_units",
        "futu_order_id",
        "broker_fee_usdt",
        "inventory_after",
        "created_at",
    )
    list_filter = ("status", "symbol", "created_at")
    search_fields = ("=id", "client_id", "futu_order_id")
    date_hierarchy = "created_at"
    inlines = (CycleAllocationInline,)
    readonly_fields = tuple(f.name for f in Cycle._meta.concrete_fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(HouseInventory)
class HouseInventoryAdmin(admin.ModelAdmin):
    """Shares Bronco holds at the broker that no token represents (10^-18 share units)."""

    list_display = ("symbol", "token_units", "updated_at")
    readonly_fields = ("symbol", "token_units", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "order_type",
        "stock_code",
        "status",
        "waiting_for",
        "usdt_amount",
        "filled_qty",
        "refund_usdt",
        "user_address",
        "created_at",
    )
    list_filter = ("status", "waiting_for", "order_type", "stock_code", "created_at")
    search_fields = ("=id", "client_id", "chain_tx_hash", "user_address", "futu_order_id")
    date_hierarchy = "created_at"
    inlines = (OrderAllocationInline, AuditLogInline)
    readonly_fields = tuple(f.name for f in Order._meta.concrete_fields)
    actions = ("retry_orders", "cancel_orders")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    # --- Operator permissions ------------------------------------------------------------
    def has_retry_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("orders.retry_order")

    def has_cancel_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("orders.cancel_order")

    def has_refund_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("orders.refund_order")

    # --- Pages ---------------------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        return [
            path("<path:object_id>/retry/", wrap(self.retry_view), name="orders_order_retry"),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="orders_order_cancel"),
            path("<path:object_id>/refund/", wrap(self.refund_view), name="orders_order_refund"),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_retry": self.has_retry_permission(request),
            "can_cancel": self.has_cancel_permission(request),
            "can_refund": self.has_refund_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._order_or_404(request, object_id)
        if not self.has_retry_permission(request, order):
            return self._refused(request, "retry orders", "orders.retry_order", order)
        if request.method == "POST":
            try:
                task = order_operator_retry(order_id=order.pk, actor=admin_actor(request))
            except OrderError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request, f"Order {order.pk}: {task} enqueued again.", messages.SUCCESS
                )
            return self._back_to(order)
        return self._confirm(
            request,
            order,
            action="retry",
            title=f"Retry order {order.pk}",
            explain=(
                "Enqueues the task of the stage this order's status calls for, as the "
                "compensation scan would. Harmless if the order already moved on."
            ),
            submit="Yes, retry its stage",
        )

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._order_or_404(request, object_id)
        if not self.has_cancel_permission(request, order):
            return self._refused(request, "cancel orders", "orders.cancel_order", order)
        if request.method == "POST":
            try:
                order_operator_cancel(order_id=order.pk, actor=admin_actor(request))
            except OrderError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Order {order.pk}: cancel requested. The pipeline cancels it at the "
                    "broker and refunds what was not filled.",
                    messages.SUCCESS,
                )
            return self._back_to(order)
        return self._confirm(
            request,
            order,
            action="cancel",
            title=f"Cancel order {order.pk}",
            explain=(
                "Cancels the broker order (if any) and refunds on chain whatever was not "
                "filled. Shares already bought are still minted to the user."
            ),
            submit="Yes, cancel this order",
        )

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._order_or_404(request, object_id)
        if not self.has_refund_permission(request, order):
            return self._refused(request, "refund orders", "orders.refund_order", order)
        form = RefundForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                refund = refund_request(
                    order_id=order.pk,
                    reason=form.cleaned_data["reason"],
                    requested_by=admin_actor(request),
                    amount=form.cleaned_data["amount"],
                )
            except RefundRefused as exc:
                self.message_user(request, f"Refund refused: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Refund {refund.pk} for order {order.pk}: {refund.amount} USDT base units, "
                    f"{refund.get_status_display()}.",
                    messages.SUCCESS,
                )
                return self._back_to(order)
        return self._confirm(
            request,
            order,
            action="refund",
            title=f"Refund order {order.pk}",
            explain=(
                "Pays USDT back to the user on chain. Above the approval threshold a second, "
                "different operator must approve it first."
            ),
            submit="Request refund",
            form=form,
        )

    # --- Bulk actions on the change list -------------------------------------------------
    @admin.action(description="Retry the current stage of selected orders", permissions=("retry",))
    def retry_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        done, refused = 0, []
        for pk in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                order_operator_retry(order_id=pk, actor=admin_actor(request))
                done += 1
            except OrderError as exc:
                refused.append(str(exc))
        self._report(request, f"Re-enqueued {done} order(s).", refused)

    @admin.action(description="Cancel selected deposits", permissions=("cancel",))
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        done, refused = 0, []
        for pk in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                order_operator_cancel(order_id=pk, actor=admin_actor(request))
                done += 1
            except OrderError as exc:
                refused.append(str(exc))
        self._report(request, f"Cancel requested for {done} order(s).", refused)

    # --- Helpers -------------------------------------------------------------------------
    def _order_or_404(self, request: HttpRequest, object_id: str) -> Order:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Order, pk=object_id)

    def _back_to(self, order: Order) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:orders_order_change", args=[order.pk]))

    def _report(self, request: HttpRequest, summary: str, refused: list[str]) -> None:
        self.message_user(request, summary, messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    def _confirm(
        self,
        request: HttpRequest,
        order: Order,
        *,
        action: str,
        title: str,
        explain: str,
        submit: str,
        form: forms.Form | None = None,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": order,
            "action": action,
            "explain": explain,
            "submit": submit,
            "form": form,
            "is_buy": order.order_type == OrderType.BUY,
        }
        return TemplateResponse(request, "admin/orders/order/action_confirm.html", context)

    def _refused(
        self, request: HttpRequest, what: str, perm: str, order: Order | None = None
    ) -> TemplateResponse:
        logger.warning(
            "admin action refused: %s may not %s",
            admin_actor(request),
            what,
            extra={"order_id": order.pk if order else None, "permission": perm},
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Permission denied",
            "opts": self.opts,
            "original": order,
            "what": what,
            "perm": perm,
        }
        return TemplateResponse(
            request, "admin/orders/order/action_refused.html", context, status=403
        )
