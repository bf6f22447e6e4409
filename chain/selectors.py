"""Reads of on-chain state and of the chain app's records, in Bronco types, for
reconciliation, the reserve check and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from chain.client import bytes32_to_symbol, chain_client, symbol_to_bytes32
from chain.deployment import contract_set
from chain.exceptions import NotConfigured
from chain.models import ChainCursor, SettlementKind, SettlementTx


@dataclass(frozen=True)
class DepositInfo:
    deposit_id: int
    user: str
    symbol: str
    usdt_amount: int
    cancel_requested: bool
    settled: bool


@dataclass(frozen=True)
class RedeemInfo:
    redeem_id: int
    user: str
    symbol: str
    shares: int
    settled: bool


_ZERO = "0x0000000000000000000000000000000000000000"


def _vault() -> str:
    return contract_set().vault


def token_addresses() -> dict[str, str]:
    """symbol -> stock token address as the deployment recorded them (a database read, no
    RPC); empty when no deployment is known for CHAIN_ID."""
    try:
        return dict(contract_set().tokens)
    except NotConfigured:
        return {}


def usdt_address() -> str:
    contracts = contract_set()
    return contracts.usdt or chain_client().call("BroncoVault", contracts.vault, "usdt")


def token_address(*, symbol: str) -> str | None:
    """The stock token of `symbol`, or None when the vault never listed it."""
    address = chain_client().call("BroncoVault", _vault(), "tokenOf", symbol_to_bytes32(symbol))
    return None if address == _ZERO else address


def vault_usdt_balance() -> int:
    """USDT (base units) held by the vault: deposits not yet settled plus the payout reserve."""
    return usdt_balance(address=_vault())


def usdt_balance(*, address: str) -> int:
    return int(chain_client().call("MockUSDT", usdt_address(), "balanceOf", address))


def token_balance(*, symbol: str, address: str) -> int:
    token = token_address(symbol=symbol)
    return (
        0 if token is None else int(chain_client().call("StockToken", token, "balanceOf", address))
    )


def token_total_supply(*, symbol: str) -> int:
    token = token_address(symbol=symbol)
    return 0 if token is None else int(chain_client().call("StockToken", token, "totalSupply"))


def token_total_supplies() -> dict[str, int]:
    """symbol -> total supply (18-decimal base units) for every symbol in BRONCO_SYMBOLS."""
    return {symbol: token_total_supply(symbol=symbol) for symbol in settings.BRONCO_SYMBOLS}


def deposit_info(*, deposit_id: int) -> DepositInfo | None:
    user, symbol, amount, cancel, settled = chain_client().call(
        "BroncoVault", _vault(), "deposits", deposit_id
    )
    if user == _ZERO:
        return None
    return DepositInfo(deposit_id, user, bytes32_to_symbol(symbol), int(amount), cancel, settled)


def redeem_info(*, redeem_id: int) -> RedeemInfo | None:
    user, symbol, shares, settled = chain_client().call(
        "BroncoVault", _vault(), "redeems", redeem_id
    )
    if user == _ZERO:
        return None
    return RedeemInfo(redeem_id, user, bytes32_to_symbol(symbol), int(shares), settled)


_SETTLED_VIEW = {
    SettlementKind.DEPOSIT: "isDepositSettled",
    SettlementKind.REDEEM: "isRedeemSettled",
    SettlementKind.REFUND: "refundIdUsed",
}


def is_settled(*, kind: str, onchain_id: int) -> bool:
    """What the vault says: has this deposit / redeem id been settled, or this refund id paid
    (by anyone)?"""
    view = _SETTLED_VIEW[SettlementKind(kind)]
    return bool(chain_client().call("BroncoVault", _vault(), view, onchain_id))


def deposit_refunded(*, deposit_id: int) -> int:
    """USDT (base units) the vault refunded manually for this deposit (refundDeposit)."""
    return int(chain_client().call("BroncoVault", _vault(), "refundedOf", deposit_id))


def settlement_get(*, kind: str, onchain_id: int) -> SettlementTx | None:
    return SettlementTx.objects.filter(
        chain_id=settings.CHAIN_ID, kind=kind, onchain_id=onchain_id
    ).first()


def listener_lag(*, chain_id: int | None = None, address: str | None = None) -> int | None:
    """Blocks between the head the listener last saw and its checkpoint (None: never ran).
    Without an address, the largest lag over the chain's cursors."""
    cursors = ChainCursor.objects.filter(chain_id=chain_id or settings.CHAIN_ID)
    if address:
        cursors = cursors.filter(address=address)
    lags = [c.lag for c in cursors]
    return max(lags) if lags else None


_DEFAULT_EXPIRY_CACHE: dict[str, tuple[int, float]] = {}


def vault_default_expiry_seconds() -> int:
    """The vault's `defaultExpiry()`: how long after its block a request that names no expiry
    lives (seconds; 7 days as deployed, set by the admin with DefaultExpirySet, at most
    MAX_EXPIRY). One contract read per vault per CHAIN_VAULT_PARAMS_TTL_SECONDS in a process
    (orders are created in bulk; a change is seen within that time). Raises what the chain
    client raises when the node cannot answer."""
    vault = _vault()
    cached = _DEFAULT_EXPIRY_CACHE.get(vault)
    now = time.monotonic()
    if cached is not None and now - cached[1] < settings.CHAIN_VAULT_PARAMS_TTL_SECONDS:
        return cached[0]
    seconds = int(chain_client().call("BroncoVault", vault, "defaultExpiry"))
    _DEFAULT_EXPIRY_CACHE[vault] = (seconds, now)
    return seconds


def vault_params_forget() -> None:
    """Forget the cached vault parameters (`vault_default_expiry_seconds`)."""
    _DEFAULT_EXPIRY_CACHE.clear()
