"""Refunds in Django admin: listed and searchable; the approve action needs
`refunds.approve_refund`, refuses the requester, and is audited as admin:<username>."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from core.models import AuditLog
from core.money import USDT_UNIT
from refunds import services
from refunds.models import Refund, RefundStatus
from tests.refunds.conftest import deposit

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

URL = "/admin/refunds/refund/"


def operator(name: str, *perms: str) -> Client:
    user = User.objects.create_user(name, password="pw-" + name, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_refund"))
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def awaiting(stack, chain_user, settings):
    contracts, _ = stack
    settings.REFUND_APPROVAL_THRESHOLD_USDT = Decimal(1)
    order = deposit(chain_user(9), contracts, 30 * USDT_UNIT)
    return services.refund_request(
        order_id=order.pk, reason="admin test", requested_by="admin:alice", amount=5 * USDT_UNIT
    )


def approve(client: Client, refund: Refund):
    return client.post(
        URL, {"action": "approve_refunds", "_selected_action": [refund.pk]}, follow=True
    )


def test_list_filters_and_search(awaiting):
    client = operator("viewer")
    page = client.get(URL, {"status__exact": "AWAITING_APPROVAL"}).content.decode()
    assert "admin test" not in page  # reason is on the detail page
    assert f'href="/admin/refunds/refund/{awaiting.pk}/change/' in page
    assert str(awaiting.pk) in client.get(URL, {"q": "admin:alice"}).content.decode()
    assert "0 refunds" in client.get(URL, {"q": "nobody-at-all"}).content.decode()
    detail = client.get(f"{URL}{awaiting.pk}/change/").content.decode()
    assert "admin test" in detail


def test_approve_action_needs_the_permission(awaiting):
    page = operator("viewer").get(URL).content.decode()
    assert "approve_refunds" not in page
    approve(operator("viewer2"), awaiting)
    assert Refund.objects.get(pk=awaiting.pk).status == RefundStatus.AWAITING_APPROVAL


def test_requester_cannot_approve_and_another_operator_can(awaiting):
    alice = operator("alice", "approve_refund")
    page = approve(alice, awaiting).content.decode()
    assert "a second, different operator must approve it" in page
    assert Refund.objects.get(pk=awaiting.pk).status == RefundStatus.AWAITING_APPROVAL

    page = approve(operator("bob", "approve_refund"), awaiting).content.decode()
    assert f"Approved refunds {awaiting.pk}" in page
    refund = Refund.objects.get(pk=awaiting.pk)
    assert refund.status == RefundStatus.SENT and refund.approved_by == "admin:bob"
    assert AuditLog.objects.filter(action="refund.approved", actor="admin:bob").exists()
