"""What the orders and refunds apps use to pay on chain: one typed request per settlement
kind, the `SettlementSender` protocol, and `settlement_sender()`, the one place that picks
the implementation (settings.CHAIN_SETTLEMENT_SENDER, a dotted path: the real
`chain.services.ChainSettlementSender` everywhere but in tests, which may name a fake;
production refuses any other value).

Each request names its vault id for what it is (a deposit id, a redeem id, a refund id), what
it settles as Bronco saw it on chain (user, symbol, the deposit's USDT or the redeem's shares:
the vault refuses a request whose record at that id differs, DepositMismatch/RedeemMismatch),
and its amounts for what they pay (a refund, a payout, tokens minted or returned), in base
units. The vault settles each (kind, vault id) at most once, and so does every sender;
`submit_batch` settles many ids per transaction with the same checks (deposits and redeems
together in one `settleBatch` when both wait).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from chain.models import SettlementKind


class SettlementState(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REVERTED = "REVERTED"


def _non_negative(**amounts: int | None) -> None:
    for name, value in amounts.items():
        if value is not None and value < 0:
            raise ValueError(f"settlement amounts are never negative: {name}={value}")


def _named(user: str, symbol: str, amount: int) -> None:
    if not user or not symbol or amount <= 0:
        raise ValueError(
            "a settlement names what it settles: the user, the symbol and a positive amount "
            f"(got {user!r}, {symbol!r}, {amount})"
        )


def _symbol_arg(symbol: str) -> bytes:
    from chain.events import symbol_to_bytes32

    return symbol_to_bytes32(symbol)


@dataclass(frozen=True, kw_only=True)
class DepositSettlement:
    """settleDeposit: mint tokens for the shares bought, refund the rest of the deposit.

    Names the deposit as Bronco saw it (`user`, `symbol`, `deposit_usdt_units`): the vault
    refuses the settlement (DepositMismatch) when the record at the id differs. `cycle_id`,
    `price_per_share_units` (USDT base units per whole share) and `fee_units` are what a
    netting cycle settled at; a request carrying them goes out batched (settleDeposits)."""

    kind: ClassVar[SettlementKind] = SettlementKind.DEPOSIT
    deposit_id: int
    user: str
    symbol: str
    deposit_usdt_units: int
    mint_token_units: int
    refund_usdt_units: int
    order_id: int | None = None
    cycle_id: int | None = None
    price_per_share_units: int | None = None
    fee_units: int | None = None

    def __post_init__(self) -> None:
        _named(self.user, self.symbol, self.deposit_usdt_units)
        _non_negative(
            mint_token_units=self.mint_token_units,
            refund=self.refund_usdt_units,
            cycle_id=self.cycle_id,
            price_per_share_units=self.price_per_share_units,
            fee_units=self.fee_units,
        )

    @property
    def vault_id(self) -> int:
        return self.deposit_id

    def vault_call(self) -> tuple[str, tuple]:
        return "settleDeposit", (
            self.deposit_id,
            self.user,
            _symbol_arg(self.symbol),
            self.deposit_usdt_units,
            self.mint_token_units,
            self.refund_usdt_units,
        )

    def batch_element(self) -> tuple:
        """This request as one element of settleDeposits (a DepositSettlement struct)."""
        return (
            *self.vault_call()[1],
            self.cycle_id or 0,
            self.price_per_share_units or 0,
            self.fee_units or 0,
        )


@dataclass(frozen=True, kw_only=True)
class RedeemSettlement:
    """settleRedeem: pay the sale's proceeds, return the shares not sold as tokens. Names the
    redeem (`user`, `symbol`, `redeem_token_units`) as DepositSettlement names its deposit."""

    kind: ClassVar[SettlementKind] = SettlementKind.REDEEM
    redeem_id: int
    user: str
    symbol: str
    redeem_token_units: int
    payout_usdt_units: int
    return_token_units: int
    order_id: int | None = None
    cycle_id: int | None = None
    price_per_share_units: int | None = None
    fee_units: int | None = None

    def __post_init__(self) -> None:
        _named(self.user, self.symbol, self.redeem_token_units)
        _non_negative(
            payout=self.payout_usdt_units,
            return_token_units=self.return_token_units,
            cycle_id=self.cycle_id,
            price_per_share_units=self.price_per_share_units,
            fee_units=self.fee_units,
        )

    @property
    def vault_id(self) -> int:
        return self.redeem_id

    def vault_call(self) -> tuple[str, tuple]:
        return "settleRedeem", (
            self.redeem_id,
            self.user,
            _symbol_arg(self.symbol),
            self.redeem_token_units,
            self.payout_usdt_units,
            self.return_token_units,
        )

    def batch_element(self) -> tuple:
        """This request as one element of settleRedeems (a RedeemSettlement struct)."""
        return (
            *self.vault_call()[1],
            self.cycle_id or 0,
            self.price_per_share_units or 0,
            self.fee_units or 0,
        )


@dataclass(frozen=True, kw_only=True)
class RefundPayment:
    """refundDeposit: a manual refund of part of a deposit before its settlement, paid once
    per refund id (the vault id of this kind). Names the deposit as DepositSettlement does."""

    kind: ClassVar[SettlementKind] = SettlementKind.REFUND
    refund_id: int
    deposit_id: int
    user: str
    symbol: str
    deposit_usdt_units: int
    refund_usdt_units: int
    order_id: int | None = None

    def __post_init__(self) -> None:
        if self.deposit_id is None or self.refund_usdt_units <= 0:
            raise ValueError("a refund names its deposit and pays a positive USDT amount")
        _named(self.user, self.symbol, self.deposit_usdt_units)

    @property
    def vault_id(self) -> int:
        return self.refund_id

    def vault_call(self) -> tuple[str, tuple]:
        return "refundDeposit", (
            self.deposit_id,
            self.user,
            _symbol_arg(self.symbol),
            self.deposit_usdt_units,
            self.refund_id,
            self.refund_usdt_units,
        )


# The batched vault call per kind (refunds are never batched), and the one for both kinds.
BATCH_CALLS = {SettlementKind.DEPOSIT: "settleDeposits", SettlementKind.REDEEM: "settleRedeems"}
MIXED_BATCH_CALL = "settleBatch"


def batch_call(requests: Sequence[DepositSettlement | RedeemSettlement]) -> tuple[str, tuple]:
    """The vault function and arguments that settle `requests` in one transaction:
    settleDeposits or settleRedeems when all are of one kind, settleBatch(deposits, redeems)
    when both are there (each list in the order given). Raises ValueError for no request or
    one of another kind (a refund is never batched)."""
    kinds = {request.kind for request in requests}
    if not kinds or kinds - set(BATCH_CALLS):
        raise ValueError(f"a batch settles deposits and redeems, at least one: {kinds}")
    if len(kinds) == 1:
        (kind,) = kinds
        return BATCH_CALLS[kind], ([r.batch_element() for r in requests],)
    return MIXED_BATCH_CALL, tuple(
        [r.batch_element() for r in requests if r.kind == kind] for kind in BATCH_CALLS
    )


SettlementRequest = DepositSettlement | RedeemSettlement | RefundPayment


@dataclass(frozen=True)
class Settlement:
    """One settlement as its sender recorded it: `tx_hash` is the transaction that paid (or
    the latest attempt while pending); `already_settled` when the vault had it settled by an
    earlier attempt whose record was lost."""

    kind: SettlementKind
    vault_id: int
    tx_hash: str
    state: SettlementState
    already_settled: bool = False


@runtime_checkable
class SettlementSender(Protocol):
    """How orders and refunds pay on chain. Every method is safe to call again: one
    settlement per (kind, vault id), whatever retries or crashes."""

    def submit(self, request: SettlementRequest, *, actor: str) -> Settlement:
        """Send `request` once; the same request again returns the same settlement, another
        request for the same (kind, vault id) raises ValueError. Raises
        chain.exceptions.SettlementRejected when the vault would refuse it for good,
        ChainUnavailable when the node cannot be reached (retry)."""
        ...

    def submit_batch(
        self, requests: Sequence[DepositSettlement | RedeemSettlement], *, actor: str
    ) -> list[Settlement]:
        """Send many settlements in as few transactions as the gas bound allows
        (settings.CHAIN_SETTLEMENT_BATCH_MAX ids per transaction, deposits and redeems
        together in one settleBatch when both are there), one settlement per id as
        `submit` keeps it: an id already submitted is returned as it stands (ValueError if
        asked with other amounts) and not sent again, an id the vault reports settled is
        CONFIRMED with `already_settled`. Returns one Settlement per request, in order;
        `check` works per id. Raises SettlementRejected when the vault would refuse the batch
        (any element mismatched or invalid: nothing of it is sent)."""
        ...

    def check(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        """Where it stands, moving it along (re-broadcast, fee bump). Raises
        SettlementTx.DoesNotExist when nothing was submitted."""
        ...

    def check_many(
        self, *, kind: str, vault_ids: Sequence[int], actor: str
    ) -> dict[int, Settlement]:
        """`check` for many ids of one kind at once: each transaction that carries some of
        them (a batch, or a lone settlement) is checked once — one receipt read per
        transaction, not per id — and moved along as `check` does. Returns the settlement of
        every id that was submitted (an id never submitted is absent)."""
        ...

    def resubmit(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        """Try a REVERTED settlement again; anything else is left as it is."""
        ...

    def settlement(self, *, kind: str, vault_id: int) -> Settlement | None:
        """The recorded settlement, or None when nothing was submitted."""
        ...

    def reserve_usdt_units(self) -> int:
        """USDT (base units) the vault holds: what refunds and payouts are paid from."""
        ...


@functools.cache
def _sender(path: str) -> Any:
    found = import_string(path)
    return found() if isinstance(found, type) else found


def settlement_sender() -> SettlementSender:
    """The sender settings.CHAIN_SETTLEMENT_SENDER names (one instance per path, so a fake
    keeps what it recorded for the test that selected it)."""
    sender = _sender(settings.CHAIN_SETTLEMENT_SENDER)
    if not isinstance(sender, SettlementSender):
        raise TypeError(f"CHAIN_SETTLEMENT_SENDER {settings.CHAIN_SETTLEMENT_SENDER} is not one")
    return sender


@receiver(setting_changed)
def _forget_sender(*, setting: str, **kwargs: Any) -> None:
    """A test that selects another sender (or restores the real one) starts afresh."""
    if setting == "CHAIN_SETTLEMENT_SENDER":
        _sender.cache_clear()
