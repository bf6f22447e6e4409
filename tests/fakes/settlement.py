"""An in-memory `chain.settlement.SettlementSender` for the fast test layer (PostgreSQL and
Redis only, no chain).

Like the vault, it settles each (kind, vault id) at most once: the same request again returns
the same settlement and pays nothing more; another request for that id raises ValueError, as
the real sender does. What happens to a submission is scripted per id (or by default):
`CONFIRM` (the next check confirms it), `PEND` (it stays pending until `confirm()`), `REVERT`
(the next check reports it reverted; a resubmission follows the next scripted outcome) or
`REFUSE` (submit raises SettlementRejected, as when the vault would refuse it for good).

Like the vault, it refuses a request that names another request than the one at its id:
`record(kind, vault_id, user=, symbol=, amount=)` says what "the vault" holds at an id (a
deposit's USDT, a redeem's shares); a submission naming anything else raises
SettlementRejected (DepositMismatch / RedeemMismatch), and an id with no record is accepted
as named (tests that do not care). `submit_batch` mirrors settleDeposits / settleRedeems:
an id already settled is skipped (returned as it stands), a mismatched element refuses the
whole batch before anything is recorded.

Select it with `settings.CHAIN_SETTLEMENT_SENDER = "tests.fakes.settlement.FakeSettlementSender"`
and reach the instance the code under test uses with `chain.settlement.settlement_sender()`.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from hashlib import sha256
from typing import Any

import pytest

from chain.exceptions import SettlementRejected
from chain.models import SettlementKind, SettlementTx
from chain.settlement import (
    DepositSettlement,
    RedeemSettlement,
    RefundPayment,
    Settlement,
    SettlementRequest,
    SettlementState,
)


def _error_name(refusal: str) -> str:
    """The vault error's name at the head of a refusal ("DepositMismatch(7, ...)")."""
    return refusal.split("(", 1)[0]


class Outcome(StrEnum):
    CONFIRM = "confirm"
    PEND = "pend"
    REVERT = "revert"
    REFUSE = "refuse"


@dataclass
class _Entry:
    request: SettlementRequest
    settlement: Settlement
    outcome: Outcome


class FakeSettlementSender:
    def __init__(self, *, reserve_usdt_units: int = 10**15) -> None:
        self.reserve = reserve_usdt_units
        self.default = Outcome.CONFIRM
        self.submissions: list[SettlementRequest] = []  # every accepted request, in order
        self.paid: dict[tuple[SettlementKind, int], SettlementRequest] = {}  # what "the vault" paid
        self._entries: dict[tuple[SettlementKind, int], _Entry] = {}
        self._scripts: dict[tuple[SettlementKind, int], deque[Outcome]] = defaultdict(deque)
        # What "the vault" holds per (deposit|redeem, id): (user, symbol, amount).
        self.records: dict[tuple[SettlementKind, int], tuple[str, str, int]] = {}
        self.batches: list[list[SettlementRequest]] = []  # every batch sent, in order
        self.checks: list[tuple[SettlementKind, int]] = []  # every per-id `check`, in order
        # Every `check_many` call: the ids it asked for (the real sender reads one receipt
        # per transaction they ride in).
        self.check_many_calls: list[tuple[SettlementKind, tuple[int, ...]]] = []

    def record(self, kind: str, vault_id: int, *, user: str, symbol: str, amount: int) -> None:
        """What the vault holds at (kind, id): a settlement naming anything else is refused."""
        self.records[(SettlementKind(kind), vault_id)] = (user.lower(), symbol, amount)

    def forget(self, kind: str, vault_id: int) -> None:
        """The request at (kind, id) is gone (a reorg removed it): settling it is refused."""
        self.records[(SettlementKind(kind), vault_id)] = ("", "", 0)

    def _refusal(self, request: SettlementRequest) -> str | None:
        match request:
            case DepositSettlement():
                key, named = (
                    (SettlementKind.DEPOSIT, request.deposit_id),
                    (request.deposit_usdt_units),
                )
            case RedeemSettlement():
                key, named = (SettlementKind.REDEEM, request.redeem_id), request.redeem_token_units
            case RefundPayment():
                key, named = (
                    (SettlementKind.DEPOSIT, request.deposit_id),
                    (request.deposit_usdt_units),
                )
        held = self.records.get(key)
        if held is None:
            return None
        if not held[0]:
            return f"Unknown{'Redeem' if key[0] == SettlementKind.REDEEM else 'Deposit'}"
        if held != (request.user.lower(), request.symbol, named):
            name = "RedeemMismatch" if key[0] == SettlementKind.REDEEM else "DepositMismatch"
            return f"{name}{(key[1], request.user, request.symbol, named, *held)}"
        return None

    # --- scripting ------------------------------------------------------------------------

    def script(self, kind: str, vault_id: int, *outcomes: Outcome) -> None:
        """What the next submissions (and resubmissions) of (kind, vault id) meet, in order;
        once they are used up, `default` applies."""
        self._scripts[(SettlementKind(kind), vault_id)].extend(outcomes)

    def confirm(self, kind: str, vault_id: int) -> None:
        """Let a pending settlement through: the next check confirms it."""
        self._entry(kind, vault_id).outcome = Outcome.CONFIRM

    def _next_outcome(self, key: tuple[SettlementKind, int]) -> Outcome:
        queue = self._scripts[key]
        return queue.popleft() if queue else self.default

    def _entry(self, kind: str, vault_id: int) -> _Entry:
        try:
            return self._entries[(SettlementKind(kind), vault_id)]
        except KeyError:
            raise SettlementTx.DoesNotExist(f"no settlement {kind} {vault_id}") from None

    def _set_state(self, entry: _Entry, state: SettlementState) -> None:
        entry.settlement = replace(entry.settlement, state=state)

    # --- the SettlementSender protocol ----------------------------------------------------

    def submit(self, request: SettlementRequest, *, actor: str) -> Settlement:
        key = (request.kind, request.vault_id)
        existing = self._entries.get(key)
        if existing is not None:
            if replace(existing.request, order_id=request.order_id) != request:
                raise ValueError(
                    f"settlement {request.kind} {request.vault_id} exists with other amounts: "
                    f"{existing.request} != {request}"
                )
            return existing.settlement
        refusal = self._refusal(request)
        if refusal is not None:
            raise SettlementRejected(
                f"{request.vault_call()[0]}({request.vault_id}): {refusal}",
                error_name=_error_name(refusal),
            )
        outcome = self._next_outcome(key)
        if outcome == Outcome.REFUSE:
            raise SettlementRejected(f"{request.vault_call()[0]}({request.vault_id}): refused")
        tx_hash = "0x" + sha256(f"{request.kind}:{request.vault_id}".encode()).hexdigest()
        settlement = Settlement(
            kind=request.kind,
            vault_id=request.vault_id,
            tx_hash=tx_hash,
            state=SettlementState.PENDING,
        )
        self._entries[key] = _Entry(request=request, settlement=settlement, outcome=outcome)
        self.submissions.append(request)
        return settlement

    def submit_batch(
        self, requests: Sequence[DepositSettlement | RedeemSettlement], *, actor: str
    ) -> list[Settlement]:
        kinds = {r.kind for r in requests}
        if kinds - {SettlementKind.DEPOSIT, SettlementKind.REDEEM}:
            raise ValueError(f"a batch settles deposits and redeems only: {kinds}")
        for request in requests:  # the whole batch is refused before anything is recorded
            existing = self._entries.get((request.kind, request.vault_id))
            if existing is not None:
                if replace(existing.request, order_id=request.order_id) != request:
                    raise ValueError(f"settlement {request.kind} {request.vault_id} differs")
                continue
            refusal = self._refusal(request)
            if refusal is not None:
                raise SettlementRejected(
                    f"batch refused at {request.vault_id}: {refusal}",
                    error_name=_error_name(refusal),
                )
        fresh = [r for r in requests if (r.kind, r.vault_id) not in self._entries]
        self.batches.append(list(requests))
        for request in requests:
            self.submit(request, actor=actor)
        # The ids sent now ride in one transaction, as on chain: one hash for them all.
        tx_hash = "0x" + sha256(repr([(r.kind, r.vault_id) for r in fresh]).encode()).hexdigest()
        for request in fresh:
            entry = self._entries[(request.kind, request.vault_id)]
            entry.settlement = replace(entry.settlement, tx_hash=tx_hash)
        return [self._entries[(r.kind, r.vault_id)].settlement for r in requests]

    def check(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        self.checks.append((SettlementKind(kind), vault_id))
        return self._check(kind, vault_id)

    def check_many(
        self, *, kind: str, vault_ids: Sequence[int], actor: str
    ) -> dict[int, Settlement]:
        self.check_many_calls.append((SettlementKind(kind), tuple(vault_ids)))
        out = {}
        for vault_id in vault_ids:
            if (SettlementKind(kind), vault_id) in self._entries:
                self._check(kind, vault_id)
                out[vault_id] = self._entries[(SettlementKind(kind), vault_id)].settlement
        return out

    def _check(self, kind: str, vault_id: int) -> SettlementState:
        entry = self._entry(kind, vault_id)
        if entry.settlement.state == SettlementState.PENDING:
            if entry.outcome == Outcome.CONFIRM:
                key = (SettlementKind(kind), vault_id)
                if key in self.paid:
                    raise AssertionError(f"{key} paid twice")  # the vault never would
                self.paid[key] = entry.request
                self._set_state(entry, SettlementState.CONFIRMED)
            elif entry.outcome == Outcome.REVERT:
                self._set_state(entry, SettlementState.REVERTED)
        return entry.settlement.state

    def resubmit(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        entry = self._entry(kind, vault_id)
        if entry.settlement.state != SettlementState.REVERTED:
            return (
                SettlementState.CONFIRMED
                if entry.settlement.state == SettlementState.CONFIRMED
                else SettlementState.PENDING
            )
        outcome = self._next_outcome((SettlementKind(kind), vault_id))
        if outcome == Outcome.REFUSE:
            return SettlementState.REVERTED  # it would still revert: nothing is sent
        entry.outcome = outcome
        self._set_state(entry, SettlementState.PENDING)
        return SettlementState.PENDING

    def settlement(self, *, kind: str, vault_id: int) -> Settlement | None:
        entry = self._entries.get((SettlementKind(kind), vault_id))
        return None if entry is None else entry.settlement

    def reserve_usdt_units(self) -> int:
        return self.reserve


@pytest.fixture
def fake_sender(settings: Any) -> FakeSettlementSender:
    """This process's settlement sender is a fresh FakeSettlementSender for the test (the
    reserve floor at zero)."""
    from decimal import Decimal

    from chain.settlement import settlement_sender

    settings.CHAIN_SETTLEMENT_SENDER = "tests.fakes.settlement.FakeSettlementSender"
    settings.RESERVE_FLOOR_USDT = Decimal(0)
    sender = settlement_sender()
    assert isinstance(sender, FakeSettlementSender)
    return sender
