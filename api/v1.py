"""/api/v1/: the read-only public API (django-ninja; the OpenAPI schema at
/api/v1/openapi.json, interactive docs at /api/v1/docs).

Every answer is built through a pydantic model of `api.schemas` (plain BaseModel: ninja's
Schema adds an ORM getter that cost 0.5 ms per order here). Bad input is a 4xx `Problem`
(`{"error": ..., "detail": ...}`), never a 500. Order reads carry an ETag (a hash of the
body) and answer 304 to a matching If-None-Match. Nothing here writes Bronco's state.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema
from ninja.errors import HttpError, ValidationError
from pydantic import BaseModel

from api import public, quotes
from api.schemas import (
    FeeOut,
    LastQuote,
    OrderOut,
    OrdersOut,
    Problem,
    QuoteOut,
    SymbolOut,
    SymbolsOut,
)
from chain import selectors as chain
from core.money import TOKEN_DECIMALS, USDT_DECIMALS
from orders import selectors as orders
from trading import market_calendar, pricing

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="Bronco public API",
    version="1",
    description=(
        "Read-only: listed symbols, quotes under Bronco's fee schedule, and the state of every "
        "deposit and redeem. Amounts are decimal strings (USDT 6 decimals, shares 18)."
    ),
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)

ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
VAULT_ID = re.compile(r"^[0-9]{1,78}$")
CURSOR_SALT = "bronco.api.v1.orders-cursor"
# The most an amount may be: far above any real order, far below what breaks arithmetic.
MAX_USDT = Decimal("1000000000")
MAX_SHARES = Decimal("1000000000")
ERRORS = {400: Problem, 404: Problem, 429: Problem, 503: Problem}


class ApiProblem(Exception):
    """A 4xx/5xx answer with a machine code and what was wrong."""

    def __init__(self, status: int, error: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.retry_after = status, error, detail, retry_after


def _problem(status: int, error: str, detail: object) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail}, status=status)


@api.exception_handler(ApiProblem)
def _on_problem(request: HttpRequest, exc: ApiProblem) -> HttpResponse:
    response = _problem(exc.status, exc.error, exc.detail)
    if exc.retry_after is not None:
        response["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return response


@api.exception_handler(ValidationError)
def _on_invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    detail = [
        {"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg", "")}
        for e in exc.errors
    ]
    return _problem(400, "invalid_input", detail)


@api.exception_handler(Exception)
def _on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    """A fault of ours: logged with its traceback, answered as JSON without one."""
    logger.exception("API %s failed", request.path)
    return _problem(500, "internal_error", "the server failed; the failure is logged")


@api.exception_handler(HttpError)
def _on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _problem(exc.status_code, "http_error", str(exc))


def _symbol_code(symbol: str) -> str:
    code = settings.BRONCO_SYMBOLS.get(symbol.upper())
    if code is None:
        listed = ", ".join(sorted(settings.BRONCO_SYMBOLS))
        shown = symbol if len(symbol) <= 16 else symbol[:16] + "..."
        raise ApiProblem(404, "unknown_symbol", f"{shown!r} is not listed; listed: {listed}")
    return code


def _amount(name: str, raw: str, *, decimals: int, maximum: Decimal) -> int:
    """A positive decimal amount of at most `decimals` places -> base units."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ApiProblem(400, "invalid_amount", f"{name} must be a decimal number") from None
    if not value.is_finite():
        raise ApiProblem(400, "invalid_amount", f"{name} must be a finite number")
    if value <= 0:
        raise ApiProblem(400, "invalid_amount", f"{name} must be positive")
    if value > maximum:
        raise ApiProblem(400, "invalid_amount", f"{name} must be at most {maximum}")
    if -value.as_tuple().exponent > decimals:
        raise ApiProblem(400, "invalid_amount", f"{name} has more than {decimals} decimals")
    return int(value.scaleb(decimals))


def _etagged(request: HttpRequest, answer: BaseModel) -> HttpResponse:
    """`answer` as JSON with an ETag (a hash of the body); 304 when If-None-Match names it."""
    content = answer.model_dump_json()
    etag = '"' + hashlib.sha256(content.encode()).hexdigest()[:32] + '"'
    wanted = request.headers.get("If-None-Match", "")
    if etag in [t.strip().removeprefix("W/") for t in wanted.split(",")] or wanted == "*":
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(content, content_type="application/json")
    response["ETag"] = etag
    # Caches (the browser's too) keep it but revalidate each time: a poll costs a 304.
    response["Cache-Control"] = "no-cache"
    return response


_tokens: dict[tuple[int, str, str], str] = {}


def _token_addresses() -> dict[str, str]:
    """symbol -> stock token address: the deployment record, else the vault's `tokenOf` (one
    RPC per symbol, then kept for the process: a listed symbol's token never changes). A
    symbol the vault has not listed, or a node that does not answer, gives no address."""
    recorded = chain.token_addresses()
    out = {}
    for symbol in settings.BRONCO_SYMBOLS:
        key = (settings.CHAIN_ID, settings.CHAIN_VAULT_ADDRESS, symbol)
        if symbol in recorded:
            out[symbol] = recorded[symbol]
        elif key in _tokens:
            out[symbol] = _tokens[key]
        else:
            try:
                address = chain.token_address(symbol=symbol)
            except Exception as exc:  # noqa: BLE001  (any node or config failure: no address)
                logger.info("token address of %s unknown: %s", symbol, exc)
                continue
            if address:
                _tokens[key] = out[symbol] = address
    return out


# (market, sessions) -> (when computed, next session open): the calendar walk costs
# milliseconds, and its answer holds until that instant passes (no session begins before it).
_NEXT_OPENS: dict[tuple[str, frozenset[str]], tuple[datetime, datetime | None]] = {}
_NO_SESSION_RECHECK = timedelta(minutes=1)


def _next_session_open(market: str, now: datetime) -> datetime | None:
    """`market_calendar.next_session_open` for the sessions Bronco trades, kept while it is
    still ahead of `now` (a minute when there is none within two weeks)."""
    sessions = market_calendar.sessions_traded(market)
    kept = _NEXT_OPENS.get((market, sessions))
    if kept is not None:
        at, opens = kept
        if at <= now and (now < opens if opens else now - at < _NO_SESSION_RECHECK):
            return opens
    opens = market_calendar.next_session_open(market, sessions, now)
    _NEXT_OPENS[(market, sessions)] = (now, opens)
    return opens


@api.get("/symbols", response={200: SymbolsOut, 429: Problem}, summary="Listed symbols")
def symbols(request: HttpRequest):
    """Every listed symbol: Futu code, market, token address, whether it can trade now, lot,
    tick, the last quote and its age (the API's quote cache; read from the broker when
    older than API_QUOTE_TTL_SECONDS), and the minimum deposit. `next_session_opens_at`
    is when the next session Bronco trades in begins (the exchange's calendar and the
    TRADING_SESSIONS setting), null when none begins within two weeks."""
    tokens = _token_addresses()
    codes = dict(settings.BRONCO_SYMBOLS)
    cached = quotes.cached_quotes(list(codes.values()))
    now = datetime.now(UTC)
    opens = {
        market: _next_session_open(market, now)
        for market in {pricing.market_of(code) for code in codes.values()}
    }
    out = []
    for symbol, code in codes.items():
        c = cached.get(code)
        q = c.quote if c else None
        out.append(
            SymbolOut(
                symbol=symbol,
                code=code,
                market=pricing.market_of(code),
                currency=pricing.currency_of(code),
                token_address=tokens.get(symbol),
                lot_size=q.lot_size if q else None,
                tick_size=f"{q.tick_size:f}" if q else None,
                can_trade_now=(q.market_open and not q.suspended) if q else None,
                market_state=q.market_state if q else None,
                next_session_opens_at=(
                    opens[pricing.market_of(code)].isoformat()
                    if opens[pricing.market_of(code)]
                    else None
                ),
                last_quote=LastQuote(
                    price=f"{q.price:f}",
                    currency=q.currency,
                    at=datetime.fromtimestamp(c.at, UTC).isoformat(),
                    age_seconds=round(c.age_seconds, 3),
                    market_state=q.market_state,
                )
                if c and q
                else None,
                min_deposit_usdt=f"{settings.ORDER_MIN_USDT:f}",
            )
        )
    return SymbolsOut(symbols=out)


@api.get("/quote", response={200: QuoteOut, **ERRORS}, summary="Estimate a deposit or redeem")
def quote(
    request: HttpRequest,
    symbol: str,
    usdt: str | None = None,
    shares: str | None = None,
):
    """What `usdt` (a deposit) or `shares` (a redeem) of `symbol` would get at the current
    quote if the next cycle filled it in full at that price: shares or USDT, Bronco's fee
    under the published schedule (NETTING_FEE_RATE of the order's traded value, rounded up
    once to the USDT base unit, plus NETTING_FEE_FLAT_USDT once per order), the limit the next cycle
    would send for a net buy (deposit) or net sell (redeem): quote x (1 +/- TRADING_SLIPPAGE)
    on the tick, and how long the estimate holds (`valid_until`). An estimate, not a
    promise: the cycle trades at its broker fill. Writes nothing."""
    if (usdt is None) == (shares is None):
        raise ApiProblem(400, "invalid_input", "give exactly one of usdt (deposit) or shares")
    code = _symbol_code(symbol)
    buy = usdt is not None
    if buy:
        amount = _amount("usdt", usdt, decimals=USDT_DECIMALS, maximum=MAX_USDT)
    else:
        amount = _amount("shares", shares, decimals=TOKEN_DECIMALS, maximum=MAX_SHARES)
    try:
        cached = quotes.cached_quote(code)
    except quotes.QuoteUnavailable as exc:
        raise ApiProblem(503, "no_quote", str(exc), retry_after=exc.retry_after) from exc
    q = cached.quote
    rate = pricing.fx_rate(code)
    estimate = orders.netting_estimate(
        order_type=orders.OrderType.BUY if buy else orders.OrderType.SELL,
        amount_units=amount,
        price=q.price,
        ccy_per_usdt=rate,
    )
    valid = max(0.0, settings.API_QUOTE_TTL_SECONDS - cached.age_seconds)
    return QuoteOut(
        symbol=symbol.upper(),
        code=code,
        side="deposit" if buy else "redeem",
        price=f"{q.price:f}",
        currency=q.currency,
        currency_per_usdt=f"{rate:f}",
        market_open=q.market_open and not q.suspended,
        market_state=q.market_state,
        quoted_at=datetime.fromtimestamp(cached.at, UTC).isoformat(),
        age_seconds=round(cached.age_seconds, 3),
        valid_seconds=round(valid, 3),
        valid_until=(datetime.now(UTC) + timedelta(seconds=valid)).isoformat(),
        limit_price=public.price_str(quotes.limit_price(q, side="BUY" if buy else "SELL")),
        usdt_in=public.usdt(amount) if buy else None,
        shares_in=None if buy else public.shares(amount),
        estimated_shares=public.shares(estimate.token_units),
        estimated_usdt_cost=public.usdt(estimate.usdt_units) if buy else None,
        estimated_usdt_refund=public.usdt(estimate.refund_units) if buy else None,
        estimated_usdt_proceeds=None if buy else public.usdt(estimate.usdt_units),
        estimated_usdt_paid=None if buy else public.usdt(estimate.payout_units),
        fee=FeeOut(
            rate=f"{estimate.fee_rate:f}",
            flat_usdt=public.usdt(estimate.fee_flat_units),
            fee_usdt=public.usdt(estimate.fee_units),
        ),
        min_deposit_usdt=f"{settings.ORDER_MIN_USDT:f}",
    )


def _order_body(order) -> OrderOut:  # type: ignore[no-untyped-def]
    return OrderOut(**public.orders_public([order])[0])


@api.get(
    "/orders/by-tx/{tx_hash}",
    response={200: OrdersOut, 304: None, **ERRORS},
    summary="Orders of one transaction",
)
def orders_by_tx(request: HttpRequest, tx_hash: str):
    """The orders whose deposit / redeem, or whose settlement, is in transaction `tx_hash`
    (0x and 64 hex digits), newest first, at most 100 (a settlement batch holds at most
    CHAIN_SETTLEMENT_BATCH_MAX = 100 ids). 404 when none (yet: the listener acts after its
    confirmations)."""
    if not TX_HASH.match(tx_hash):
        raise ApiProblem(400, "invalid_tx_hash", "tx_hash must be 0x followed by 64 hex digits")
    found = orders.orders_by_tx(tx_hash=tx_hash.lower())
    if not found:
        raise ApiProblem(404, "not_found", f"no order of transaction {tx_hash.lower()} (yet)")
    rows = [OrderOut(**o) for o in public.orders_public(found)]
    return _etagged(request, OrdersOut(orders=rows, next_cursor=None))


@api.get(
    "/orders/{kind}/{vault_id}",
    response={200: OrderOut, 304: None, **ERRORS},
    summary="One deposit or redeem by its vault id",
)
def order_by_vault_id(request: HttpRequest, kind: Literal["deposit", "redeem"], vault_id: str):
    """The order of vault deposit id or redeem id `vault_id` on this API's chain. ETag /
    If-None-Match: a poll whose order has not changed is answered 304."""
    if not VAULT_ID.match(vault_id):
        raise ApiProblem(400, "invalid_vault_id", "vault_id must be a non-negative integer")
    order = orders.order_by_vault_id(
        chain_id=settings.CHAIN_ID,
        order_type=orders.OrderType.BUY if kind == "deposit" else orders.OrderType.SELL,
        onchain_id=int(vault_id),
    )
    if order is None:
        raise ApiProblem(404, "not_found", f"no {kind} {vault_id} on chain {settings.CHAIN_ID}")
    return _etagged(request, _order_body(order))


class PageQuery(Schema):
    address: str
    cursor: str | None = None
    limit: int | None = None


@api.get(
    "/orders",
    response={200: OrdersOut, 304: None, **ERRORS},
    summary="The orders of an address, newest first",
)
def orders_of_address(request: HttpRequest, page: Query[PageQuery]):
    """The deposits and redeems of `address` (any letter case), newest first, `limit` per
    page (default API_PAGE_SIZE, at most API_PAGE_SIZE_MAX). `next_cursor` is null on the
    last page; pass it back as `cursor` for the next one. A cursor is signed for its
    address: a changed or foreign one is refused with 400."""
    if not ADDRESS.match(page.address):
        raise ApiProblem(400, "invalid_address", "address must be 0x followed by 40 hex digits")
    address = page.address.lower()
    limit = page.limit if page.limit is not None else settings.API_PAGE_SIZE
    if not 1 <= limit <= settings.API_PAGE_SIZE_MAX:
        raise ApiProblem(
            400, "invalid_limit", f"limit must be between 1 and {settings.API_PAGE_SIZE_MAX}"
        )
    before = None
    if page.cursor:
        try:
            data = signing.loads(page.cursor, salt=CURSOR_SALT)
        except signing.BadSignature:
            raise ApiProblem(
                400, "invalid_cursor", "cursor was not issued by this API (changed or cut)"
            ) from None
        if (
            not isinstance(data, dict)
            or data.get("a") != address
            or not isinstance(data.get("b"), int)
        ):
            raise ApiProblem(400, "invalid_cursor", "cursor belongs to another address")
        before = data["b"]
    found = orders.orders_of_address(address=address, before_id=before, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    cursor = signing.dumps({"a": address, "b": found[-1].pk}, salt=CURSOR_SALT) if more else None
    rows = [OrderOut(**o) for o in public.orders_public(found)]
    return _etagged(request, OrdersOut(orders=rows, next_cursor=cursor))
