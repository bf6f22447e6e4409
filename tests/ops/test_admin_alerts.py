"""Alerts in admin: listed, filtered by severity and open/resolved, resolved by an operator
with the change permission (audited), refused to one with view permission only."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from core.alerts import alert_raise, alert_resolve
from core.models import Alert, AuditLog
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = reverse("admin:core_alert_changelist")


@pytest.fixture
def alerts(settings):
    settings.ADMINS = []
    settings.ALERT_WEBHOOK_URL = ""
    lag = alert_raise(key="listener_lag", message="behind", source="test")
    reserve = alert_raise(
        key="reserve_below_floor", message="short", severity="critical", source="test"
    )
    old = alert_raise(key="old", message="gone", source="test")
    alert_resolve(key="old")
    return lag, reserve, old


def _staff(*perms):
    user = UserFactory()
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    return user


def _listed(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200
    return {a.key for a in response.context["cl"].result_list}


def test_list_and_filters(client, alerts):
    client.force_login(UserFactory(is_superuser=True))
    assert _listed(client) == {"listener_lag", "reserve_below_floor", "old"}
    assert _listed(client, state="open") == {"listener_lag", "reserve_below_floor"}
    assert _listed(client, state="resolved") == {"old"}
    assert _listed(client, severity__exact="critical") == {"reserve_below_floor"}
    lag = alerts[0]
    page = client.get(reverse("admin:core_alert_change", args=[lag.pk]))
    assert page.status_code == 200


def test_operator_with_change_permission_resolves_and_it_is_audited(client, alerts):
    lag, reserve, _ = alerts
    client.force_login(_staff("view_alert", "change_alert"))
    response = client.post(
        URL, {"action": "resolve_alerts", "_selected_action": [lag.pk, reserve.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "Resolved 2 alert(s)." in response.content.decode()
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()
    actors = set(AuditLog.objects.filter(action="alert.resolve").values_list("actor", flat=True))
    assert len(actors) == 1 and actors.pop().startswith("admin:")


def test_view_only_staff_cannot_resolve(client, alerts):
    lag, _, _ = alerts
    client.force_login(_staff("view_alert"))
    assert "listener_lag" in _listed(client)
    client.post(URL, {"action": "resolve_alerts", "_selected_action": [lag.pk]})
    lag.refresh_from_db()
    assert lag.resolved_at is None
    assert not AuditLog.objects.filter(action="alert.resolve").exists()


def test_nobody_adds_or_deletes_alerts(client, alerts):
    client.force_login(UserFactory(is_superuser=True))
    assert client.get(reverse("admin:core_alert_add")).status_code == 403
    lag = alerts[0]
    assert client.get(reverse("admin:core_alert_delete", args=[lag.pk])).status_code == 403
