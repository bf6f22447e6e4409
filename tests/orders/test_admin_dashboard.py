"""The operations dashboard in Django admin: numbers straight from the database."""

import re
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.audit import audit_record
from ops import dashboard as admin_dashboard
from orders.models import Order, OrderStatus
from tests.factories import OrderFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "admin:ops_dashboard"


@pytest.fixture
def viewer():
    user = UserFactory(username="viewer")
    user.user_permissions.add(Permission.objects.get(codename="view_order"))
    return user


def _page(client, **params):
    response = client.get(reverse(URL), params)
    assert response.status_code == 200
    return response


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse(URL))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_order_view_permission_is_refused(client):
    client.force_login(UserFactory(username="nobody"))
    assert client.get(reverse(URL)).status_code == 403


def test_non_staff_is_sent_to_login(client):
    client.force_login(UserFactory(username="customer", is_staff=False))
    assert client.get(reverse(URL)).status_code == 302


def test_admin_index_and_order_list_link_the_dashboard(client, viewer):
    client.force_login(viewer)
    for page in ("admin:index", "admin:orders_order_changelist"):
        assert reverse(URL) in client.get(reverse(page)).content.decode()


def test_counts_by_status(client, viewer):
    OrderFactory.create_batch(3)
    OrderFactory.create_batch(2, status=OrderStatus.FAILED)
    OrderFactory(status=OrderStatus.SETTLING)
    client.force_login(viewer)
    response = _page(client)
    counts = {s: n for s, _, n in response.context["status_counts"]}
    assert counts == {
        "PENDING": 3,
        "EXECUTING": 0,
        "SETTLING": 1,
        "EXECUTED": 0,
        "CANCELED": 0,
        "FAILED": 2,
    }
    assert response.context["open_total"] == 4
    assert 'data-status="FAILED">2<' in response.content.decode()


def test_stuck_orders_are_open_and_past_deadline_or_with_a_dead_run(client, viewer):
    now = timezone.now()
    fresh = OrderFactory(deadline=now + timedelta(minutes=5))
    past_deadline = OrderFactory(deadline=now - timedelta(seconds=1))
    # Waiting for its market: it outlives its deadline, it is not stuck.
    waiting = OrderFactory(deadline=now - timedelta(hours=1), waiting_for="market")
    stalled = OrderFactory(status=OrderStatus.EXECUTING, deadline=now + timedelta(minutes=5))
    Order.objects.filter(pk=stalled.pk).update(run_lease_until=now - timedelta(seconds=1))
    done = OrderFactory(status=OrderStatus.FAILED, deadline=now - timedelta(hours=1))
    Order.objects.filter(pk=done.pk).update(updated_at=now - timedelta(hours=1))

    client.force_login(viewer)
    response = _page(client)
    stuck = {o.pk for o in response.context["stuck_orders"]}
    assert stuck == {past_deadline.pk, stalled.pk}
    assert response.context["stuck_count"] == 2
    assert fresh.pk not in stuck and waiting.pk not in stuck
    body = response.content.decode()
    assert reverse("admin:orders_order_change", args=[stalled.pk]) in body


def _percentile(values, q):
    """PostgreSQL's percentile_cont: linear interpolation between closest ranks."""
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _trail(order, t0, steps):
    """Audit entries for `order` at t0 + offset seconds: [(action, offset), ...]."""
    for action, offset in steps:
        with mock.patch("django.utils.timezone.now", return_value=t0 + timedelta(seconds=offset)):
            audit_record(actor="test", action=action, order_id=order.pk)


def test_stage_latency_percentiles_from_the_audit_trail(client, viewer):
    t0 = timezone.now() - timedelta(minutes=30)
    validate, place, execute, settle, total = [], [], [], [], []
    for i in range(10):
        order = OrderFactory()
        v, p, e, s = 0.5 + i * 0.1, 1.0 + i, 2.0 + 3 * i, 4.0 + i * i
        _trail(
            order,
            t0,
            [
                ("order.created", 0),
                ("order.booked", v),
                ("order.joined_cycle", v + p),
                ("order.fill_seen", v + p + 1),
                ("order.finalized", v + p + e),
                ("order.settlement_sent", v + p + e + 0.1),
                ("order.settled", v + p + e + s),
            ],
        )
        validate.append(v), place.append(p), execute.append(e), settle.append(s)
        total.append(v + p + e + s)
    # Refused at validation: only its settle and end-to-end spans count.
    refused = OrderFactory()
    _trail(refused, t0, [("order.created", 0), ("order.refused", 0.2), ("order.settled", 3.2)])
    settle.append(3.0)
    total.append(3.2)
    # Ended before the window: not counted.
    old = OrderFactory()
    _trail(old, t0 - timedelta(days=3), [("order.created", 0), ("order.booked", 500)])

    client.force_login(viewer)
    rows = {r.stage: r for r in _page(client, hours=24).context["latencies"]}
    for stage, values in (
        ("validate", validate),
        ("wait", place),
        ("execute", execute),
        ("settle", settle),
        ("end_to_end", total),
    ):
        assert rows[stage].count == len(values), stage
        assert rows[stage].p50 == pytest.approx(_percentile(values, 0.5), abs=1e-3), stage
        assert rows[stage].p99 == pytest.approx(_percentile(values, 0.99), abs=1e-3), stage


def test_latency_window_excludes_older_stages(client, viewer):
    order = OrderFactory()
    _trail(
        order,
        timezone.now() - timedelta(hours=3),
        [("order.created", 0), ("order.booked", 2)],
    )
    client.force_login(viewer)
    one_hour = {r.stage: r for r in _page(client, hours=1).context["latencies"]}
    day = {r.stage: r for r in _page(client, hours=24).context["latencies"]}
    assert one_hour["validate"].count == 0 and one_hour["validate"].p50 is None
    assert day["validate"].count == 1 and day["validate"].p50 == pytest.approx(2.0)


def test_unknown_window_falls_back_to_the_default(client, viewer):
    client.force_login(viewer)
    assert _page(client, hours="abc").context["window_hours"] == 24
    assert _page(client, hours=5).context["window_hours"] == 24


def test_reserve_unavailable_while_the_refunds_selector_has_no_answer(client, viewer):
    client.force_login(viewer)
    with mock.patch.object(admin_dashboard, "reserve_status", return_value=None):
        response = _page(client)
    assert response.context["reserve"] is None
    assert 'id="reserve-unavailable"' in response.content.decode()


def test_reserve_unavailable_when_the_selector_fails(client, viewer):
    def broken():
        raise ConnectionError("node down")

    client.force_login(viewer)
    with mock.patch.object(admin_dashboard, "reserve_status", broken):
        response = _page(client)
    assert 'id="reserve-unavailable"' in response.content.decode()


@pytest.mark.parametrize(
    "status",
    [
        {"balance": 5_000_000_000, "committed": 1_500_000, "floor": 1_000_000_000},
        SimpleNamespace(balance=5_000_000_000, committed=1_500_000, floor=1_000_000_000),
    ],
)
def test_reserve_tile_shows_balance_committed_and_floor(client, viewer, status):
    client.force_login(viewer)
    with mock.patch.object(admin_dashboard, "reserve_status", lambda: status):
        response = _page(client)
    body = response.content.decode()
    assert "5,000.00 USDT" in body and "1.50 USDT" in body and "1,000.00 USDT" in body
    assert "below the floor" not in body


def test_reserve_tile_warns_below_the_floor(client, viewer):
    status = {"balance": 100, "committed": 50, "floor": 60}
    client.force_login(viewer)
    with mock.patch.object(admin_dashboard, "reserve_status", lambda: status):
        assert "below the floor" in _page(client).content.decode()


def test_recent_open_alerts(client, viewer):
    alert_raise(key="listener_lag", message="listener is 80 blocks behind", source="rules")
    alert_raise(key="reserve_low", message="reserve low", source="rules")
    alert_resolve(key="reserve_low", actor="test")
    client.force_login(viewer)
    body = _page(client).content.decode()
    assert "listener is 80 blocks behind" in body
    assert "reserve low" not in body


def test_chart_has_a_bar_per_hour_and_no_outside_asset(client, viewer):
    OrderFactory.create_batch(4)
    OrderFactory(status=OrderStatus.FAILED)
    client.force_login(viewer)
    response = _page(client)
    body = response.content.decode()
    chart = str(response.context["chart"])
    assert chart.startswith("<svg") and chart.count('class="total"') == 24
    assert response.context["chart_total"] == 5
    assert "5 orders, 1 failed" in chart
    # Everything the page loads or links is served by Bronco itself (no CDN).
    for url in re.findall(r'(?:src|href)="([^"]*)"', body):
        assert url.startswith(("/", "?", "#")), url


@pytest.mark.chain
def test_reserve_tile_reads_the_vault_through_the_refunds_app(
    client, viewer, chain_settings, settings
):
    """The real `refunds.selectors.reserve_status` against the anvil vault."""
    from chain.selectors import vault_usdt_balance

    settings.RESERVE_FLOOR_USDT = 250
    OrderFactory(status=OrderStatus.SETTLING, refund_usdt=3 * 10**6)  # committed, not yet paid
    balance = vault_usdt_balance()
    client.force_login(viewer)
    response = _page(client)
    tile = response.context["reserve"]
    assert tile["balance"]["units"] == balance
    assert tile["committed"]["units"] == 3 * 10**6
    assert tile["floor"]["units"] == 250 * 10**6
    assert "250.00 USDT" in response.content.decode()
