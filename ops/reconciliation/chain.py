"""Reconciliation, the chain side: what the vault's logs, the token supplies and the USDT
transfers say, checked against the orders and settlement records (invariants 1 and 4) and
against themselves (the vault's USDT balance, each token's supply)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from chain import selectors as chain_selectors
from chain.client import RawLog, UndecodableLog, chain_client, decode_log, event_topic
from chain.deployment import contract_set
from chain.events import (
    CancelRequested,
    Deposit,
    DepositFilled,
    DepositSettled,
    Redeem,
    RedeemFilled,
    RedeemSettled,
    ReserveWithdrawn,
    Transfer,
)
from chain.models import ChainCursor, SettlementStatus, SettlementTx
from core.models import AuditLog
from ops.reconciliation.database import (
    manual_refunds_paid,
    order_label,
    settlement_amounts,
    vanished_order_ids,
)
from orders.models import TERMINAL_STATUSES, Order, OrderType

if TYPE_CHECKING:
    from ops.reconciliation import Reconciliation

_HEAD_READ_ATTEMPTS = 5
_ORDER_EVENTS = ("Deposit", "Redeem")


@dataclass(frozen=True)
class ChainView:
    """The chain up to `head`, read once. `unreadable` holds the vault's Deposit / Redeem logs
    that did not decode (the listener quarantined them: they have no order)."""

    head: int
    checkpoint: int
    deposits: dict[int, Deposit]
    redeems: dict[int, Redeem]
    settled: dict[tuple[str, int], list[DepositSettled | RedeemSettled]]
    filled: dict[tuple[str, int], list[DepositFilled | RedeemFilled]]
    cancels: list[CancelRequested]
    unreadable: list[tuple[RawLog, UndecodableLog]]
    withdrawn: int
    supplies: dict[str, int]
    vault_usdt: int
    usdt_in: int
    usdt_out: int
    usdt_in_other: tuple[tuple[RawLog, int], ...] = ()
    """Transfers into the vault that no Deposit explains: every transfer in of a transaction
    with more of them than deposit ids (reserve fundings, and what should not be there):
    (the Transfer log, USDT base units) each."""


def read_chain() -> ChainView:
    """Consistent reads: the head is taken first (and the supplies and balance re-read until
    the head did not move under them), and logs are read only up to it."""
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

    deposits: dict[int, Deposit] = {}
    redeems: dict[int, Redeem] = {}
    settled: dict[tuple[str, int], list[DepositSettled | RedeemSettled]] = defaultdict(list)
    filled: dict[tuple[str, int], list[DepositFilled | RedeemFilled]] = defaultdict(list)
    cancels: list[CancelRequested] = []
    unreadable: list[tuple[RawLog, UndecodableLog]] = []
    withdrawn = 0
    deposit_ids_by_tx: dict[str, set[int]] = defaultdict(set)
    for raw in _logs(address=contracts.vault, start=start, end=head):
        try:
            event = decode_log(raw)
        except UndecodableLog as exc:
            if exc.event in _ORDER_EVENTS:
                unreadable.append((raw, exc))
            continue
        match event:
            case Deposit():
                deposits[event.deposit_id] = event
                deposit_ids_by_tx[raw.tx_hash.lower()].add(event.deposit_id)
            case Redeem():
                redeems[event.redeem_id] = event
            case DepositSettled():
                settled[(OrderType.BUY.value, event.deposit_id)].append(event)
            case RedeemSettled():
                settled[(OrderType.SELL.value, event.redeem_id)].append(event)
            case DepositFilled():
                filled[(OrderType.BUY.value, event.deposit_id)].append(event)
            case RedeemFilled():
                filled[(OrderType.SELL.value, event.redeem_id)].append(event)
            case CancelRequested():
                cancels.append(event)
            case ReserveWithdrawn():
                withdrawn += event.usdt_units

    usdt = chain_selectors.usdt_address()
    transfer = event_topic("Transfer", contract="MockUSDT")
    vault_topic = "0x" + contracts.vault[2:].lower().rjust(64, "0")
    transfers_in = [
        (r, _transfer(r).units)
        for r in _logs(address=usdt, start=start, end=head, topics=[transfer, None, vault_topic])
    ]
    usdt_in = sum(units for _, units in transfers_in)
    usdt_out = sum(
        _transfer(r).units
        for r in _logs(address=usdt, start=start, end=head, topics=[transfer, vault_topic])
    )
    return ChainView(
        head=head,
        checkpoint=checkpoint,
        deposits=deposits,
        redeems=redeems,
        settled=dict(settled),
        filled=dict(filled),
        cancels=cancels,
        unreadable=unreadable,
        withdrawn=withdrawn,
        supplies=supplies,
        vault_usdt=vault_usdt,
        usdt_in=usdt_in,
        usdt_out=usdt_out,
        usdt_in_other=_transfers_unexplained(transfers_in, deposit_ids_by_tx),
    )


def _transfer(raw: RawLog) -> Transfer:
    event = decode_log(raw, "MockUSDT")
    if not isinstance(event, Transfer):
        raise UndecodableLog("unknown_topic", f"not a Transfer: {event.name}")
    return event


def _logs(*, address: str, start: int, end: int, topics: list | None = None) -> list[RawLog]:
    client = chain_client()
    chunk = max(settings.CHAIN_BACKFILL_CHUNK_BLOCKS, 1)
    logs: list[RawLog] = []
    for lo in range(start, end + 1, chunk):
        hi = min(lo + chunk - 1, end)
        logs.extend(client.get_logs(from_block=lo, to_block=hi, address=address, topics=topics))
    seen: set[tuple[str, str, int]] = set()
    out = []
    for log in logs:  # a log the node served twice counts once
        identity = (log.block_hash.lower(), log.tx_hash.lower(), log.log_index)
        if not log.removed and identity not in seen:
            seen.add(identity)
            out.append(log)
    return out


def _transfers_unexplained(
    transfers_in: list[tuple[RawLog, int]], deposit_ids_by_tx: dict[str, set[int]]
) -> tuple[tuple[RawLog, int], ...]:
    by_tx: dict[str, list[tuple[RawLog, int]]] = defaultdict(list)
    for transfer in transfers_in:
        by_tx[transfer[0].tx_hash.lower()].append(transfer)
    return tuple(
        transfer
        for tx, transfers in by_tx.items()
        if len(transfers) > len(deposit_ids_by_tx.get(tx, ()))
        for transfer in transfers
    )


def _transfers_described(transfers: tuple[tuple[RawLog, int], ...], limit: int = 5) -> str:
    """The transfers into the vault that no Deposit explains, each with whether its block is
    the node's canonical block at that height (a node serving a replaced block's log shows
    here as "not canonical")."""
    client = chain_client()
    parts = []
    for raw, units in transfers[:limit]:
        header = client.block(raw.block_number)
        canonical = header is not None and header.hash.lower() == raw.block_hash.lower()
        parts.append(
            f"{units} from tx {raw.tx_hash} in block {raw.block_number}"
            f"{'' if canonical else ' (not canonical)'}"
        )
    more = f" and {len(transfers) - limit} more" if len(transfers) > limit else ""
    return "; ".join(parts) + more


def check_orders_against_chain(
    result: Reconciliation,
    orders: list[Order],
    chain: ChainView,
    in_flight: set[int],
    vanished: set[int] | None = None,
) -> None:
    """Each order against its vault log and settlement events. An order closed as vanished in
    a reorg (`vanished`, default `database.vanished_order_ids()`) must have neither its
    request nor a settlement on chain."""
    if vanished is None:
        vanished = vanished_order_ids()
    by_key = {(o.order_type, int(o.onchain_id)): o for o in orders}
    for raw, exc in chain.unreadable:
        if raw.block_number <= chain.checkpoint:
            result.add(
                "db/chain",
                f"{exc.event} log {raw.tx_hash}#{raw.log_index}",
                f"vault event has no order: it does not decode ({exc.detail})",
            )
    for name, events in (("Deposit", chain.deposits), ("Redeem", chain.redeems)):
        for onchain_id, ev in sorted(events.items()):
            is_buy = isinstance(ev, Deposit)
            order = by_key.get((OrderType.BUY if is_buy else OrderType.SELL, onchain_id))
            if order is None:
                if ev.block_number <= chain.checkpoint:
                    result.add(
                        "db/chain",
                        f"{name} {onchain_id} (tx {ev.tx_hash})",
                        "vault event has no order",
                    )
                continue
            if is_buy:
                order_amount, amount = "usdt_amount", ev.usdt_units
            else:
                order_amount, amount = "token_amount", ev.token_units
            mismatches = []
            if order.user_address.lower() != ev.user.lower():
                mismatches.append(f"user {order.user_address} != {ev.user}")
            if getattr(order, order_amount) != amount:
                mismatches.append(
                    f"{order_amount} {getattr(order, order_amount)} != {amount} on chain"
                )
            if order.chain_tx_hash.lower() != ev.tx_hash.lower():
                mismatches.append(f"tx {order.chain_tx_hash} != {ev.tx_hash}")
            for m in mismatches:
                result.add("db/chain", order_label(order), m)

    settlements = {
        (s.kind, int(s.onchain_id)): s
        for s in SettlementTx.objects.filter(
            chain_id=settings.CHAIN_ID, kind__in=("deposit", "redeem")
        ).select_related("batch")
    }
    for o in orders:
        events = chain.deposits if o.order_type == OrderType.BUY else chain.redeems
        paid = chain.settled.get((o.order_type, int(o.onchain_id)), [])
        if o.pk in vanished:
            # Closed because its request vanished in a reorg: nothing on chain, nothing paid.
            if int(o.onchain_id) in events:
                result.add(
                    "db/chain",
                    order_label(o),
                    "closed as vanished in a reorg, but its request is on chain",
                )
            if paid:
                result.add(
                    "db/chain",
                    order_label(o),
                    f"closed as vanished in a reorg, but settled {len(paid)} time(s) on chain "
                    f"(tx {paid[0].tx_hash})",
                )
            continue
        if int(o.onchain_id) not in events:
            result.add("db/chain", order_label(o), "no such vault event on chain")
        if len(paid) > 1:
            result.add("chain", order_label(o), f"settled {len(paid)} times on chain")
        if not paid:
            if o.status in TERMINAL_STATUSES:
                result.add(
                    "db/chain", order_label(o), f"{o.status} in the database, unsettled on chain"
                )
            continue
        if not o.outcome:
            result.add("db/chain", order_label(o), "settled on chain but never finalized")
            continue
        ev = paid[0]
        if ev.user.lower() != o.user_address.lower():
            result.add("chain", order_label(o), f"settlement paid {ev.user}, not the order's user")
        usdt, tokens = settlement_amounts(o)
        if isinstance(ev, DepositSettled):
            chain_usdt, chain_tokens = ev.refund_usdt_units, ev.minted_token_units
            words = ("refund", "tokens minted")
        else:
            chain_usdt, chain_tokens = ev.payout_usdt_units, ev.returned_token_units
            words = ("payout", "tokens returned")
        if usdt != chain_usdt:
            result.add("db/chain", order_label(o), f"{words[0]} {usdt} != {chain_usdt} on chain")
        if tokens != chain_tokens:
            result.add(
                "db/chain", order_label(o), f"{words[1]} {tokens} != {chain_tokens} on chain"
            )
        kind = "deposit" if o.order_type == OrderType.BUY else "redeem"
        record = settlements.get((kind, int(o.onchain_id)))
        if record is None:
            result.add("db", order_label(o), "settled on chain but no settlement record")
        elif (int(record.usdt_amount), int(record.token_amount)) != (usdt, tokens) and not (
            record.already_settled
        ):
            result.add(
                "db",
                order_label(o),
                f"settlement record ({int(record.usdt_amount)}, {int(record.token_amount)}) "
                f"!= order ({usdt}, {tokens})",
            )
        elif o.status in TERMINAL_STATUSES and record.status != SettlementStatus.CONFIRMED:
            result.add("db", order_label(o), f"terminal but settlement record is {record.status}")
        for problem in _settlement_hash_mismatches(
            order=o,
            record=record,
            settled=ev,
            filled=chain.filled.get((o.order_type, int(o.onchain_id)), []),
        ):
            result.add("db/chain", order_label(o), problem)

    recorded_late = set(
        AuditLog.objects.filter(action="order.cancel_after_terminal").values_list(
            "after__tx_hash", flat=True
        )
    )
    for cancel in chain.cancels:
        if cancel.block_number > chain.checkpoint:
            continue
        order = by_key.get((OrderType.BUY, cancel.deposit_id))
        if order is None:
            continue  # the Deposit check above already names it
        if order.cancel_requested_at is None and cancel.tx_hash not in recorded_late:
            result.add(
                "db/chain", order_label(order), f"CancelRequested {cancel.tx_hash} not recorded"
            )


def _settlement_hash_mismatches(
    *,
    order: Order,
    record: SettlementTx | None,
    settled: DepositSettled | RedeemSettled,
    filled: list[DepositFilled | RedeemFilled],
) -> list[str]:
    """What the database says settled the order against the transaction that emitted its
    settlement event: the confirmed settlement record's hash, its batch's hash (a batched
    settlement) and the order's `settlement_tx_hash` must each be that transaction; a
    batched settlement's DepositFilled / RedeemFilled must come from it too (the vault emits
    both in one call). A record still in flight is not judged (its replacement may be the
    one that mined). Hashes compare case-insensitively."""
    emitted = settled.tx_hash.lower()
    problems = []
    said: list[tuple[str, str]] = []
    if record is not None and record.status == SettlementStatus.CONFIRMED:
        said.append(("settlement record", record.tx_hash))
        if record.batch is not None:
            said.append((f"settlement batch {record.batch.pk}", record.batch.tx_hash))
            if not filled:
                problems.append(
                    f"batched settlement, but no {settled.name[:-7]}Filled event for its id"
                )
    if order.settlement_tx_hash:
        said.append(("order's settlement", order.settlement_tx_hash))
    for what, tx_hash in said:
        if tx_hash.lower() != emitted:
            problems.append(
                f"{what} tx {tx_hash or '(none)'} is not {settled.tx_hash}, "
                f"the tx that emitted {settled.name}"
            )
    for event in filled:
        if event.tx_hash.lower() != emitted:
            problems.append(
                f"{event.name} in tx {event.tx_hash}, but {settled.name} in {settled.tx_hash}"
            )
    return problems


def check_chain_totals(
    result: Reconciliation,
    orders: list[Order],
    chain: ChainView,
    vanished: set[int] | None = None,
) -> None:
    """The vault's ledger: token supplies and USDT in / out against the orders. An order
    closed as vanished in a reorg (`vanished`, default `database.vanished_order_ids()`)
    brought no USDT in and burned no tokens (its request is not on chain), so it is left
    out; were it settled on chain after all, the per-order check names it and its payment
    shows here as unexplained."""
    if vanished is None:
        vanished = vanished_order_ids()
    minted: Counter[str] = Counter()
    burned: Counter[str] = Counter()
    refunds = payouts = deposits = 0
    for o in orders:
        if o.pk in vanished:
            continue
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
            f"balance {chain.vault_usdt} != transfers in {chain.usdt_in} - out {chain.usdt_out}"
            f" ({chain.vault_usdt - chain.usdt_in + chain.usdt_out:+d}); transfers in no"
            f" Deposit explains: {_transfers_described(chain.usdt_in_other) or 'none'}",
        )
    manual = manual_refunds_paid()
    expected_out = refunds + payouts + manual + chain.withdrawn
    if chain.usdt_out != expected_out:
        result.add(
            "db/chain",
            "vault USDT",
            f"paid out {chain.usdt_out} on chain != refunds {refunds} + payouts {payouts} "
            f"+ manual refunds {manual} + reserve withdrawn {chain.withdrawn} "
            f"(= {expected_out}) in the database",
        )
    chain_deposits = sum(e.usdt_units for e in chain.deposits.values())
    if deposits != chain_deposits and all(
        e.block_number <= chain.checkpoint for e in chain.deposits.values()
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
            "orders_vanished_in_reorg": len(vanished & {o.pk for o in orders}),
        }
    )
