from django.contrib import admin
from django.urls import include, path

from bronco_project import views
from chain.webhook import webhook_view
from ops.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("api.urls")),
    path("chain/webhook", webhook_view, name="chain_webhook"),
]
