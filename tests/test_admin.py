"""Admin pages render for staff and send anonymous visitors to the login page."""

from decimal import Decimal

import pytest
from django.urls import reverse

from core.audit import audit_record
from orders.models import Allocation, CycleStatus
from tests.factories import CycleFactory, OrderFactory, UserFactory

pytestmark = pytest.mark.django_db

PAGES = [
    ("admin:orders_order_changelist", None),
    ("admin:core_auditlog_changelist", None),
    ("admin:orders_order_change", "order"),
    ("admin:orders_cycle_changelist", None),
    ("admin:orders_cycle_change", "cycle"),
    ("admin:orders_houseinventory_changelist", None),
]


@pytest.fixture
def order():
    # Letters only where the search looks (client id, tx hash, address), so searching for
    # the numeric id can match nothing but the id.
    order = OrderFactory(
        futu_order_id="FUTU-777", client_id="bronco-order", chain_tx_hash="0x" + "ab" * 32
    )
    audit_record(actor="test", action="order.created", order_id=order.pk, after={"x": 1})
    cycle = CycleFactory(
        status=CycleStatus.ALLOCATED,
        quote_price=Decimal("180"),
        price=Decimal("180.25"),
        fee_rate=Decimal("0.001"),
        futu_order_id="FUTU-CYCLE-1",
    )
    Allocation.objects.create(
        cycle=cycle,
        order=order,
        order_type="BUY",
        token_units=42 * 10**15,
        usdt_units=7_571_000,
        fee_units=7_572,
    )
    return order


def _url(name, arg, order):
    if arg == "cycle":
        return reverse(name, args=[order.allocations.get().cycle_id])
    return reverse(name, args=[order.pk]) if arg else reverse(name)


def test_cycle_page_shows_its_broker_order_price_and_allocations(client, order):
    client.force_login(UserFactory(is_superuser=True))
    cycle = order.allocations.get().cycle
    body = client.get(reverse("admin:orders_cycle_change", args=[cycle.pk])).content.decode()
    assert "FUTU-CYCLE-1" in body and "180.250000" in body
    assert f"/admin/orders/order/{order.pk}/" in body  # the participant's allocation
    order_page = client.get(reverse("admin:orders_order_change", args=[order.pk]))
    assert "42000000000000000" in order_page.content.decode()  # its allocation


@pytest.mark.parametrize(("name", "arg"), PAGES)
def test_staff_sees_page(client, order, name, arg):
    client.force_login(UserFactory(is_superuser=True))
    response = client.get(_url(name, arg, order))
    assert response.status_code == 200


@pytest.mark.parametrize(("name", "arg"), PAGES)
def test_anonymous_is_sent_to_login(client, order, name, arg):
    response = client.get(_url(name, arg, order))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_order_page_shows_its_audit_entries(client, order):
    client.force_login(UserFactory(is_superuser=True))
    body = client.get(reverse("admin:orders_order_change", args=[order.pk])).content.decode()
    assert "order.created" in body


@pytest.mark.parametrize(
    "query", ["FUTU-777", "0xabab", lambda o: o.chain_tx_hash, lambda o: str(o.pk)]
)
def test_search_finds_order(client, order, query):
    OrderFactory(  # a decoy that must not match
        user_address="0x" + "cd" * 20, client_id="bronco-decoy", chain_tx_hash="0x" + "cd" * 32
    )
    client.force_login(UserFactory(is_superuser=True))
    q = query(order) if callable(query) else query
    response = client.get(reverse("admin:orders_order_changelist"), {"q": q})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


def test_filter_by_status(client, order):
    OrderFactory(status="FAILED")
    client.force_login(UserFactory(is_superuser=True))
    response = client.get(reverse("admin:orders_order_changelist"), {"status__exact": "FAILED"})
    assert response.context["cl"].result_count == 1


def test_money_fields_are_read_only(client, order):
    client.force_login(UserFactory(is_superuser=True))
    response = client.get(reverse("admin:orders_order_change", args=[order.pk]))
    form_fields = response.context["adminform"].form.fields
    for name in ("usdt_amount", "refund_usdt", "fees_usdt", "payout_usdt", "tokens_minted"):
        assert name not in form_fields
