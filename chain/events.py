"""The typed events of the contracts Bronco ships: one frozen dataclass per event.

`chain.client.decode_log` builds them, and nothing else does: it decodes a log strictly
against the ABI, then hands the values to `event_from_abi`, which maps the ABI's argument
names to these fields. Every reader uses attributes, never ABI names.

Field types are Bronco's: integers of base units (USDT 6 decimals, stock tokens 18),
checksummed address strings, symbols as `str`, other bytes32 as 0x-hex. Every event also
says where its log sits (`tx_hash`, `log_index`, `block_number`, `block_hash`, `address`).

The vault's symbol encoding (ASCII, right-zero-padded bytes32) lives here too, as the one
place that turns a `symbol` argument into a `str` and back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_args

# --- the vault's symbol encoding ---------------------------------------------------------


def symbol_to_bytes32(symbol: str) -> bytes:
    raw = symbol.encode("ascii")
    if not raw or len(raw) > 32:
        raise ValueError(f"symbol {symbol!r} must be 1-32 ASCII characters")
    return raw.ljust(32, b"\0")


def bytes32_to_symbol(value: str | bytes) -> str:
    """The ASCII symbol in a right-zero-padded bytes32; ValueError when it is not one."""
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    text = raw.rstrip(b"\0")
    if not text or b"\0" in text or len(raw) != 32:
        raise ValueError(f"not a padded ASCII symbol: 0x{raw.hex()}")
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not an ASCII symbol: 0x{raw.hex()}") from exc
    if not decoded.isprintable() or " " in decoded:
        raise ValueError(f"not a printable symbol: {decoded!r}")
    return decoded


# --- the events --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ContractEvent:
    """Where a decoded log sits on chain; the base of every event below.

    `ABI_NAME` is the event's name in the ABI; `ABI_ARGS` maps each ABI argument name to the
    field that holds it (the only place ABI names appear)."""

    ABI_NAME: ClassVar[str]
    ABI_ARGS: ClassVar[dict[str, str]]

    address: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str

    @property
    def name(self) -> str:
        return self.ABI_NAME

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)

    def abi_args(self) -> dict[str, Any]:
        """The arguments under their ABI names, as JSON (symbols back in bytes32 0x-hex):
        what `ChainEvent.args` records, exactly as the log said it."""
        out: dict[str, Any] = {}
        for abi_name, field_name in self.ABI_ARGS.items():
            value = getattr(self, field_name)
            if abi_name == "symbol":
                value = "0x" + symbol_to_bytes32(value).hex()
            out[abi_name] = value
        return out


# BroncoVault: what users do.


@dataclass(frozen=True, kw_only=True)
class Deposit(ContractEvent):
    """A user deposited USDT naming a stock: it becomes one BUY order."""

    ABI_NAME = "Deposit"
    ABI_ARGS = {
        "depositId": "deposit_id",
        "user": "user",
        "symbol": "symbol",
        "usdtAmount": "usdt_units",
    }
    deposit_id: int
    user: str
    symbol: str
    usdt_units: int


@dataclass(frozen=True, kw_only=True)
class CancelRequested(ContractEvent):
    """The depositor asked to cancel a deposit not yet settled."""

    ABI_NAME = "CancelRequested"
    ABI_ARGS = {"depositId": "deposit_id", "user": "user"}
    deposit_id: int
    user: str


@dataclass(frozen=True, kw_only=True)
class Redeem(ContractEvent):
    """A user burned stock tokens to sell them: it becomes one SELL order."""

    ABI_NAME = "Redeem"
    ABI_ARGS = {
        "redeemId": "redeem_id",
        "user": "user",
        "symbol": "symbol",
        "shares": "token_units",
    }
    redeem_id: int
    user: str
    symbol: str
    token_units: int


@dataclass(frozen=True, kw_only=True)
class DepositTerms(ContractEvent):
    """A deposit's terms, right after its Deposit: the highest price per share it accepts
    (USDT base units per whole share; 0 = no bound) and when it expires (unix seconds; the
    vault's default expiry when the user named none)."""

    ABI_NAME = "DepositTerms"
    ABI_ARGS = {
        "depositId": "deposit_id",
        "maxPricePerShare": "price_bound_units",
        "expiry": "expiry",
    }
    deposit_id: int
    price_bound_units: int
    expiry: int


@dataclass(frozen=True, kw_only=True)
class RedeemTerms(ContractEvent):
    """A redeem's terms, right after its Redeem: the lowest price per share it accepts and
    when it expires (as DepositTerms)."""

    ABI_NAME = "RedeemTerms"
    ABI_ARGS = {
        "redeemId": "redeem_id",
        "minPricePerShare": "price_bound_units",
        "expiry": "expiry",
    }
    redeem_id: int
    price_bound_units: int
    expiry: int


@dataclass(frozen=True, kw_only=True)
class RedeemCancelRequested(ContractEvent):
    """The redeemer asked to cancel a redeem not yet settled."""

    ABI_NAME = "RedeemCancelRequested"
    ABI_ARGS = {"redeemId": "redeem_id", "user": "user"}
    redeem_id: int
    user: str


# BroncoVault: what the operator does (each at most once per id).


@dataclass(frozen=True, kw_only=True)
class DepositSettled(ContractEvent):
    """settleDeposit: tokens minted for the shares bought, the rest of the USDT refunded."""

    ABI_NAME = "DepositSettled"
    ABI_ARGS = {
        "depositId": "deposit_id",
        "user": "user",
        "sharesMinted": "minted_token_units",
        "usdtRefunded": "refund_usdt_units",
    }
    deposit_id: int
    user: str
    minted_token_units: int
    refund_usdt_units: int


@dataclass(frozen=True, kw_only=True)
class RedeemSettled(ContractEvent):
    """settleRedeem: the proceeds paid in USDT, unsold shares returned as tokens."""

    ABI_NAME = "RedeemSettled"
    ABI_ARGS = {
        "redeemId": "redeem_id",
        "user": "user",
        "usdtPaid": "payout_usdt_units",
        "sharesReturned": "returned_token_units",
    }
    redeem_id: int
    user: str
    payout_usdt_units: int
    returned_token_units: int


@dataclass(frozen=True, kw_only=True)
class DepositRefunded(ContractEvent):
    """refundDeposit: a manual refund of part of a deposit, paid once per refund id."""

    ABI_NAME = "DepositRefunded"
    ABI_ARGS = {
        "depositId": "deposit_id",
        "refundId": "refund_id",
        "user": "user",
        "amount": "refund_usdt_units",
    }
    deposit_id: int
    refund_id: int
    user: str
    refund_usdt_units: int


@dataclass(frozen=True, kw_only=True)
class DepositFilled(ContractEvent):
    """settleDeposits: the cycle, price (USDT base units per whole share) and fee (USDT base
    units) a batched deposit settlement was made at (beside its DepositSettled)."""

    ABI_NAME = "DepositFilled"
    ABI_ARGS = {
        "depositId": "deposit_id",
        "cycleId": "cycle_id",
        "pricePerShare": "price_per_share_units",
        "fee": "fee_units",
    }
    deposit_id: int
    cycle_id: int
    price_per_share_units: int
    fee_units: int


@dataclass(frozen=True, kw_only=True)
class RedeemFilled(ContractEvent):
    """settleRedeems: as DepositFilled, for a batched redeem settlement."""

    ABI_NAME = "RedeemFilled"
    ABI_ARGS = {
        "redeemId": "redeem_id",
        "cycleId": "cycle_id",
        "pricePerShare": "price_per_share_units",
        "fee": "fee_units",
    }
    redeem_id: int
    cycle_id: int
    price_per_share_units: int
    fee_units: int


@dataclass(frozen=True, kw_only=True)
class SettlementSkipped(ContractEvent):
    """A batch element whose id was already settled: nothing paid (kind 1 deposit, 2 redeem)."""

    # The vault's KIND_DEPOSIT / KIND_REDEEM: the `kind` topic -> the settlement kind.
    KINDS: ClassVar[dict[int, str]] = {1: "deposit", 2: "redeem"}
    ABI_NAME = "SettlementSkipped"
    ABI_ARGS = {"kind": "kind", "id": "vault_id"}
    kind: int
    vault_id: int


# BroncoVault: what the admin does.


@dataclass(frozen=True, kw_only=True)
class FeeScheduleSet(ContractEvent):
    """The published fee schedule: `rate_ppm` parts per million of the amount (rounded up)
    plus `flat_usdt_units` per request; the vault refuses a settlement charging more."""

    ABI_NAME = "FeeScheduleSet"
    ABI_ARGS = {"feeRatePpm": "rate_ppm", "feeFlat": "flat_usdt_units"}
    rate_ppm: int
    flat_usdt_units: int


@dataclass(frozen=True, kw_only=True)
class DefaultExpirySet(ContractEvent):
    """The expiry (seconds after the request) of requests that name none."""

    ABI_NAME = "DefaultExpirySet"
    ABI_ARGS = {"defaultExpiry": "seconds"}
    seconds: int


@dataclass(frozen=True, kw_only=True)
class SymbolListed(ContractEvent):
    ABI_NAME = "SymbolListed"
    ABI_ARGS = {"symbol": "symbol", "token": "token"}
    symbol: str
    token: str


@dataclass(frozen=True, kw_only=True)
class SymbolUnlisted(ContractEvent):
    ABI_NAME = "SymbolUnlisted"
    ABI_ARGS = {"symbol": "symbol"}
    symbol: str


@dataclass(frozen=True, kw_only=True)
class ReserveWithdrawn(ContractEvent):
    """USDT taken out of the vault's payout reserve by the admin."""

    ABI_NAME = "ReserveWithdrawn"
    ABI_ARGS = {"to": "to", "amount": "usdt_units"}
    to: str
    usdt_units: int


@dataclass(frozen=True, kw_only=True)
class Paused(ContractEvent):
    ABI_NAME = "Paused"
    ABI_ARGS = {"account": "account"}
    account: str


@dataclass(frozen=True, kw_only=True)
class Unpaused(ContractEvent):
    ABI_NAME = "Unpaused"
    ABI_ARGS = {"account": "account"}
    account: str


@dataclass(frozen=True, kw_only=True)
class RoleGranted(ContractEvent):
    """OpenZeppelin AccessControl; `role` is the bytes32 role id in 0x-hex."""

    ABI_NAME = "RoleGranted"
    ABI_ARGS = {"role": "role", "account": "account", "sender": "sender"}
    role: str
    account: str
    sender: str


@dataclass(frozen=True, kw_only=True)
class RoleRevoked(ContractEvent):
    ABI_NAME = "RoleRevoked"
    ABI_ARGS = {"role": "role", "account": "account", "sender": "sender"}
    role: str
    account: str
    sender: str


@dataclass(frozen=True, kw_only=True)
class RoleAdminChanged(ContractEvent):
    ABI_NAME = "RoleAdminChanged"
    ABI_ARGS = {
        "role": "role",
        "previousAdminRole": "previous_admin_role",
        "newAdminRole": "new_admin_role",
    }
    role: str
    previous_admin_role: str
    new_admin_role: str


# ERC-20 (MockUSDT and the stock tokens).


@dataclass(frozen=True, kw_only=True)
class Transfer(ContractEvent):
    """An ERC-20 transfer of `units` base units (a mint from, or a burn to, the zero address)."""

    ABI_NAME = "Transfer"
    ABI_ARGS = {"from": "from_address", "to": "to_address", "value": "units"}
    from_address: str
    to_address: str
    units: int


@dataclass(frozen=True, kw_only=True)
class Approval(ContractEvent):
    ABI_NAME = "Approval"
    ABI_ARGS = {"owner": "owner", "spender": "spender", "value": "units"}
    owner: str
    spender: str
    units: int


@dataclass(frozen=True, kw_only=True)
class OwnershipTransferred(ContractEvent):
    ABI_NAME = "OwnershipTransferred"
    ABI_ARGS = {"previousOwner": "previous_owner", "newOwner": "new_owner"}
    previous_owner: str
    new_owner: str


VaultEvent = (
    Deposit
    | CancelRequested
    | Redeem
    | DepositTerms
    | RedeemTerms
    | RedeemCancelRequested
    | DepositSettled
    | RedeemSettled
    | DepositRefunded
    | DepositFilled
    | RedeemFilled
    | SettlementSkipped
    | FeeScheduleSet
    | DefaultExpirySet
    | SymbolListed
    | SymbolUnlisted
    | ReserveWithdrawn
    | Paused
    | Unpaused
    | RoleGranted
    | RoleRevoked
    | RoleAdminChanged
)
TokenEvent = Transfer | Approval | OwnershipTransferred
EventT = TypeVar("EventT", bound=ContractEvent)

_BY_CONTRACT: dict[str, tuple[type[ContractEvent], ...]] = {
    "BroncoVault": get_args(VaultEvent),
    "MockUSDT": (Transfer, Approval, OwnershipTransferred),
    "StockToken": (Transfer, Approval),
}
EVENT_TYPES: dict[tuple[str, str], type[ContractEvent]] = {
    (contract, cls.ABI_NAME): cls for contract, types in _BY_CONTRACT.items() for cls in types
}


def event_type(contract: str, abi_name: str) -> type[ContractEvent] | None:
    """The dataclass of `contract`'s event `abi_name`, or None when Bronco has none."""
    return EVENT_TYPES.get((contract, abi_name))


def event_from_abi(
    cls: type[ContractEvent], args: dict[str, Any], *, position: dict[str, Any]
) -> ContractEvent:
    """Build `cls` from ABI-named, already decoded values (ints, checksummed addresses,
    bytes32 as 0x-hex) and the log's position. A `symbol` argument becomes a `str`, or
    ValueError says why it is not a symbol. Only `chain.client.decode_log` calls this."""
    if set(args) != set(cls.ABI_ARGS):
        raise ValueError(f"{cls.ABI_NAME}: arguments {sorted(args)} != {sorted(cls.ABI_ARGS)}")
    fields = {}
    for abi_name, value in args.items():
        fields[cls.ABI_ARGS[abi_name]] = bytes32_to_symbol(value) if abi_name == "symbol" else value
    return cls(**fields, **position)


def _check_tables() -> None:
    """Every ABI_ARGS names exactly the event's own fields (import-time self-check)."""
    base = {f.name for f in dataclasses.fields(ContractEvent)}
    for cls in EVENT_TYPES.values():
        own = {f.name for f in dataclasses.fields(cls)} - base
        if own != set(cls.ABI_ARGS.values()):
            raise TypeError(f"{cls.__name__}.ABI_ARGS does not cover its fields")


_check_tables()
