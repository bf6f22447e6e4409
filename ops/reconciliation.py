"""Reconciliation: the database, the chain and the broker must tell the same story.

`reconcile()` reads all three and returns every discrepancy it finds; it writes nothing.
What it compares (base units on chain, Decimals at the broker):

- **database, per order** (invariant 3): a deposit's USDT in = cost + fees + refund and tokens
  minted = shares bought; a redeem's tokens in = tokens for shares sold + tokens returned
  and payout = proceeds - fees; a terminal order's status is its outcome; no open order is
  older than the stuck threshold (invariant 2).
- **database and chain** (invariants 1, 4): every vault `Deposit` / `Redeem` log up to the
  listener's checkpoint has exactly one order with the same user, symbol, amount and tx;
  every order has its log; every `DepositSettled` / `RedeemSettled` log matches the order's
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
- **audit**: the hash chain is unbroken.

Reads are made consistent by taking the chain head first and reading logs only up to it,
and by treating orders still in flight (open and younger than the stuck threshold) as
not-yet-settled rather than wrong.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from chain import selectors as chain_selectors
from chain.client import RawLog, UndecodableLog, chain_client, decode_log, event_topic
from chain.deployment import contract_set
from chain.models import ChainCursor, SettlementStatus, SettlementTx
from core.audit import audit_verify
from core.models import AuditLog
from core.money import shares_to_token_units
from orders.models import TERMINAL_STATUSES, Order, OrderType
from trading import pricing
from trading import services as broker
from trading.broker import BrokerOrder
from trading.exceptions import TradingError

logger = logging.getLogger(__name__)

_HEAD_READ_ATTEMPTS = 5
_SETTLED_EVENTS = {"DepositSettled": OrderType.BUY.value, "RedeemSettled": OrderType.SELL.value}
# The broker reports prices and cash as protobuf doubles: compare money to the cent.
_CASH_TOLERANCE = Decimal("0.01")


@dataclass(frozen=True)
class Discrepancy:
    where: str  # db | db/chain | chain | db/broker | broker | audit
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


@dataclass(frozen=True)
class _ChainView:
    head: int
    checkpoint: int
    deposits: dict[int, dict[str, Any]]
    redeems: dict[int, dict[str, Any]]
    settled: dict[tuple[str, int], list[dict[str, Any]]]
    cancels: list[dict[str, Any]]
    withdrawn: int
    supplies: dict[str, int]
    vault_usdt: int
    usdt_in: int
    usdt_out: int


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
    chain = _read_chain()
    orders = list(Order.objects.filter(chain_id=settings.CHAIN_ID).order_by("pk"))
    now = timezone.now()
    in_flight = {
        o.pk
        for o in orders
        if o.status not in TERMINAL_STATUSES and now - o.created_at < timedelta(seconds=stuck_after)
    }
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
    _check_orders(result, orders, in_flight, stuck_after)
    _check_orders_against_chain(result, orders, chain, in_flight)
    _check_chain_totals(result, orders, chain)
    if check_broker:
        try:
            _check_broker(result, orders, in_flight, opening_cash, opening_positions or {})
        except TradingError as exc:
            result.add("broker", "session", f"could not read the broker: {exc}")
    else:
        result.notes.append("broker not checked (--skip-broker)")
    checked, broken = audit_verify()
    result.facts["audit_entries"] = checked
    if broken is not None:
        result.add("audit", f"entry {broken.seq}", broken.reason)
    return result


# --- reading the chain -------------------------------------------------------------------


def _read_chain() -> _ChainView:
    client = chain_client()
    contracts = contract_set()
    for _ in range(_HEAD_READ_ATTEMPTS):
        head = client.block_number()
        supplies = chain_selectors.token_total_supplies()
        vault_usdt = chain_selectors.vault_usdt_balance()
        if client.block_number() == head:
            break
    start = max(contracts.deploy_block, 0)
    cursor = ChainCursor.objects.filter(
        chain_id=settings.CHAIN_ID, address__iexact=contracts.vault
    ).first()
    checkpoint = cursor.block_number if cursor else -1

    deposits: dict[int, dict[str, Any]] = {}
    redeems: dict[int, dict[str, Any]] = {}
    settled: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    cancels: list[dict[str, Any]] = []
    withdrawn = 0
    for raw in _logs(address=contracts.vault, start=start, end=head):
        try:
            event = decode_log(raw)
        except UndecodableLog:
            continue
        row = dict(event.args, tx_hash=raw.tx_hash, block=raw.block_number)
        if event.name == "Deposit":
            deposits[int(row["depositId"])] = row
        elif event.name == "Redeem":
            redeems[int(row["redeemId"])] = row
        elif event.name in _SETTLED_EVENTS:
            key = "depositId" if event.name == "DepositSettled" else "redeemId"
            settled[(_SETTLED_EVENTS[event.name], int(row[key]))].append(row)
        elif event.name == "CancelRequested":
            cancels.append(row)
        elif event.name == "ReserveWithdrawn":
            withdrawn += int(row["amount"])

    usdt = chain_selectors.usdt_address()
    transfer = event_topic("Transfer", contract="MockUSDT")
    vault_topic = "0x" + contracts.vault[2:].lower().rjust(64, "0")
    usdt_in = sum(
        int(decode_log(r, "MockUSDT").args["value"])
        for r in _logs(address=usdt, start=start, end=head, topics=[transfer, None, vault_topic])
    )
    usdt_out = sum(
        int(decode_log(r, "MockUSDT").args["value"])
        for r in _logs(address=usdt, start=start, end=head, topics=[transfer, vault_topic])
    )
    return _ChainView(
        head=head,
        checkpoint=checkpoint,
        deposits=deposits,
        redeems=redeems,
        settled=dict(settled),
        cancels=cancels,
        withdrawn=withdrawn,
        supplies=supplies,
        vault_usdt=vault_usdt,
        usdt_in=usdt_in,
        usdt_out=usdt_out,
    )


def _logs(*, address: str, start: int, end: int, topics: list | None = None) -> list[RawLog]:
    client = chain_client()
    chunk = max(settings.CHAIN_BACKFILL_CHUNK_BLOCKS, 1)
    logs: list[RawLog] = []
    for lo in range(start, end + 1, chunk):
        hi = min(lo + chunk - 1, end)
        logs.extend(client.get_logs(from_block=lo, to_block=hi, address=address, topics=topics))
    return [log for log in logs if not log.removed]


# --- the database on its own -------------------------------------------------------------


def _manual_refund(order: Order) -> int:
    """USDT refunded by operators before settlement (the refunds app), when the schema has
    it: paid by the vault apart from the deposit's settlement."""
    return int(getattr(order, "manual_refund_usdt", 0) or 0)


def _manual_refunds_paid() -> int:
    """USDT the vault paid for manual refunds, by the settlement records of kind refund."""
    return sum(
        int(amount)
        for amount in SettlementTx.objects.filter(
            chain_id=settings.CHAIN_ID, kind="refund", status=SettlementStatus.CONFIRMED
        ).values_list("usdt_amount", flat=True)
    )


def _label(order: Order) -> str:
    kind = "deposit" if order.order_type == OrderType.BUY else "redeem"
    return f"order {order.pk} ({kind} {int(order.onchain_id)}, {order.symbol})"


def _check_orders(
    result: Reconciliation, orders: list[Order], in_flight: set[int], stuck_after: float
) -> None:
    for o in orders:
        if o.status in TERMINAL_STATUSES and o.outcome != o.status:
            result.add("db", _label(o), f"status {o.status} but outcome {o.outcome or '-'}")
        if o.status not in TERMINAL_STATUSES and o.pk not in in_flight:
            result.add("db", _label(o), f"still {o.status} after {stuck_after:.0f}s (stuck order)")
        if not o.outcome:
            continue
        sold_or_bought = shares_to_token_units(o.filled_qty)
        if o.order_type == OrderType.BUY:
            manual = _manual_refund(o)
            charged = o.cost_usdt + o.fees_usdt + o.refund_usdt + manual
            if charged != o.usdt_amount:
                result.add(
                    "db",
                    _label(o),
                    f"USDT in {o.usdt_amount} != cost {o.cost_usdt} + fees {o.fees_usdt} "
                    f"+ refund {o.refund_usdt}"
                    + (f" + manual refunds {manual}" if manual else "")
                    + f" (= {charged})",
                )
            if o.tokens_minted != sold_or_bought:
                result.add(
                    "db",
                    _label(o),
                    f"tokens minted {o.tokens_minted} != shares bought {o.filled_qty}",
                )
        else:
            if sold_or_bought + o.tokens_returned != o.token_amount:
                result.add(
                    "db",
                    _label(o),
                    f"tokens in {o.token_amount} != sold {sold_or_bought} + returned "
                    f"{o.tokens_returned}",
                )
            if o.payout_usdt != o.cost_usdt - o.fees_usdt:
                result.add(
                    "db",
                    _label(o),
                    f"payout {o.payout_usdt} != proceeds {o.cost_usdt} - fees {o.fees_usdt}",
                )


# --- the database against the chain ------------------------------------------------------


def _settlement_amounts(o: Order) -> tuple[int, int]:
    """(USDT, tokens) the vault must have paid for this order's settlement."""
    if o.order_type == OrderType.BUY:
        return o.refund_usdt, o.tokens_minted
    return o.payout_usdt, o.tokens_returned


def _check_orders_against_chain(
    result: Reconciliation, orders: list[Order], chain: _ChainView, in_flight: set[int]
) -> None:
    by_key = {(o.order_type, int(o.onchain_id)): o for o in orders}
    for kind, events, amount_field, order_amount in (
        (OrderType.BUY, chain.deposits, "usdtAmount", "usdt_amount"),
        (OrderType.SELL, chain.redeems, "shares", "token_amount"),
    ):
        name = "Deposit" if kind == OrderType.BUY else "Redeem"
        for onchain_id, ev in sorted(events.items()):
            order = by_key.get((kind, onchain_id))
            if order is None:
                if ev["block"] <= chain.checkpoint:
                    result.add(
                        "db/chain",
                        f"{name} {onchain_id} (tx {ev['tx_hash']})",
                        "vault event has no order",
                    )
                continue
            mismatches = []
            if order.user_address.lower() != ev["user"].lower():
                mismatches.append(f"user {order.user_address} != {ev['user']}")
            if getattr(order, order_amount) != int(ev[amount_field]):
                mismatches.append(
                    f"{order_amount} {getattr(order, order_amount)} != {int(ev[amount_field])} "
                    "on chain"
                )
            if order.chain_tx_hash.lower() != ev["tx_hash"].lower():
                mismatches.append(f"tx {order.chain_tx_hash} != {ev['tx_hash']}")
            for m in mismatches:
                result.add("db/chain", _label(order), m)

    settlements = {
        (s.kind, int(s.onchain_id)): s
        for s in SettlementTx.objects.filter(
            chain_id=settings.CHAIN_ID, kind__in=("deposit", "redeem")
        )
    }
    for o in orders:
        events = chain.deposits if o.order_type == OrderType.BUY else chain.redeems
        if int(o.onchain_id) not in events:
            result.add("db/chain", _label(o), "no such vault event on chain")
        paid = chain.settled.get((o.order_type, int(o.onchain_id)), [])
        if len(paid) > 1:
            result.add("chain", _label(o), f"settled {len(paid)} times on chain")
        if not paid:
            if o.status in TERMINAL_STATUSES:
                result.add("db/chain", _label(o), f"{o.status} in the database, unsettled on chain")
            continue
        if not o.outcome:
            result.add("db/chain", _label(o), "settled on chain but never finalized")
            continue
        ev = paid[0]
        usdt, tokens = _settlement_amounts(o)
        if o.order_type == OrderType.BUY:
            chain_usdt, chain_tokens = int(ev["usdtRefunded"]), int(ev["sharesMinted"])
            words = ("refund", "tokens minted")
        else:
            chain_usdt, chain_tokens = int(ev["usdtPaid"]), int(ev["sharesReturned"])
            words = ("payout", "tokens returned")
        if usdt != chain_usdt:
            result.add("db/chain", _label(o), f"{words[0]} {usdt} != {chain_usdt} on chain")
        if tokens != chain_tokens:
            result.add("db/chain", _label(o), f"{words[1]} {tokens} != {chain_tokens} on chain")
        kind = "deposit" if o.order_type == OrderType.BUY else "redeem"
        record = settlements.get((kind, int(o.onchain_id)))
        if record is None:
            result.add("db", _label(o), "settled on chain but no settlement record")
        elif (int(record.usdt_amount), int(record.token_amount)) != (usdt, tokens) and not (
            record.already_settled
        ):
            result.add(
                "db",
                _label(o),
                f"settlement record ({int(record.usdt_amount)}, {int(record.token_amount)}) "
                f"!= order ({usdt}, {tokens})",
            )
        elif o.status in TERMINAL_STATUSES and record.status != SettlementStatus.CONFIRMED:
            result.add("db", _label(o), f"terminal but settlement record is {record.status}")

    recorded_late = set(
        AuditLog.objects.filter(action="order.cancel_after_terminal").values_list(
            "after__tx_hash", flat=True
        )
    )
    for ev in chain.cancels:
        if ev["block"] > chain.checkpoint:
            continue
        order = by_key.get((OrderType.BUY, int(ev["depositId"])))
        if order is None:
            continue  # the Deposit check above already names it
        if order.cancel_requested_at is None and ev["tx_hash"] not in recorded_late:
            result.add("db/chain", _label(order), f"CancelRequested {ev['tx_hash']} not recorded")


def _check_chain_totals(result: Reconciliation, orders: list[Order], chain: _ChainView) -> None:
    minted: Counter[str] = Counter()
    burned: Counter[str] = Counter()
    refunds = payouts = deposits = 0
    for o in orders:
        settled_on_chain = (o.order_type, int(o.onchain_id)) in chain.settled and o.outcome
        if o.order_type == OrderType.BUY:
            deposits += o.usdt_amount
            if settled_on_chain:
                minted[o.symbol] += o.tokens_minted
                refunds += o.refund_usdt
        else:
            burned[o.symbol] += o.token_amount
            if settled_on_chain:
                minted[o.symbol] += o.tokens_returned
                payouts += o.payout_usdt
    for symbol, supply in sorted(chain.supplies.items()):
        expected = minted[symbol] - burned[symbol]
        if supply != expected:
            result.add(
                "chain",
                f"token {symbol}",
                f"total supply {supply} != {expected} (minted by settlements "
                f"{minted[symbol]} - burned by redeems {burned[symbol]}): "
                f"{supply - expected:+d} units unexplained",
            )
    if chain.vault_usdt != chain.usdt_in - chain.usdt_out:
        result.add(
            "chain",
            "vault USDT",
            f"balance {chain.vault_usdt} != transfers in {chain.usdt_in} - out {chain.usdt_out}",
        )
    manual = _manual_refunds_paid()
    expected_out = refunds + payouts + manual + chain.withdrawn
    if chain.usdt_out != expected_out:
        result.add(
            "db/chain",
            "vault USDT",
            f"paid out {chain.usdt_out} on chain != refunds {refunds} + payouts {payouts} "
            f"+ manual refunds {manual} + reserve withdrawn {chain.withdrawn} "
            f"(= {expected_out}) in the database",
        )
    chain_deposits = sum(int(e["usdtAmount"]) for e in chain.deposits.values())
    if deposits != chain_deposits and all(
        e["block"] <= chain.checkpoint for e in chain.deposits.values()
    ):
        result.add(
            "db/chain",
            "vault USDT",
            f"deposits {deposits} in the database != {chain_deposits} on chain",
        )
    result.facts.update(
        {
            "usdt_deposited": chain_deposits,
            "usdt_refunded": refunds,
            "usdt_paid_out": payouts,
            "usdt_refunded_manually": manual,
            "usdt_reserve_in": chain.usdt_in - chain_deposits,
        }
    )


# --- the database against the broker -----------------------------------------------------


def _broker_orders() -> list[BrokerOrder]:
    """Every order of the account at the broker today (OpenD's cache, not rate limited)."""
    return broker.broker_list_orders()


def _check_broker(
    result: Reconciliation,
    orders: list[Order],
    in_flight: set[int],
    opening_cash: dict[str, Decimal] | None,
    opening_positions: dict[str, Decimal],
) -> None:
    at_broker: dict[str, list[BrokerOrder]] = defaultdict(list)
    listing = _broker_orders()
    for b in listing:
        at_broker[b.client_id].append(b)
    known = {o.client_id for o in orders}
    for client_id, found in sorted(at_broker.items()):
        if client_id not in known:
            for b in found:
                result.add(
                    "broker",
                    f"broker order {b.broker_order_id}",
                    f"{b.side} {b.qty} {b.code} remark {client_id or '-'!r} is not a Bronco order",
                )
    for o in orders:
        found = at_broker.get(o.client_id, [])
        if len(found) > 1:
            result.add(
                "db/broker",
                _label(o),
                f"{len(found)} broker orders carry its client id: "
                + ", ".join(b.broker_order_id for b in found),
            )
        if not o.futu_order_id:
            if found and o.pk not in in_flight:
                result.add(
                    "db/broker",
                    _label(o),
                    f"never placed in the database, yet broker order {found[0].broker_order_id}",
                )
            continue
        if not found:
            result.add("db/broker", _label(o), f"broker order {o.futu_order_id} not at the broker")
            continue
        b = found[0]
        problems = []
        if b.broker_order_id != o.futu_order_id:
            problems.append(f"broker id {b.broker_order_id} != {o.futu_order_id}")
        if b.code != o.stock_code or b.side != o.order_type:
            problems.append(f"{b.side} {b.code} != {o.order_type} {o.stock_code}")
        if o.qty is not None and b.qty != o.qty:
            problems.append(f"quantity {b.qty} != {o.qty}")
        if o.outcome:
            if not b.is_final:
                problems.append(f"finalized but the broker order is {b.raw_status}")
            if b.filled_qty != o.filled_qty:
                problems.append(f"filled {o.filled_qty} != {b.filled_qty} at the broker")
            if (b.avg_fill_price or Decimal(0)).quantize(Decimal("0.000001")) != (
                o.avg_fill_price or Decimal(0)
            ).quantize(Decimal("0.000001")):
                problems.append(
                    f"average price {o.avg_fill_price} != {b.avg_fill_price} at the broker"
                )
        for p in problems:
            result.add("db/broker", _label(o), p)

    net: Counter[str] = Counter()
    cash: dict[str, Decimal] = defaultdict(Decimal)
    for b in listing:
        if b.client_id not in known or b.filled_qty <= 0:
            continue
        value = b.filled_qty * (b.avg_fill_price or Decimal(0))
        fee = pricing.fee_for(b.code, b.filled_qty, b.avg_fill_price or Decimal(0))
        currency = pricing.currency_of(b.code)
        if b.side == "BUY":
            net[b.code] += b.filled_qty
            cash[currency] -= value + fee
        else:
            net[b.code] -= b.filled_qty
            cash[currency] += value - fee
    positions = {p.code: p.qty for p in broker.broker_positions()}
    for code in sorted(set(positions) | set(net) | set(opening_positions)):
        expected = opening_positions.get(code, Decimal(0)) + net[code]
        held = positions.get(code, Decimal(0))
        if held != expected:
            result.add(
                "broker",
                f"position {code}",
                f"holds {held}, Bronco's fills account for {expected} ({held - expected:+} "
                "unexplained)",
            )
    result.facts["broker_orders"] = len(listing)
    result.facts["broker_positions"] = {k: str(v) for k, v in sorted(positions.items()) if v}
    if opening_cash is None:
        result.notes.append("broker cash not checked: no opening cash given (--opening-cash)")
        return
    funds = broker.broker_funds()
    for currency, opening in sorted(opening_cash.items()):
        held = funds.cash_by_currency.get(currency)
        if held is None:
            result.notes.append(f"broker reports no {currency} cash; not checked")
            continue
        expected = opening + cash[currency]
        if abs(held - expected) > _CASH_TOLERANCE:
            result.add(
                "broker",
                f"cash {currency}",
                f"holds {held}, opening {opening} and Bronco's fills make {expected} "
                f"({held - expected:+} unexplained)",
            )
    result.facts["broker_cash"] = {k: str(v) for k, v in sorted(funds.cash_by_currency.items())}


def parse_amounts(text: str) -> dict[str, Decimal]:
    """'USD=10000000,HKD=50000000' -> {'USD': Decimal(...), ...}."""
    amounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=AMOUNT, got {item!r}")
        amounts[name.strip()] = Decimal(value.strip())
    return amounts
