"""Operator actions on orders in Django admin: retry, cancel (and the services behind them).

Each action needs its own permission, refuses anyone without it with a 403 and changes
nothing, and leaves an audit entry naming `admin:<username>`. Enqueued tasks are caught at
the Celery app (they are sent after commit, so the tests run the commit callbacks).
"""

import base64
import json
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission
from django.urls import reverse

from bronco_project.celery import app as celery_app
from core.models import AuditLog
from orders import pipeline
from orders.exceptions import OrderError
from orders.models import Order, OrderStatus, OrderType
from orders.services import order_operator_cancel, order_operator_retry
from tests.factories import OrderFactory, UserFactory

pytestmark = pytest.mark.django_db

ACTIONS = ("retry", "cancel", "refund")


@pytest.fixture
def sent():
    """Tasks the services sent, read back from the real Redis broker's queues: (task name,
    args), sorted by args. The queues start empty for each test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queues = [q.name for q in celery_app.conf.task_queues]
    client.delete(*queues)

    def read() -> list[tuple[str, list]]:
        found = []
        for queue in queues:
            for raw in client.lrange(queue, 0, -1):
                message = json.loads(raw)
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                found.append((message["headers"]["task"], args))
        return sorted(found, key=lambda item: (item[1], item[0]))

    yield read
    client.delete(*queues)


def staff(username: str, *perms: str):
    """A staff user who may view orders, plus `perms` (codenames on Order)."""
    user = UserFactory(username=username)
    codenames = ("view_order", *perms)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orders", codename__in=codenames)
    )
    return user


def _url(action: str, order: Order) -> str:
    return reverse(f"admin:orders_order_{action}", args=[order.pk])


def _audits(order: Order) -> list[tuple[str, str]]:
    return list(AuditLog.objects.filter(order=order).values_list("actor", "action"))


def test_the_permissions_exist():
    codenames = set(
        Permission.objects.filter(content_type__app_label="orders").values_list(
            "codename", flat=True
        )
    )
    assert {"retry_order", "cancel_order", "refund_order"} <= codenames


# --- retry -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "task"),
    [
        (OrderStatus.PENDING, pipeline.VALIDATE),
        (OrderStatus.SETTLING, pipeline.SETTLE),
    ],
)
def test_retry_enqueues_the_current_stage_and_audits_the_operator(
    client, sent, django_capture_on_commit_callbacks, status, task
):
    order = OrderFactory(status=status)
    client.force_login(staff("ops", "retry_order"))

    assert client.get(_url("retry", order)).status_code == 200  # the confirmation page
    assert sent() == []
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url("retry", order), follow=True)

    assert response.redirect_chain[-1][0] == reverse("admin:orders_order_change", args=[order.pk])
    assert f"{task} enqueued again" in response.content.decode()
    assert sent() == [(f"orders.tasks.order_{task}", [order.pk])]
    assert _audits(order) == [("admin:ops", "order.retry_requested")]
    entry = AuditLog.objects.get(order=order)
    assert entry.after == {"status": status, "stage": task}


def test_retry_of_a_terminal_order_is_refused_with_a_message(
    client, sent, django_capture_on_commit_callbacks
):
    order = OrderFactory(status=OrderStatus.EXECUTED)
    client.force_login(staff("ops", "retry_order"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url("retry", order), follow=True)
    assert "there is no stage to retry" in response.content.decode()
    assert sent() == []
    assert _audits(order) == []


# --- cancel ------------------------------------------------------------------------------
def test_cancel_flags_the_order_enqueues_order_cancel_and_audits(
    client, sent, django_capture_on_commit_callbacks
):
    order = OrderFactory(status=OrderStatus.EXECUTING)
    client.force_login(staff("ops", "cancel_order"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url("cancel", order), follow=True)

    assert "cancel requested" in response.content.decode()
    order.refresh_from_db()
    assert order.cancel_requested_at is not None
    assert order.status == OrderStatus.EXECUTING  # the pipeline does the rest
    assert order.version == 1
    # An order in a cycle is the cycle's: the cycle honours the flag when it allocates.
    assert sent() == []
    assert _audits(order) == [("admin:ops", "order.operator_cancel_requested")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"order_type": OrderType.SELL, "token_amount": 10**18}, "only deposits can be cancelled"),
        ({"status": OrderStatus.CANCELED}, "nothing to cancel"),
        ({"status": OrderStatus.EXECUTED}, "request a refund if money is still owed"),
    ],
)
def test_cancel_refuses_redeems_and_terminal_orders(
    client, sent, django_capture_on_commit_callbacks, fields, message
):
    order = OrderFactory(**fields)
    client.force_login(staff("ops", "cancel_order"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url("cancel", order), follow=True)
    assert message in response.content.decode()
    order.refresh_from_db()
    assert order.cancel_requested_at is None
    assert sent() == []
    assert _audits(order) == []


def test_operator_cancel_is_idempotent(sent, django_capture_on_commit_callbacks):
    order = OrderFactory()
    with django_capture_on_commit_callbacks(execute=True):
        first = order_operator_cancel(order_id=order.pk, actor="admin:a")
        second = order_operator_cancel(order_id=order.pk, actor="admin:b")
    assert first.cancel_requested_at == second.cancel_requested_at
    assert sent() == [("orders.tasks.order_validate", [order.pk])]
    assert _audits(order) == [("admin:a", "order.operator_cancel_requested")]


def test_operator_cancel_retries_a_lost_optimistic_race(sent, django_capture_on_commit_callbacks):
    """A stage moves the order between our read and our write: we re-read and win."""
    order = OrderFactory()
    real_record = order_operator_cancel.__globals__["order_record"]
    calls = []

    def racing_record(**kwargs):
        if not calls:  # the first snapshot is stale, as if a stage had moved the row
            kwargs["order"].version = 7
        calls.append(kwargs["order"].version)
        return real_record(**kwargs)

    with (
        mock.patch("orders.services.order_record", racing_record),
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = order_operator_cancel(order_id=order.pk, actor="admin:ops")
    assert calls == [7, 0]
    assert result.version == 1 and result.cancel_requested_at is not None
    assert sent() == [("orders.tasks.order_validate", [order.pk])]


def test_services_refuse_an_unknown_order():
    with pytest.raises(OrderError, match="does not exist"):
        order_operator_cancel(order_id=999_999, actor="admin:ops")
    with pytest.raises(OrderError, match="does not exist"):
        order_operator_retry(order_id=999_999, actor="admin:ops")


# --- permissions -------------------------------------------------------------------------
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("method", ["get", "post"])
def test_staff_without_the_permission_is_refused_and_nothing_happens(
    client, sent, django_capture_on_commit_callbacks, action, method
):
    order = OrderFactory()
    others = tuple(f"{a}_order" for a in ACTIONS if a != action)
    client.force_login(staff("viewer", *others))  # every permission but this one
    with django_capture_on_commit_callbacks(execute=True):
        response = getattr(client, method)(
            _url(action, order), {"reason": "user asked", "amount": "1"}
        )
    assert response.status_code == 403
    assert f"orders.{action}_order" in response.content.decode()
    order.refresh_from_db()
    assert order.version == 0 and order.cancel_requested_at is None
    assert sent() == []
    assert _audits(order) == []


@pytest.mark.parametrize("action", ACTIONS)
def test_anonymous_is_sent_to_login(client, action):
    response = client.post(_url(action, OrderFactory()))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_who_cannot_view_orders_gets_403(client):
    client.force_login(UserFactory(username="nobody"))
    assert client.get(_url("retry", OrderFactory())).status_code == 403


def test_change_form_shows_only_the_permitted_buttons(client):
    order = OrderFactory()
    page = reverse("admin:orders_order_change", args=[order.pk])
    client.force_login(staff("viewer"))
    body = client.get(page).content.decode()
    assert not any(f'id="action-{a}"' in body for a in ACTIONS)

    client.force_login(staff("canceller", "cancel_order"))
    body = client.get(page).content.decode()
    assert 'id="action-cancel"' in body
    assert 'id="action-retry"' not in body and 'id="action-refund"' not in body

    client.force_login(UserFactory(username="root", is_superuser=True))
    body = client.get(page).content.decode()
    assert all(f'id="action-{a}"' in body for a in ACTIONS)


# --- bulk actions on the change list -----------------------------------------------------
def _changelist_actions(client) -> set[str]:
    response = client.get(reverse("admin:orders_order_changelist"))
    form = response.context["action_form"]  # None when no action is offered at all
    return {name for name, _ in form.fields["action"].choices} if form else set()


def test_bulk_actions_are_offered_only_with_the_permission(client):
    client.force_login(staff("viewer"))
    assert not {"retry_orders", "cancel_orders"} & _changelist_actions(client)
    client.force_login(staff("ops", "retry_order", "cancel_order"))
    assert {"retry_orders", "cancel_orders"} <= _changelist_actions(client)


def test_bulk_action_posted_without_the_permission_does_nothing(
    client, sent, django_capture_on_commit_callbacks
):
    order = OrderFactory()
    client.force_login(staff("viewer", "retry_order"))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("admin:orders_order_changelist"),
            {"action": "cancel_orders", "_selected_action": [order.pk]},
        )
    order.refresh_from_db()
    assert order.cancel_requested_at is None
    assert sent() == [] and _audits(order) == []


def test_bulk_cancel_cancels_deposits_and_reports_refusals(
    client, sent, django_capture_on_commit_callbacks
):
    open_buy = OrderFactory()
    sell = OrderFactory(order_type=OrderType.SELL, token_amount=10**18)
    done = OrderFactory(status=OrderStatus.EXECUTED)
    client.force_login(staff("ops", "cancel_order"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:orders_order_changelist"),
            {"action": "cancel_orders", "_selected_action": [open_buy.pk, sell.pk, done.pk]},
            follow=True,
        )
    body = response.content.decode()
    assert "Cancel requested for 1 order(s)." in body
    assert "only deposits can be cancelled" in body and "nothing to cancel" in body
    assert sent() == [("orders.tasks.order_validate", [open_buy.pk])]
    assert _audits(open_buy) == [("admin:ops", "order.operator_cancel_requested")]


def test_bulk_retry_enqueues_each_open_order(client, sent, django_capture_on_commit_callbacks):
    pending = OrderFactory()
    settling = OrderFactory(status=OrderStatus.SETTLING)
    client.force_login(staff("ops", "retry_order"))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("admin:orders_order_changelist"),
            {"action": "retry_orders", "_selected_action": [pending.pk, settling.pk]},
        )
    assert sent() == [
        ("orders.tasks.order_validate", [pending.pk]),
        ("orders.tasks.order_settle", [settling.pk]),
    ]
    assert _audits(settling) == [("admin:ops", "order.retry_requested")]


# --- refund (through refunds.services.refund_request) ------------------------------------
@pytest.fixture
def refundable(settings, broker_settings):
    """A PENDING deposit the broker (the real OpenD simulator) does not know: the one case a
    manual refund is allowed. The approval threshold is below it, so the refund waits for a
    second operator and nothing is paid on chain here."""
    settings.REFUND_APPROVAL_THRESHOLD_USDT = 10
    return OrderFactory(usdt_amount=500 * 10**6)


def test_refund_requests_a_refund_named_after_the_operator(
    client, refundable, django_capture_on_commit_callbacks
):
    from refunds.models import Refund, RefundStatus

    client.force_login(staff("ops", "refund_order"))
    page = client.get(_url("refund", refundable))
    assert page.status_code == 200 and 'name="reason"' in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            _url("refund", refundable),
            {"reason": "user wrote to support", "amount": str(200 * 10**6)},
            follow=True,
        )

    refund = Refund.objects.get(order=refundable)
    assert (refund.amount, refund.requested_by) == (200 * 10**6, "admin:ops")
    assert refund.status == RefundStatus.AWAITING_APPROVAL
    assert refund.reason == "user wrote to support"
    assert f"Refund {refund.pk} for order {refundable.pk}" in response.content.decode()
    assert ("admin:ops", "refund.requested") in _audits(refundable)


def test_refund_without_amount_takes_everything_that_remains(client, refundable):
    from refunds.models import Refund

    client.force_login(staff("ops", "refund_order"))
    client.post(_url("refund", refundable), {"reason": "duplicate deposit"})
    assert Refund.objects.get(order=refundable).amount == 500 * 10**6


@pytest.mark.parametrize(
    ("fields", "amount", "message"),
    [
        ({"status": OrderStatus.EXECUTING}, "", "takes part in netting cycle"),
        ({"status": OrderStatus.EXECUTED}, "", "already refunded/settled"),
        ({}, str(600 * 10**6), "above what remains"),
    ],
)
def test_refused_refund_shows_why_and_changes_nothing(
    client, settings, broker_settings, fields, amount, message
):
    from refunds.models import Refund

    settings.REFUND_APPROVAL_THRESHOLD_USDT = 10
    order = OrderFactory(usdt_amount=500 * 10**6, **fields)
    client.force_login(staff("ops", "refund_order"))
    response = client.post(_url("refund", order), {"reason": "asked", "amount": amount})
    assert response.status_code == 200  # the form again, with the refusal on top
    body = response.content.decode()
    assert "Refund refused:" in body and message in body
    assert not Refund.objects.filter(order=order).exists()
    assert _audits(order) == []


def test_refund_form_needs_a_reason(client, refundable):
    from refunds.models import Refund

    client.force_login(staff("ops", "refund_order"))
    response = client.post(_url("refund", refundable), {"reason": "  ", "amount": "5"})
    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert not Refund.objects.exists()
