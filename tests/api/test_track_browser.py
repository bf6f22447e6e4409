"""The status page in Chromium: paste an address or a transaction hash, see each order's
stages, and watch them move as the page polls the API (no reload). Screenshots go to
test-artifacts/browser/."""

import pytest
from playwright.sync_api import expect

from core.audit import audit_record
from orders.models import OrderStatus
from orders.state import order_transition
from tests.browser.conftest import shot
from tests.factories import OrderFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ADDRESS = "0x" + "7e" * 20


@pytest.fixture
def fast_poll(settings):
    settings.API_TRACK_POLL_SECONDS = 0.3
    settings.API_RATE_LIMIT_REQUESTS = 0


def test_an_address_shows_its_orders_and_their_stages_move_without_a_reload(
    page, live_server, fast_poll
):
    older = OrderFactory(user_address=ADDRESS, status=OrderStatus.EXECUTED)
    order = OrderFactory(user_address=ADDRESS)
    audit_record(
        actor="test", action="order.created", order_id=order.pk, after={"status": "PENDING"}
    )
    statuses = []
    page.on(
        "response",
        lambda r: statuses.append(r.status) if "/api/v1/orders?" in r.url else None,
    )
    page.goto(f"{live_server.url}/track/")
    page.fill("#q", ADDRESS)
    page.click("button[type=submit]")

    boxes = page.locator("section.order")
    expect(boxes).to_have_count(2)
    newest = boxes.nth(0)
    assert newest.get_attribute("data-vault-id") == str(int(order.onchain_id))
    assert boxes.nth(1).get_attribute("data-vault-id") == str(int(older.onchain_id))
    expect(newest.locator(".status")).to_have_text("PENDING")
    expect(newest.locator("li[data-stage=seen]")).to_have_count(1)
    shot(page, "track_address_pending")
    # Polls of an unchanged answer cost a 304 (the page sends the ETag back).
    expect(page.locator("#updated")).to_contain_text("no change")
    assert statuses[0] == 200 and 304 in statuses

    order_transition(
        order=order, to_status=OrderStatus.EXECUTING, actor="test", action="order.joined_cycle"
    )
    expect(newest.locator(".status")).to_have_text("EXECUTING")
    expect(newest.locator("li[data-stage=in_cycle]")).to_have_count(1)
    assert "?q=" in page.url  # the page can be bookmarked / shared
    shot(page, "track_address_executing")


def test_a_transaction_hash_from_the_link_and_a_bad_input(page, live_server, fast_poll):
    order = OrderFactory(
        status=OrderStatus.EXECUTED,
        refund_usdt=12_500_000,
        settlement_tx_hash="0x" + "ab" * 32,
    )
    page.goto(f"{live_server.url}/track/?q={order.chain_tx_hash}")
    box = page.locator("section.order")
    expect(box).to_have_count(1)
    expect(box.locator(".status")).to_have_text("EXECUTED")
    expect(box).to_contain_text("12.500000")
    expect(box).to_contain_text("0x" + "ab" * 32)
    shot(page, "track_tx_executed")

    page.fill("#q", "0x1234")
    page.click("button[type=submit]")
    expect(page.locator("#message")).to_contain_text("Paste a transaction hash")
    expect(page.locator("section.order")).to_have_count(0)

    page.fill("#q", "0x" + "0" * 64)
    page.click("button[type=submit]")
    expect(page.locator("#message")).to_contain_text("no order of transaction")
    shot(page, "track_not_found")


def test_the_interactive_docs_load_from_this_server_alone(page, live_server):
    page.goto(f"{live_server.url}/api/v1/docs")
    expect(page.locator(".swagger-ui")).to_be_visible()
    expect(page.get_by_text("/api/v1/orders/by-tx/{tx_hash}")).to_be_visible()
    shot(page, "api_docs")
