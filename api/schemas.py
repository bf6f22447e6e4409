"""The response shapes of /api/v1/ (they make the OpenAPI schema, and every response is built
through them, so the schema and the answers cannot drift). Amounts are decimal strings in
whole units (USDT 6 decimals, shares 18 decimals); prices are in the market currency per
share; times are ISO 8601 UTC."""

from __future__ import annotations

from pydantic import BaseModel


class Problem(BaseModel):
    """Every error: a machine code and what was wrong."""

    error: str
    detail: str | list[dict]


class LastQuote(BaseModel):
    price: str
    currency: str
    at: str
    age_seconds: float
    market_state: str


class SymbolOut(BaseModel):
    symbol: str
    code: str
    market: str
    currency: str
    token_address: str | None
    lot_size: int | None
    tick_size: str | None
    can_trade_now: bool | None
    market_state: str | None
    next_session_opens_at: str | None
    last_quote: LastQuote | None
    min_deposit_usdt: str


class SymbolsOut(BaseModel):
    symbols: list[SymbolOut]


class FeeOut(BaseModel):
    rate: str
    flat_usdt: str
    fee_usdt: str


class QuoteOut(BaseModel):
    symbol: str
    code: str
    side: str
    price: str
    currency: str
    currency_per_usdt: str
    market_open: bool
    market_state: str
    quoted_at: str
    age_seconds: float
    valid_seconds: float
    valid_until: str
    limit_price: str
    usdt_in: str | None
    shares_in: str | None
    estimated_shares: str
    estimated_usdt_cost: str | None
    estimated_usdt_refund: str | None
    estimated_usdt_proceeds: str | None
    estimated_usdt_paid: str | None
    fee: FeeOut
    min_deposit_usdt: str


class CycleOut(BaseModel):
    cycle: int
    price: str | None
    currency_per_usdt: str | None
    shares: str
    usdt: str
    fee_usdt: str
    at: str | None


class StageOut(BaseModel):
    stage: str
    description: str
    status: str | None
    at: str | None


class OrderOut(BaseModel):
    kind: str
    vault_id: str
    chain_id: int
    tx_hash: str
    log_index: int
    address: str
    symbol: str
    code: str
    status: str
    stage: str
    held: bool
    deposited_usdt: str | None
    redeemed_shares: str | None
    price: str | None
    usdt_spent: str | None
    usdt_proceeds: str | None
    fees_usdt: str
    shares_minted: str | None
    shares_sold: str | None
    shares_returned: str | None
    usdt_refunded: str
    usdt_paid: str | None
    settlement_tx: str | None
    cycles: list[CycleOut]
    timeline: list[StageOut]
    created_at: str | None
    updated_at: str | None


class OrdersOut(BaseModel):
    orders: list[OrderOut]
    next_cursor: str | None
