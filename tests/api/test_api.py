"""/api/v1/ against the real database and Redis, with the fake broker for quotes: answers,
bad input, the rate limit, ETags, CORS and the OpenAPI schema."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote as quote_path

import pytest
from django.core import signing
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_hyp
from hypothesis import strategies as st
from openapi_spec_validator import validate

from core.audit import audit_record
from core.money import TOKEN_UNIT, USDT_UNIT
from orders.models import Allocation, CycleStatus, OrderStatus, OrderType
from tests.factories import CycleFactory, OrderFactory

pytestmark = pytest.mark.django_db

ADDRESS = "0x" + "ab" * 20
# The fixtures these property tests use (client, settings, fake broker) are the same for
# every generated input on purpose.
FIXTURE_HEALTH = HealthCheck.function_scoped_fixture


@pytest.fixture
def no_limit(settings):
    settings.API_RATE_LIMIT_REQUESTS = 0


@pytest.fixture
def client():
    return Client()


@pytest.fixture
def aapl(fake_broker, settings):
    settings.NETTING_FEE_RATE = Decimal("0.002")
    settings.NETTING_FEE_FLAT_USDT = Decimal("0.5")
    fake_broker.set_quote("US.AAPL", "187.35", lot_size=1, tick_size="0.01")
    return fake_broker


def test_quote_of_a_deposit_is_the_netting_arithmetic_at_the_quote(client, aapl, settings):
    r = client.get("/api/v1/quote", {"symbol": "aapl", "usdt": "1000"})
    assert r.status_code == 200, r.content
    body = r.json()
    # By hand: the most cost c with c + ceil(0.2 % c) + 0.5 USDT <= 1000 USDT is
    # 997.504990 (fee 1.995010 + 0.5); shares = floor(c / 187.35) to 10^-18.
    assert body["estimated_usdt_cost"] == "997.504990"
    assert body["fee"] == {"rate": "0.002", "flat_usdt": "0.500000", "fee_usdt": "2.495010"}
    assert body["estimated_usdt_refund"] == "0.000000"
    assert body["estimated_shares"] == "5.324286042167066986"
    # The next cycle's limit for a net buy: the quote plus 0.5 % slippage, up to the tick.
    assert body["limit_price"] == "188.29"
    assert body["symbol"] == "AAPL" and body["side"] == "deposit"
    assert 0 < body["valid_seconds"] <= settings.API_QUOTE_TTL_SECONDS
    assert body["market_open"] is True


def test_quote_of_a_redeem_pays_proceeds_less_the_fee(client, aapl):
    r = client.get("/api/v1/quote", {"symbol": "AAPL", "shares": "2.5"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["side"] == "redeem"
    assert body["estimated_usdt_proceeds"] == "468.375000"  # 2.5 x 187.35
    fee = Decimal("468.375") * Decimal("0.002") + Decimal("0.5")
    assert Decimal(body["fee"]["fee_usdt"]) == fee.quantize(Decimal("0.000001"))
    assert Decimal(body["estimated_usdt_paid"]) == Decimal("468.375") - fee
    assert body["limit_price"] == "186.41"  # down to the tick


def test_quote_is_cached_so_the_broker_is_asked_once_per_ttl(client, aapl, settings):
    """One snapshot request per TTL for every listed symbol: the API never eats the budget
    the cycles need (Futu: 60 snapshot requests per 30 s)."""
    aapl.set_quote("US.TSLA", "250.10")
    for _ in range(3):
        assert client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"}).status_code == 200
    tsla = client.get("/api/v1/quote", {"symbol": "TSLA", "usdt": "10"})
    assert tsla.json()["price"] == "250.10"
    assert client.get("/api/v1/symbols").status_code == 200
    assert len(aapl.calls_to("quotes")) == 1 and not aapl.calls_to("quote")
    # A listed code without a price (NVDA here) is not asked again within the TTL either.
    assert client.get("/api/v1/quote", {"symbol": "NVDA", "usdt": "10"}).status_code == 503
    assert len(aapl.calls_to("quotes")) == 1
    settings.API_QUOTE_TTL_SECONDS = 0.2
    aapl.set_quote("US.AAPL", "190")
    time.sleep(5.1)  # the first entries were written with the default 5 s TTL
    assert client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"}).json()["price"] == "190"
    assert len(aapl.calls_to("quotes")) == 2


def test_quote_writes_nothing(client, aapl, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"}).status_code == 200


def test_quote_without_a_broker_price_is_503_with_retry_after(client, fake_broker):
    r = client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"})
    assert r.status_code == 503
    assert r.json()["error"] == "no_quote"
    assert int(r["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"symbol": "NOPE", "usdt": "10"}, 404, "unknown_symbol"),
        ({"symbol": "AAPL", "usdt": "-5"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "0"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "1e30"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "NaN"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "Infinity"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "ten"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "1.0000001"}, 400, "invalid_amount"),
        ({"symbol": "AAPL", "usdt": "10", "shares": "1"}, 400, "invalid_input"),
        ({"symbol": "AAPL"}, 400, "invalid_input"),
        ({"usdt": "10"}, 400, "invalid_input"),
    ],
)
def test_bad_quote_input_is_a_4xx_saying_what_is_wrong(client, aapl, params, status, error):
    r = client.get("/api/v1/quote", params)
    assert r.status_code == status, r.content
    assert r["Content-Type"] == "application/json"
    assert r.json()["error"] == error
    assert r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/api/v1/orders?address=0x123", 400, "invalid_address"),
        ("/api/v1/orders?address=0x" + "zz" * 20, 400, "invalid_address"),
        ("/api/v1/orders", 400, "invalid_input"),
        (f"/api/v1/orders?address={ADDRESS}&limit=0", 400, "invalid_limit"),
        (f"/api/v1/orders?address={ADDRESS}&limit=100000", 400, "invalid_limit"),
        (f"/api/v1/orders?address={ADDRESS}&limit=x", 400, "invalid_input"),
        (f"/api/v1/orders?address={ADDRESS}&cursor=abc", 400, "invalid_cursor"),
        ("/api/v1/orders/by-tx/0x1234", 400, "invalid_tx_hash"),
        ("/api/v1/orders/by-tx/" + "0x" + "0" * 64, 404, "not_found"),
        ("/api/v1/orders/deposit/12a", 400, "invalid_vault_id"),
        ("/api/v1/orders/deposit/-1", 400, "invalid_vault_id"),
        ("/api/v1/orders/deposit/" + "9" * 100, 400, "invalid_vault_id"),
        ("/api/v1/orders/deposit/424242", 404, "not_found"),
        ("/api/v1/orders/swap/1", 400, "invalid_input"),
        ("/api/v1/nothing-here", 404, "not_found"),
        ("/api/v2/orders", 404, "not_found"),
    ],
)
def test_bad_order_input_is_a_4xx_saying_what_is_wrong(client, path, status, error):
    r = client.get(path)
    assert r.status_code == status, r.content
    assert r.json()["error"] == error
    assert r.json()["detail"]


def _settled_deposit(**kw):
    order = OrderFactory(
        status=OrderStatus.EXECUTED,
        usdt_amount=1_000 * USDT_UNIT,
        cost_usdt=990 * USDT_UNIT,
        fees_usdt=1 * USDT_UNIT,
        refund_usdt=9 * USDT_UNIT,
        tokens_minted=5 * TOKEN_UNIT,
        avg_fill_price=Decimal("198"),
        futu_order_id="FUTU-SECRET-1",
        settlement_tx_hash="0x" + "5e" * 32,
        **kw,
    )
    cycle = CycleFactory(
        status=CycleStatus.ALLOCATED,
        quote_price=Decimal("198"),
        fee_rate=Decimal("0.001"),
        price=Decimal("198"),
        futu_order_id="FUTU-SECRET-2",
    )
    Allocation.objects.create(
        cycle=cycle,
        order=order,
        order_type=OrderType.BUY,
        token_units=5 * TOKEN_UNIT,
        usdt_units=990 * USDT_UNIT,
        fee_units=USDT_UNIT,
    )
    for action in ("order.created", "order.booked", "order.retry_requested", "order.settled"):
        audit_record(
            actor="admin:alice-the-operator",
            action=action,
            order_id=order.pk,
            after={"status": "EXECUTED", "hold_reason": "internal"},
        )
    return order, cycle


def test_an_order_shows_what_the_chain_shows_and_nothing_internal(client):
    order, cycle = _settled_deposit()
    r = client.get(f"/api/v1/orders/deposit/{int(order.onchain_id)}")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "EXECUTED" and body["kind"] == "deposit"
    assert body["deposited_usdt"] == "1000.000000"
    assert body["usdt_spent"] == "990.000000" and body["fees_usdt"] == "1.000000"
    assert body["usdt_refunded"] == "9.000000"
    assert body["shares_minted"] == "5.000000000000000000"
    assert body["settlement_tx"] == "0x" + "5e" * 32
    assert body["cycles"] == [
        {
            "cycle": cycle.pk,
            "price": "198",
            "currency_per_usdt": "1",
            "shares": "5.000000000000000000",
            "usdt": "990.000000",
            "fee_usdt": "1.000000",
            "at": None,
        }
    ]
    assert [s["stage"] for s in body["timeline"]] == ["seen", "booked", "settled"]
    text = r.content.decode()
    for secret in ("FUTU-SECRET", "alice", "internal", "bronco-", "retry"):
        assert secret not in text
    assert client.get(f"/api/v1/orders/redeem/{int(order.onchain_id)}").status_code == 404


def test_settling_is_executing_in_the_seed_terms(client):
    order = OrderFactory(status=OrderStatus.SETTLING)
    body = client.get(f"/api/v1/orders/deposit/{int(order.onchain_id)}").json()
    assert (body["status"], body["stage"]) == ("EXECUTING", "SETTLING")


def test_by_tx_finds_an_order_by_its_deposit_or_its_settlement(client):
    order, _ = _settled_deposit()
    other = OrderFactory()
    for tx in (order.chain_tx_hash, order.chain_tx_hash.upper().replace("0X", "0x")):
        body = client.get(f"/api/v1/orders/by-tx/{tx}").json()
        assert [o["vault_id"] for o in body["orders"]] == [str(int(order.onchain_id))]
    body = client.get(f"/api/v1/orders/by-tx/{order.settlement_tx_hash}").json()
    assert [o["vault_id"] for o in body["orders"]] == [str(int(order.onchain_id))]
    assert other.pk


def test_orders_of_an_address_page_newest_first_with_a_signed_cursor(client):
    mine = [OrderFactory(user_address=ADDRESS.upper().replace("0X", "0x")) for _ in range(5)]
    OrderFactory(user_address="0x" + "cd" * 20)
    seen, cursor = [], None
    for _ in range(3):
        params = {"address": ADDRESS, "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/orders", params).json()
        seen += [o["vault_id"] for o in body["orders"]]
        cursor = body["next_cursor"]
    assert seen == [str(int(o.onchain_id)) for o in reversed(mine)]
    assert cursor is None


def test_a_tampered_or_foreign_cursor_is_refused(client):
    for _ in range(3):
        OrderFactory(user_address=ADDRESS)
    body = client.get("/api/v1/orders", {"address": ADDRESS, "limit": 1}).json()
    cursor = body["next_cursor"]
    value, _, sig = cursor.rpartition(":")
    tampered = signing.dumps({"a": ADDRESS, "b": 10**9}, salt="x")
    for bad in (value + ":" + sig[::-1], cursor[:-1], tampered):
        r = client.get("/api/v1/orders", {"address": ADDRESS, "cursor": bad})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_cursor")
    foreign = client.get("/api/v1/orders", {"address": "0x" + "cd" * 20, "cursor": cursor})
    assert (foreign.status_code, foreign.json()["error"]) == (400, "invalid_cursor")


def test_etag_round_trip_answers_304_until_the_order_changes(client):
    order = OrderFactory(status=OrderStatus.PENDING)
    url = f"/api/v1/orders/deposit/{int(order.onchain_id)}"
    first = client.get(url)
    etag = first["ETag"]
    assert first.status_code == 200 and etag and first["Cache-Control"] == "no-cache"
    again = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    type(order).objects.filter(pk=order.pk).update(status=OrderStatus.EXECUTING)
    changed = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    listed = client.get("/api/v1/orders", {"address": order.user_address})
    assert (
        client.get(
            "/api/v1/orders", {"address": order.user_address}, HTTP_IF_NONE_MATCH=listed["ETag"]
        ).status_code
        == 304
    )


def test_rate_limit_per_ip_is_429_with_retry_after(client, settings):
    settings.API_RATE_LIMIT_REQUESTS = 3
    settings.API_RATE_LIMIT_WINDOW_SECONDS = 30
    codes = [client.get("/api/v1/symbols").status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = client.get("/api/v1/orders", {"address": ADDRESS})
    assert r.status_code == 429
    assert 1 <= int(r["Retry-After"]) <= 30
    assert r.json()["error"] == "rate_limited"
    # Another client IP has its own budget; pages outside /api/ are not counted.
    assert client.get("/api/v1/symbols", REMOTE_ADDR="10.9.9.9").status_code == 200
    assert client.get("/track/").status_code == 200


def test_rate_limit_is_shared_through_redis(settings, own_api_keys):
    """Two processes' worth of clients: the count lives in Redis, not in the process."""
    import redis

    settings.API_RATE_LIMIT_REQUESTS = 2
    key = f"{settings.API_RATE_LIMIT_KEY_PREFIX}:127.0.0.1"
    redis.Redis.from_url(settings.REDIS_URL).set(key, 2, ex=30)  # another process counted 2
    assert Client().get("/api/v1/symbols").status_code == 429


def test_rate_limit_header_of_a_trusted_proxy(client, settings):
    settings.API_RATE_LIMIT_REQUESTS = 1
    settings.API_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    assert client.get("/api/v1/symbols", HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 200
    assert client.get("/api/v1/symbols", HTTP_X_FORWARDED_FOR="2.2.2.2, 1.1.1.1").status_code == 200
    assert client.get("/api/v1/symbols", HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 429


def test_cors_allows_the_configured_origins_only(client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://wallet.example"]
    ok = client.get("/api/v1/symbols", HTTP_ORIGIN="https://wallet.example")
    assert ok["Access-Control-Allow-Origin"] == "https://wallet.example"
    assert "ETag" in ok["Access-Control-Expose-Headers"]
    other = client.get("/api/v1/symbols", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other
    pre = client.options(
        "/api/v1/orders",
        HTTP_ORIGIN="https://wallet.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert pre.status_code == 200
    assert pre["Access-Control-Allow-Origin"] == "https://wallet.example"
    # A wallet on another origin sends If-None-Match itself (cheap polling).
    assert "if-none-match" in pre["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Origin" not in client.get(
        "/health", HTTP_ORIGIN="https://wallet.example"
    )


def test_static_files_are_served_with_debug_off(client, settings):
    """The status page's script, the API docs' bundle and the admin's CSS come from the web
    process itself (WhiteNoise), so /track/ and /api/v1/docs work with DEBUG off."""
    settings.DEBUG = False
    for path in (
        "/static/api/track.js",
        "/static/ninja/swagger-ui-bundle.js",
        "/static/admin/css/base.css",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        b"".join(response.streaming_content if response.streaming else [response.content])


def test_symbols_list_every_symbol_with_its_quote_and_token(client, aapl, settings):
    settings.BRONCO_SYMBOLS = {"AAPL": "US.AAPL", "TCEHY": "HK.00700"}
    aapl.set_quote("HK.00700", "380.2", lot_size=100, tick_size="0.2", market_open=False)
    body = client.get("/api/v1/symbols").json()
    by = {s["symbol"]: s for s in body["symbols"]}
    assert by["AAPL"]["code"] == "US.AAPL" and by["AAPL"]["can_trade_now"] is True
    assert by["AAPL"]["last_quote"]["price"] == "187.35"
    assert by["TCEHY"]["lot_size"] == 100 and by["TCEHY"]["can_trade_now"] is False
    assert by["TCEHY"]["currency"] == "HKD" and by["TCEHY"]["market"] == "HK"
    assert by["AAPL"]["min_deposit_usdt"] == f"{settings.ORDER_MIN_USDT:f}"
    # The next session from the exchange calendar: a future instant, within a
    # week and a day whatever the day (the longest closure: a holiday week).
    for s in by.values():
        opens = datetime.fromisoformat(s["next_session_opens_at"])
        assert timedelta(0) < opens - datetime.now(UTC) < timedelta(days=8)
    assert len(aapl.calls_to("quotes")) == 1  # one snapshot request for every symbol
    client.get("/api/v1/symbols")
    assert len(aapl.calls_to("quotes")) == 1  # then the cache


def test_symbols_still_answer_without_a_broker_quote(client, fake_broker):
    body = client.get("/api/v1/symbols").json()
    assert body["symbols"] and all(s["last_quote"] is None for s in body["symbols"])


def test_the_openapi_schema_is_valid_and_lists_every_endpoint(client):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    validate(schema)
    assert set(schema["paths"]) >= {
        "/api/v1/symbols",
        "/api/v1/quote",
        "/api/v1/orders",
        "/api/v1/orders/{kind}/{vault_id}",
        "/api/v1/orders/by-tx/{tx_hash}",
    }
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_every_answer_matches_its_schema(client, aapl):
    """The answers are built through the schemas: check one of each against the OpenAPI
    document's components too."""
    from openapi_schema_validator import OAS31Validator

    order, _ = _settled_deposit(user_address=ADDRESS)
    schema = client.get("/api/v1/openapi.json").json()
    components = schema["components"]["schemas"]

    def check(name, body):
        OAS31Validator({**components[name], "components": schema["components"]}).validate(body)

    check("OrderOut", client.get(f"/api/v1/orders/deposit/{int(order.onchain_id)}").json())
    check("OrdersOut", client.get("/api/v1/orders", {"address": ADDRESS}).json())
    check("QuoteOut", client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "50"}).json())
    check("SymbolsOut", client.get("/api/v1/symbols").json())


@settings_hyp(max_examples=60, deadline=None, suppress_health_check=[FIXTURE_HEALTH])
@given(
    symbol=st.text(max_size=12),
    amount=st.one_of(st.text(max_size=30), st.decimals(allow_nan=True).map(str)),
    field=st.sampled_from(["usdt", "shares"]),
)
def test_any_quote_input_is_answered_without_a_500(aapl, no_limit, symbol, amount, field):
    r = Client().get("/api/v1/quote", {"symbol": symbol, field: amount})
    assert r.status_code in (200, 400, 404), r.content
    assert "error" in r.json() or r.status_code == 200


@settings_hyp(max_examples=60, deadline=None, suppress_health_check=[FIXTURE_HEALTH])
@given(
    address=st.one_of(st.text(max_size=44), st.just(ADDRESS)),
    cursor=st.one_of(st.none(), st.text(max_size=80)),
    limit=st.one_of(st.none(), st.text(max_size=25), st.integers().map(str)),
    vault_id=st.text(min_size=1, max_size=80).filter(lambda v: "/" not in v and "?" not in v),
)
def test_any_order_input_is_answered_without_a_500(
    client, no_limit, address, cursor, limit, vault_id
):
    params = {"address": address}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = limit
    for r in (
        client.get("/api/v1/orders", params),
        client.get(f"/api/v1/orders/deposit/{quote_path(vault_id)}"),
        client.get(f"/api/v1/orders/by-tx/{quote_path(vault_id)}"),
    ):
        assert r.status_code in (200, 400, 404), (r.status_code, r.content)


@pytest.mark.parametrize("market", ["US", "HK"])
def test_next_session_open_is_kept_only_while_it_is_ahead(market):
    from api import v1
    from trading import market_calendar

    sessions = market_calendar.sessions_traded(market)
    v1._NEXT_OPENS.clear()
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # a Friday: a weekend lies ahead
    moments = [start + timedelta(minutes=37 * i) for i in range(300)]  # about a week
    first = v1._next_session_open(market, start)
    moments += [first - timedelta(seconds=1), first, first + timedelta(seconds=1), start]
    for now in moments:
        expected = market_calendar.next_session_open(market, sessions, now)
        assert v1._next_session_open(market, now) == expected, now


def test_head_answers_as_get_without_a_body(client):
    order, _ = _settled_deposit()
    path = f"/api/v1/orders/deposit/{int(order.onchain_id)}"
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head["Content-Type"] == get["Content-Type"]
    assert head["ETag"] == get["ETag"]
    assert int(head["Content-Length"]) == len(get.content)


def test_a_method_an_endpoint_does_not_take_is_a_json_405(client, aapl):
    r = client.post("/api/v1/symbols")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"
    assert "GET" in r["Allow"] and "HEAD" in r["Allow"]


def test_an_unknown_symbol_is_not_echoed_at_length(client):
    r = client.get("/api/v1/quote", {"symbol": "X" * 5000, "usdt": "10"})
    assert r.status_code == 404
    assert len(r.json()["detail"]) < 300


def test_a_broker_that_does_not_answer_is_not_asked_again_at_once(client, aapl, settings):
    from trading.exceptions import BrokerUnavailable

    settings.API_QUOTE_TTL_SECONDS = 0.001
    settings.API_BROKER_DOWN_SECONDS = 30
    aapl.fail_next("quotes", BrokerUnavailable("connect timeout"))
    asked = len(aapl.calls_to("quotes"))
    first = client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"})
    second = client.get("/api/v1/quote", {"symbol": "AAPL", "usdt": "10"})
    assert first.status_code == second.status_code == 503
    assert int(second["Retry-After"]) > 5  # the remembered outage, not a default
    assert len(aapl.calls_to("quotes")) == asked + 1  # the second never reached the broker
    assert client.get("/api/v1/symbols").status_code == 200  # the list answers without quotes
    assert len(aapl.calls_to("quotes")) == asked + 1
