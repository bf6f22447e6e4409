"""Reconciliation: the database, the chain and the broker must tell the same story.

`reconcile()` reads all three and returns every discrepancy it finds; it writes nothing.
What it compares (base units on chain, Decimals at the broker):

- **database, per order** (invariant 3): a deposit's USDT in = cost + fees + refund and tokens
  minted = shares bought; a redeem's tokens in = tokens for shares sold + tokens returned
  and payout = proceeds - fees; a terminal order's status is its outcome; no open order is
  older than the stuck threshold (invariant 2).
- **database and chain** (invariants 1, 4): every vault `Deposit` / `Redeem` log up to the
  listener's checkpoint has exactly one order with the same user, symbol, amount and tx;
  every order has its log (but one closed because its request vanished in a reorg, which
  must have neither its log nor a settlement, and is left out of the totals below); every
  `DepositSettled` / `RedeemSettled` log matches the order's
  settlement amounts and its SettlementTx record; every terminal order is settled on chain;
  every `CancelRequested` log was recorded.
- **chain totals**: each stock token's total supply = tokens minted by settlements +
  tokens returned - tokens burned by redeems, from the database's orders (a token minted
  outside Bronco shows here); the vault's USDT: what left it = refunds + payouts + reserve
  withdrawals, what came in by deposit = the orders' USDT, and its balance = in - out.
- **database and broker**: every placed order is at the broker under its client id
  (remark) with the same id, code, side and quantity, and, once finalized, the same fill;
  no broker order that Bronco does not know; positions = the net fills of Bronco's orders;
  cash = opening cash - buys - fees + sells (when the opening cash is given).
- **users' terms and fees** (`terms`): no order traded outside its price bound or after its
  expiry; every fee is the published schedule with its rounding, and at most the vault's
  `quoteFee` of the order's amount.
- **audit**: the hash chain is unbroken.

Reads are made consistent by taking the chain head first and reading logs only up to it,
and by treating orders still in flight (open and younger than the stuck threshold) as
not-yet-settled rather than wrong.

Each side's reads and checks sit in their own module: `database` (the orders on their own),
`chain` (vault logs, supplies and USDT against the orders), `broker` (orders, positions and
cash at the broker); this module runs them in order and holds the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings

from core.audit import audit_verify
from ops.reconciliation import broker as broker_side
from ops.reconciliation import chain as chain_side
from ops.reconciliation import database as database_side
from ops.reconciliation import terms as terms_side
from trading.exceptions import TradingError


@dataclass(frozen=True)
class Discrepancy:
    where: str  # db | db/chain | chain | terms | db/broker | broker | audit
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.where}] {self.subject}: {self.detail}"


@dataclass
class Reconciliation:
    discrepancies: list[Discrepancy] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def add(self, where: str, subject: str, detail: str) -> None:
        self.discrepancies.append(Discrepancy(where, subject, detail))


def reconcile(
    *,
    opening_cash: dict[str, Decimal] | None = None,
    opening_positions: dict[str, Decimal] | None = None,
    stuck_after_seconds: float | None = None,
    check_broker: bool = True,
) -> Reconciliation:
    """Compare the database, the chain and the broker; never writes. `opening_cash`
    (currency -> amount at the broker before Bronco's first order) enables the cash check."""
    result = Reconciliation()
    stuck_after = (
        stuck_after_seconds
        if stuck_after_seconds is not None
        else settings.ORDER_DEADLINE_SECONDS + 120
    )
    chain = chain_side.read_chain()
    orders, in_flight = database_side.read_orders(stuck_after=stuck_after)
    result.facts.update(
        {
            "orders": len(orders),
            "in_flight": len(in_flight),
            "chain_head": chain.head,
            "listener_checkpoint": chain.checkpoint,
            "deposit_events": len(chain.deposits),
            "redeem_events": len(chain.redeems),
            "settlement_events": sum(len(v) for v in chain.settled.values()),
            "vault_usdt": chain.vault_usdt,
            "token_supplies": dict(chain.supplies),
        }
    )
    vanished = database_side.vanished_order_ids()
    database_side.check_orders(result, orders, in_flight, stuck_after, vanished)
    chain_side.check_orders_against_chain(result, orders, chain, in_flight, vanished)
    chain_side.check_chain_totals(result, orders, chain, vanished)
    terms_side.check_terms_and_fees(result, orders)
    if check_broker:
        try:
            broker_side.check_broker(
                result, orders, in_flight, opening_cash, opening_positions or {}
            )
        except TradingError as exc:
            result.add("broker", "session", f"could not read the broker: {exc}")
    else:
        result.notes.append("broker not checked (--skip-broker)")
    checked, broken = audit_verify()
    result.facts["audit_entries"] = checked
    if broken is not None:
        result.add("audit", f"entry {broken.seq}", broken.reason)
    return result


def parse_amounts(text: str) -> dict[str, Decimal]:
    """'USD=10000000,HKD=50000000' -> {'USD': Decimal(...), ...}."""
    amounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=AMOUNT, got {item!r}")
        amounts[name.strip()] = Decimal(value.strip())
    return amounts
