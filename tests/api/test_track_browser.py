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


def test_an_address_pages_on_and_a_busy_api_keeps_what_is_shown(
    page, live_server, fast_poll, settings
):
    settings.API_PAGE_SIZE = 5
    for _ in range(12):
        OrderFactory(user_address=ADDRESS)
    page.goto(f"{live_server.url}/track/?q={ADDRESS}")
    boxes = page.locator("section.order")
    expect(boxes).to_have_count(5)
    expect(page.locator("#message")).to_contain_text("more below")
    page.click("#more")
    expect(boxes).to_have_count(10)
    page.click("#more")
    expect(boxes).to_have_count(12)
    expect(page.locator("#more")).to_be_hidden()
    shot(page, "track_address_paged")

    # Over the rate limit: a 429 with Retry-After; what is shown stays.
    settings.API_RATE_LIMIT_REQUESTS = 1
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 2
    expect(page.locator("#message")).to_contain_text("retrying in", timeout=10_000)
    expect(boxes).to_have_count(12)
    settings.API_RATE_LIMIT_REQUESTS = 0
    expect(page.locator("#message")).to_contain_text("12 order(s)", timeout=10_000)

    # A new query while the old one polls: one loop only (the old one stops).
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "/api/v1/" in r.url else None)
    other = "0x" + "5a" * 20
    page.fill("#q", other)
    page.click("button[type=submit]")
    expect(page.locator("#message")).to_contain_text("0 order(s)")
    page.wait_for_timeout(1500)
    requests.clear()
    page.wait_for_timeout(1500)
    assert requests and all(other in url for url in requests), requests


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
