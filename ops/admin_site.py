"""Bronco's admin site: Django's own, plus the operations dashboard linked from the index.

Installed through `ops.admin_apps.BroncoAdminConfig` (Django's documented way to replace the
default site), so every app's `admin.register` lands here.
"""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path

from ops import dashboard

DASHBOARD_PERMISSION = "orders.view_order"


class BroncoAdminSite(admin.AdminSite):
    site_header = "Bronco administration"
    index_template = "admin/ops/bronco_index.html"

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("dashboard/", self.admin_view(self.dashboard_view), name="ops_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Staff with view permission on orders only (admin_view already requires staff)."""
        if not request.user.has_perm(DASHBOARD_PERMISSION):
            context = {
                **self.each_context(request),
                "title": "Permission denied",
                "what": "view the operations dashboard",
                "perm": DASHBOARD_PERMISSION,
            }
            return TemplateResponse(
                request, "admin/orders/order/action_refused.html", context, status=403
            )
        window = dashboard._window_hours(request.GET.get("hours"))
        context = {
            **self.each_context(request),
            **dashboard.dashboard_context(window_hours=window),
            "title": "Operations dashboard",
        }
        return TemplateResponse(request, "admin/ops/dashboard.html", context)
