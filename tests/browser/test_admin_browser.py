"""The admin as operators use it, in a real browser: log in, filter orders, open one, act on
it with the permission, be refused without it; and the operations dashboard."""

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.alerts import alert_raise
from core.audit import audit_record
from core.models import AuditLog
from orders.models import Order, OrderStatus
from tests.browser.conftest import PASSWORD, login, shot
from tests.factories import OrderFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def staff(username: str, *perms: str):
    user = UserFactory(username=username, password=PASSWORD)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="orders", codename__in=("view_order", *perms)
        ),
        # The audit log is core's (it moved there from orders with its table).
        Permission.objects.get(content_type__app_label="core", codename="view_auditlog"),
    )
    return user


@pytest.fixture
def orders():
    """A small book: two working at the broker, one pending, one settled."""
    now = timezone.now()
    working = [
        OrderFactory(
            status=OrderStatus.EXECUTING, stock_code=code, deadline=now + timedelta(hours=1)
        )
        for code in ("US.AAPL", "US.TSLA")
    ]
    OrderFactory(status=OrderStatus.PENDING)
    OrderFactory(status=OrderStatus.EXECUTED)
    return working


@pytest.fixture
def sent():
    """Catch the pipeline steps the admin enqueues (the live server runs in this process)."""
    with mock.patch("orders.runs.run_enqueue") as run_enqueue:
        yield run_enqueue


def _filter_executing_and_open(page, live_server, order: Order) -> None:
    page.goto(f"{live_server.url}/admin/orders/order/")
    page.locator("#changelist-filter").get_by_role("link", name="Executing at the broker").click()
    page.wait_for_url("**status__exact=EXECUTING**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert "2 orders" in page.locator(".paginator").inner_text()
    page.locator("#result_list").get_by_role("link", name=str(order.pk), exact=True).click()
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/change/**")


def test_operator_with_the_permission_cancels_an_order(page, live_server, orders, sent):
    order = orders[0]
    staff("operator", "cancel_order")
    login(page, live_server, "operator")
    _filter_executing_and_open(page, live_server, order)
    shot(page, "01_operator_order_page")

    page.click("#action-cancel")
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/cancel/**")
    shot(page, "02_operator_cancel_confirm")
    page.click("#confirm-cancel")
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/change/**")
    message = page.locator("ul.messagelist li.success").inner_text()
    assert f"Order {order.pk}: cancel requested" in message
    shot(page, "03_operator_cancel_done")

    order.refresh_from_db()
    assert order.cancel_requested_at is not None
    # An order at the broker is its cycle's: the cycle honours the flag when it allocates.
    sent.assert_not_called()
    entry = AuditLog.objects.filter(order=order).order_by("-seq").first()
    assert (entry.actor, entry.action) == ("admin:operator", "order.operator_cancel_requested")
    # The audit entry shows on the order page too.
    page.reload()
    assert "admin:operator" in page.locator("#audit_entries-group").inner_text()


@pytest.mark.broker
def test_operator_with_the_permission_refunds_a_deposit(
    page, live_server, settings, broker_settings
):
    """A pending deposit the broker does not know (asked of the OpenD simulator) is
    refundable; above the approval threshold the refund waits for a second operator, so
    nothing is paid on chain here."""
    from refunds.models import Refund, RefundStatus

    settings.REFUND_APPROVAL_THRESHOLD_USDT = 10
    order = OrderFactory(status=OrderStatus.PENDING, usdt_amount=500 * 10**6)
    working = OrderFactory(status=OrderStatus.EXECUTING, usdt_amount=300 * 10**6)
    staff("refunder", "refund_order")
    login(page, live_server, "refunder")
    page.goto(f"{live_server.url}/admin/orders/order/")
    page.locator("#changelist-filter").get_by_role("link", name="Pending").click()
    page.wait_for_url("**status__exact=PENDING**")
    page.locator("#result_list").get_by_role("link", name=str(order.pk), exact=True).click()
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/change/**")
    shot(page, "07_refunder_order_page")

    page.click("#action-refund")
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/refund/**")
    page.fill("#id_reason", "user deposited twice by mistake")
    page.fill("#id_amount", str(200 * 10**6))
    shot(page, "08_refunder_refund_form")
    page.click("#confirm-refund")
    page.wait_for_url(f"**/admin/orders/order/{order.pk}/change/**")
    refund = Refund.objects.get(order=order)
    message = page.locator("ul.messagelist li.success").inner_text()
    assert f"Refund {refund.pk} for order {order.pk}: 200000000 USDT base units" in message
    assert "Awaiting a second operator" in message
    shot(page, "09_refunder_refund_requested")
    assert (refund.requested_by, refund.status) == (
        "admin:refunder",
        RefundStatus.AWAITING_APPROVAL,
    )
    assert AuditLog.objects.filter(
        order=order, actor="admin:refunder", action="refund.requested"
    ).exists()

    # An order in a netting cycle: refused for now, and the operator is told why.
    page.goto(f"{live_server.url}/admin/orders/order/{working.pk}/refund/")
    page.fill("#id_reason", "user asked")
    page.click("#confirm-refund")
    refusal = page.locator("ul.messagelist li.error").inner_text()
    assert "Refund refused:" in refusal and "takes part in netting cycle" in refusal
    shot(page, "10_refunder_refund_refused_by_the_service")
    assert not Refund.objects.filter(order=working).exists()


def test_staff_without_the_permission_is_refused(page, live_server, orders, sent):
    order = orders[0]
    staff("viewer")
    login(page, live_server, "viewer")
    _filter_executing_and_open(page, live_server, order)
    for action in ("retry", "cancel", "refund"):
        assert page.locator(f"#action-{action}").count() == 0
    shot(page, "04_viewer_order_page_without_actions")

    for action in ("cancel", "refund"):
        response = page.goto(f"{live_server.url}/admin/orders/order/{order.pk}/{action}/")
        assert response.status == 403
        assert f"orders.{action}_order" in page.locator("#content-main").inner_text()
        shot(page, f"05_viewer_{action}_refused")

    order.refresh_from_db()
    assert order.cancel_requested_at is None and order.version == 0
    assert not AuditLog.objects.filter(order=order, actor="admin:viewer").exists()
    sent.assert_not_called()


@pytest.mark.chain
def test_dashboard(page, live_server, orders, chain_settings):
    """The reserve tile reads the anvil vault through refunds.selectors.reserve_status."""
    t0 = timezone.now() - timedelta(minutes=20)
    for i, order in enumerate(orders):
        steps = (("order.created", 0), ("order.booked", 1 + i), ("order.joined_cycle", 2 + 2 * i))
        for action, offset in steps:
            with mock.patch(
                "django.utils.timezone.now", return_value=t0 + timedelta(seconds=offset)
            ):
                audit_record(actor="test", action=action, order_id=order.pk)
    stalled = OrderFactory(status=OrderStatus.SETTLING, deadline=t0)
    alert_raise(key="listener_lag", message="listener is 80 blocks behind", source="rules")
    staff("viewer")
    login(page, live_server, "viewer")

    page.locator("#bronco-operations").get_by_role("link", name="Dashboard").click()
    page.wait_for_url("**/admin/dashboard/")
    assert page.locator("#tile-status td[data-status=EXECUTING]").inner_text() == "2"
    assert str(stalled.pk) in page.locator("#tile-stuck").inner_text()
    assert "listener is 80 blocks behind" in page.locator("#tile-alerts").inner_text()
    latency = page.locator("#tile-latency tr[data-stage=wait]").inner_text()
    assert latency.split()[1:] == ["2", "1.50", "1.99"]  # in a cycle 1 s and 2 s after booking
    assert page.locator("#orders-per-hour rect.total").count() == 24
    assert "Balance" in page.locator("#tile-reserve").inner_text()
    shot(page, "06_dashboard")
