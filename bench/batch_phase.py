"""The batched phase of `bench/e2e.py`: deposits offered at RATE per second for SECONDS over
AAPL, NVDA, TSLA (US) and TCEHY (HK, lots of 100), plus redeems at a tenth of that rate,
from pre-signed transactions sent in JSON-RPC batches (`devtools.load.BatchLoad`), against
the whole system (`DevStack`) at Futu's real 30 s window. Runs inside bench/e2e.py's
process (ports, database and Redis already configured, Django set up).

What it measures, from the vault log (when the watcher first read it) to the order's
`order.settled` audit entry:
- sustained deposits per second (settled deposits / (last settlement - first log)) and its
  ratio to the one-broker-order-per-deposit ceiling (15 per 30 s = 0.5 per second);
- the steady state: deposits settled per second once the pipeline is full (first log + p99
  to the last log), and the p50 of the first and last 10 s of sending (`_steady_state`);
- p50 / p99 latency, and per stage (waiting for a cycle, the cycle, settlement);
- place requests per 30 s (the most in any window; Futu allows 15);
- settlement transactions per settled id, and gas per settled id batched (the run's own
  settlement receipts) against single (`settleDeposit` for one fresh deposit, estimated);
- where the time goes: cycles per symbol and their interval, each cycle step's mean
  duration (the step timer), the shared limiter's waits per request kind, and the broker
  requests per kind the simulator served.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

USDT = 10**6
SYMBOL_WEIGHTS = {"AAPL": 35, "NVDA": 25, "TSLA": 25, "TCEHY": 15}
WARMUP_DEPOSIT_USDT = 2_000


def _steady_state(
    deposits: list[Any],
    *,
    log_times: dict[int, float],
    settled_at: dict[int, float],
    e2e: list[float],
) -> dict[str, Any]:
    """Whether the system keeps up with the offered rate, apart from filling and draining
    the pipeline (which the sustained figure counts: settled / (last settlement - first
    log) stays below the offered rate by the last order's latency, however fast the
    system is). `deposits_per_second`: deposits settled between first log + the run's p99
    latency (the pipeline is full) and the last log, over that span; equal to the offered
    rate when nothing backs up. `p50_first_10s` / `p50_last_10s`: log -> settled p50 of the
    deposits logged in the first and the last 10 s of sending; a backlog shows as growth."""
    from devtools.report import percentile

    if not e2e:
        return dict.fromkeys(
            ("deposits_per_second", "window_seconds", "p50_first_10s", "p50_last_10s")
        )
    first_log = min(log_times[o.pk] for o in deposits)
    last_log = max(log_times[o.pk] for o in deposits)
    start = first_log + percentile(e2e, 99)
    settled = [o for o in deposits if start <= settled_at.get(o.pk, -1.0) <= last_log]
    span = last_log - start

    def p50_logged(lo: float, hi: float) -> float | None:
        latencies = [
            settled_at[o.pk] - log_times[o.pk]
            for o in deposits
            if o.pk in settled_at and lo <= log_times[o.pk] < hi
        ]
        return percentile(latencies, 50) if latencies else None

    return {
        "deposits_per_second": round(len(settled) / span, 2) if span > 0 else None,
        "window_seconds": round(span, 1),
        "p50_first_10s": p50_logged(first_log, first_log + 10),
        "p50_last_10s": p50_logged(last_log - 10, last_log + 1),
    }


def load_average() -> str:
    """The machine's load average now (`uptime`): other work shares these 2 cores."""
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return out.strip().split("load average:")[-1].strip()


def _wait_orders(kind_ids: dict[str, list[int]], *, timeout: float, terminal: bool) -> bool:
    from django.conf import settings

    from orders.models import TERMINAL_STATUSES, Order

    deadline = time.monotonic() + timeout
    want = sum(len(v) for v in kind_ids.values())
    while time.monotonic() < deadline:
        done = 0
        for order_type, ids in kind_ids.items():
            qs = Order.objects.filter(
                chain_id=settings.CHAIN_ID, order_type=order_type, onchain_id__in=ids
            )
            done += qs.filter(status__in=TERMINAL_STATUSES).count() if terminal else qs.count()
        if done >= want:
            return True
        time.sleep(1.0)
    return False


def _metrics() -> dict[str, Any]:
    """Cycle step timers and limiter waits, from the metrics hashes in Redis."""
    from core.metrics import (
        RATE_LIMIT_WAIT_SECONDS,
        RATE_LIMIT_WAITS,
        STAGE_LATENCY,
        metrics_key,
        metrics_redis,
    )

    client = metrics_redis()
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in client.hgetall(metrics_key(STAGE_LATENCY.name)).items():
        labels, _, part = field.decode().partition("\x1f")
        stage = json.loads(labels)[0]  # labels: ["<stage>"]
        if stage.startswith("cycle_") and part in ("sum", "count"):
            steps[stage][part] = float(value)
    waits: dict[str, dict[str, float]] = defaultdict(dict)
    for metric, part in ((RATE_LIMIT_WAITS, "count"), (RATE_LIMIT_WAIT_SECONDS, "seconds")):
        for field, value in client.hgetall(metrics_key(metric.name)).items():
            bucket = json.loads(field.decode())[0]  # labels: ["<bucket>"]
            waits[bucket][part] = round(float(value), 2)
    return {
        "cycle_steps": {
            s: {"runs": int(v.get("count", 0)), "mean_s": round(v["sum"] / v["count"], 3)}
            for s, v in sorted(steps.items())
            if v.get("count")
        },
        "limiter_waits": dict(waits),
    }


def _reset_metrics() -> None:
    from core.metrics import (
        RATE_LIMIT_WAIT_SECONDS,
        RATE_LIMIT_WAITS,
        STAGE_LATENCY,
        metrics_key,
        metrics_redis,
    )

    for metric in (STAGE_LATENCY, RATE_LIMIT_WAITS, RATE_LIMIT_WAIT_SECONDS):
        metrics_redis().delete(metrics_key(metric.name))


def _shares(token_units: int) -> Decimal:
    return Decimal(int(token_units)) / 10**18


def _cycle_profile(order_ids: list[int]) -> dict[str, Any]:
    from orders.models import Allocation, Cycle, HouseInventory

    held = dict(HouseInventory.objects.values_list("symbol", "token_units"))

    cycle_ids = set(
        Allocation.objects.filter(order_id__in=order_ids).values_list("cycle_id", flat=True)
    )
    rows = list(Cycle.objects.filter(pk__in=cycle_ids).order_by("created_at"))
    by_symbol: dict[str, list] = defaultdict(list)
    for c in rows:
        by_symbol[c.symbol].append(c)
    out: dict[str, Any] = {}
    for symbol, cycles in sorted(by_symbol.items()):
        starts = [c.created_at.timestamp() for c in cycles]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        to_place = [(c.placed_at - c.created_at).total_seconds() for c in cycles if c.placed_at]
        to_alloc = [
            (c.allocated_at - (c.placed_at or c.created_at)).total_seconds()
            for c in cycles
            if c.allocated_at
        ]
        out[symbol] = {
            "cycles": len(cycles),
            "to_broker": sum(1 for c in cycles if c.futu_order_id),
            # covered by crossing and inventory: no place request
            "covered": sum(1 for c in cycles if not c.futu_order_id),
            "inventory_end_shares": str(_shares(held.get(symbol, 0)).quantize(Decimal("0.001"))),
            "inventory_end_usdt": str(
                (
                    _shares(held.get(symbol, 0)) * cycles[-1].quote_price / cycles[-1].ccy_per_usdt
                ).quantize(Decimal(1))
            ),
            "interval_mean_s": round(statistics.mean(gaps), 2) if gaps else None,
            "open_to_place_p50_s": round(statistics.median(to_place), 3) if to_place else None,
            "place_to_allocated_p50_s": round(statistics.median(to_alloc), 3) if to_alloc else None,
        }
    return out


def _gas(load: Any, order_ids: list[int], fresh_deposit: Any) -> dict[str, Any]:
    """Gas per settled id: batched from the run's settlement receipts; single estimated for
    `settleDeposit` of one fresh deposit (minting tokens and refunding the rest, as a
    netting deposit settles), beside `settleDeposits` with that one id."""
    from django.conf import settings

    from chain.client import chain_client, symbol_to_bytes32
    from chain.models import SettlementTx

    hashes = list(
        SettlementTx.objects.filter(order_id__in=order_ids)
        .exclude(tx_hash="")
        .values_list("tx_hash", flat=True)
    )
    ids_per_tx: dict[str, int] = defaultdict(int)
    for h in hashes:
        ids_per_tx[h] += 1
    unique = list(ids_per_tx)
    receipts = []
    for i in range(0, len(unique), 200):
        receipts += load.batch(("eth_getTransactionReceipt", [h]) for h in unique[i : i + 200])
    used = sum(int(r["gasUsed"], 16) for r in receipts if r)
    operator = None
    if unique:
        operator = load.rpc("eth_getTransactionByHash", [unique[0]])["from"]
    result: dict[str, Any] = {
        "batched_per_id": round(used / max(len(hashes), 1)) if hashes else None,
        "settlement_transactions": len(unique),
        "ids_per_transaction_mean": round(len(hashes) / max(len(unique), 1), 1),
    }
    if operator is None or fresh_deposit is None or fresh_deposit.vault_id is None:
        return result
    client = chain_client()
    vault = load.vault
    amount = fresh_deposit.amount
    single = (
        fresh_deposit.vault_id,
        load.addresses[fresh_deposit.user],
        symbol_to_bytes32(fresh_deposit.symbol),
        amount,
        10**17,  # 0.1 share minted
        amount // 10,  # the rest refunded
    )
    # At the deposit's own block: the running system settles it a block or more later, and
    # an estimate at the head would then revert with AlreadySettled.
    mined = load.rpc("eth_getTransactionReceipt", [fresh_deposit.tx_hash])
    at_block = mined["blockNumber"] if mined else "latest"

    def estimate(fn: str, args: tuple) -> int:
        call = client.prepare(contract="BroncoVault", address=vault, fn=fn, args=args)
        tx = call.fields() | {"from": operator}
        return int(str(load.rpc("eth_estimateGas", [tx, at_block])), 16)

    try:
        result["single_per_id"] = estimate("settleDeposit", single)
        result["batch_of_one"] = estimate("settleDeposits", ([(*single, 0, 0, 0)],))
    except Exception as exc:  # noqa: BLE001  (a figure we could not take is reported as such)
        result["single_error"] = str(exc)[:200]
    result["chain_id"] = settings.CHAIN_ID
    return result


def run_batch_phase(
    ports: dict[str, int],
    *,
    rate: float,
    seconds: float,
    users: int,
    redeem_users: int,
    var_dir: Any,
    deadline: int,
) -> dict[str, Any]:
    from django.conf import settings

    from chain import selectors as chain_selectors
    from chain.deployment import contract_set
    from core.models import AuditLog
    from devtools.load import BatchLoad
    from devtools.report import percentile, run_report
    from devtools.scenario import ScenarioDriver, scenario_plan, user_key
    from devtools.stack import SIM_OPENING_CASH, DevStack, StackConfig
    from ops.management.commands.reconcile import as_dict
    from ops.reconciliation import parse_amounts, reconcile
    from orders.models import Order
    from trading.opend_sim.server import SimulatorControl
    from trading.session import reset_broker

    settings.FUTU_RATE_WINDOW_SECONDS = 30.0
    reset_broker()
    stack = DevStack(
        StackConfig.on_ports(ports, var_dir=var_dir, rate_window=30.0, deadline=deadline),
        out=lambda line: None,
    )
    redeem_rate = rate / 10
    print(
        f"\nbatched phase: Futu window 30 s, {rate:g} deposits/s for {seconds:g} s over "
        f"{', '.join(SYMBOL_WEIGHTS)} + {redeem_rate:g} redeems/s; {users} depositors, "
        f"{redeem_users} redeemers; load average {load_average()}"
    )
    result: dict[str, Any] = {"load_average_start": load_average()}
    try:
        stack.up()
        sim = SimulatorControl("127.0.0.1", ports["control"])
        plan = scenario_plan(users=1, deposits=0, redeems=0, cancels=0, seed=1, mix="netting")
        for line in ScenarioDriver(plan, sim_control=sim, mix="netting").script_simulator():
            print(f"  {line}")
        contracts = contract_set()
        keys = [user_key(2, i) for i in range(users)] + [
            user_key(3, i) for i in range(redeem_users)
        ]
        load = BatchLoad(
            rpc_url=settings.CHAIN_RPC_URL,
            chain_id=settings.CHAIN_ID,
            vault=contracts.vault,
            usdt=chain_selectors.usdt_address(),
            keys=keys,
        )
        started = time.monotonic()
        load.fund(
            deployer_key=settings.CHAIN_DEPLOYER_PRIVATE_KEY,
            usdt_units=int(rate * seconds / users + 10) * 400 * USDT
            + len(SYMBOL_WEIGHTS) * WARMUP_DEPOSIT_USDT * USDT,
        )
        print(f"  funded {len(keys)} users in {time.monotonic() - started:.1f} s")
        load.watch(int(str(load.rpc("eth_blockNumber", [])), 16))

        # Warm-up: the redeemers buy each symbol, so they hold tokens to redeem.
        warm = [
            load.sign("deposit", users + u, symbol, WARMUP_DEPOSIT_USDT * USDT, due=0)
            for u in range(redeem_users)
            for symbol in SYMBOL_WEIGHTS
        ]
        load.send(warm)
        while any(t.vault_id is None for t in warm):
            time.sleep(0.2)
        settled = _wait_orders({"BUY": [t.vault_id for t in warm]}, timeout=300, terminal=True)
        print(
            f"  warm-up: {len(warm)} deposits settled={settled} in "
            f"{time.monotonic() - started:.0f} s"
        )
        held = {
            (o.user_address.lower(), o.symbol): int(o.tokens_minted)
            for o in Order.objects.filter(
                chain_id=settings.CHAIN_ID,
                order_type="BUY",
                onchain_id__in=[t.vault_id for t in warm],
            )
        }

        rng = random.Random(1)
        symbols = list(SYMBOL_WEIGHTS)
        weights = list(SYMBOL_WEIGHTS.values())
        n_dep = int(rate * seconds)
        n_red = int(redeem_rate * seconds)
        signing = time.monotonic()
        txs = [
            load.sign(
                "deposit",
                i % users,
                rng.choices(symbols, weights)[0],
                int(rng.uniform(20, 400) * 100) * USDT // 100,
                due=i / rate,
            )
            for i in range(n_dep)
        ]
        per_pair = max(n_red // max(redeem_users * len(symbols), 1), 1) + 1
        for k in range(n_red):
            u = k % redeem_users
            symbol = symbols[(k // redeem_users) % len(symbols)]
            units = held.get((load.addresses[users + u].lower(), symbol), 0) // per_pair
            if units > 0:
                txs.append(load.sign("redeem", users + u, symbol, units, due=k / redeem_rate))
        print(f"  signed {len(txs)} transactions in {time.monotonic() - signing:.1f} s")
        _reset_metrics()
        result["load_average_offered"] = load_average()
        stats = load.send(txs)
        result["load_average_sent"] = load_average()
        print(
            f"  sent {stats.sent} in {stats.done_at - stats.started_at:.1f} s "
            f"({stats.batches} batches, at most {stats.late_seconds_max:.2f} s behind "
            f"schedule, {len(stats.send_errors)} errors); load average {load_average()}"
        )
        seen_deadline = time.monotonic() + 120
        while any(t.vault_id is None for t in txs) and time.monotonic() < seen_deadline:
            time.sleep(0.5)
        ids = {
            "BUY": [t.vault_id for t in txs if t.kind == "deposit" and t.vault_id is not None],
            "SELL": [t.vault_id for t in txs if t.kind == "redeem" and t.vault_id is not None],
        }
        finished = _wait_orders(ids, timeout=deadline + 300, terminal=True)
        # The broker's fees are read after allocation (cycles_fees_record, by beat): let the
        # last cycles' fees arrive before reconciling broker cash.
        from orders.models import Cycle

        fees_deadline = time.monotonic() + 90
        while (
            Cycle.objects.filter(status="ALLOCATED", broker_fee_read_at__isnull=True)
            .exclude(futu_order_id="")
            .exclude(filled_units=0)
            .exists()
            and time.monotonic() < fees_deadline
        ):
            time.sleep(1.0)
        result["load_average_end"] = load_average()
        metrics = _metrics()
        rates = {
            kind: sim.rate_stats(kind=kind)
            for kind in ("place", "history_order_list", "order_fee", "order_list", "modify")
        }
        fresh = load.sign("deposit", 0, "AAPL", 100 * USDT, due=0)
        load.send([fresh])
        wait_fresh = time.monotonic() + 30
        while fresh.vault_id is None and time.monotonic() < wait_fresh:
            time.sleep(0.2)
        # Measured before the fresh deposit is settled by the system.
        orders = list(
            Order.objects.filter(
                chain_id=settings.CHAIN_ID, order_type="BUY", onchain_id__in=ids["BUY"]
            )
        ) + list(
            Order.objects.filter(
                chain_id=settings.CHAIN_ID, order_type="SELL", onchain_id__in=ids["SELL"]
            )
        )
        gas = _gas(load, [o.pk for o in orders], fresh)
        load.stop()
        log_time = {("BUY", t.vault_id): t.seen_at for t in txs if t.kind == "deposit"}
        log_time.update({("SELL", t.vault_id): t.seen_at for t in txs if t.kind == "redeem"})
        log_times = {o.pk: log_time[(o.order_type, int(o.onchain_id))] for o in orders}
        report = run_report(orders, log_times=log_times)
        reconciliation = as_dict(reconcile(opening_cash=parse_amounts(SIM_OPENING_CASH)))
    finally:
        stack.down()
        reset_broker()
    settled_at = {
        order_id: at.timestamp()
        for order_id, at in AuditLog.objects.filter(
            order_id__in=[o.pk for o in orders], action="order.settled"
        ).values_list("order_id", "created_at")
    }
    deposits = [o for o in orders if o.order_type == "BUY"]
    dep_settled = [o for o in deposits if o.pk in settled_at]
    first_log = min(log_times[o.pk] for o in deposits)
    last_settled = max(settled_at[o.pk] for o in dep_settled)
    e2e = [settled_at[o.pk] - log_times[o.pk] for o in dep_settled]
    e2e_all = [settled_at[o.pk] - log_times[o.pk] for o in orders if o.pk in settled_at]
    sustained = len(dep_settled) / (last_settled - first_log)
    steady = _steady_state(deposits, log_times=log_times, settled_at=settled_at, e2e=e2e)
    stages = {row["stage"]: row for row in report.as_dict()["latency_seconds"]}
    result.update(
        {
            "mode": "batched",
            "rate_window_seconds": 30.0,
            "offered_deposits_per_second": rate,
            "offered_redeems_per_second": redeem_rate,
            "offered_seconds": seconds,
            "send": {
                "sent": stats.sent,
                "seconds": round(stats.done_at - stats.started_at, 2),
                "batches": stats.batches,
                "late_seconds_max": round(stats.late_seconds_max, 2),
                "errors": stats.send_errors[:5],
                "achieved_send_rate": round(stats.sent / (stats.done_at - stats.started_at), 1),
            },
            "deposits": len(deposits),
            "redeems": len(orders) - len(deposits),
            "settled": len(settled_at),
            "finished": finished,
            "sustained_deposits_per_second": round(sustained, 2),
            "ratio_to_one_order_per_deposit_ceiling": round(sustained / 0.5, 1),
            "steady_state": steady,
            "log_to_settled_seconds": {
                "deposits_p50": percentile(e2e, 50),
                "deposits_p99": percentile(e2e, 99),
                "all_p50": percentile(e2e_all, 50),
                "all_p99": percentile(e2e_all, 99),
            },
            "stages": {
                name: {"p50": row["p50"], "p99": row["p99"]}
                for name, row in stages.items()
                if name in ("validate (book)", "wait for a cycle", "trade (book -> done)", "settle")
            },
            "broker_orders_per_30s": report.as_dict()["broker_orders_per_30s"],
            "transactions_per_settled_id": round(
                gas["settlement_transactions"] / max(len(settled_at), 1), 4
            ),
            "gas": gas,
            "profile": {
                **metrics,
                "cycles": _cycle_profile([o.pk for o in orders]),
                "broker_requests": rates,
            },
            "outcomes": report.as_dict()["outcomes"],
            "reconciliation_ok": reconciliation["ok"],
            "reconciliation": reconciliation if not reconciliation["ok"] else {"ok": True},
        }
    )
    return result


def print_batch(r: dict[str, Any]) -> None:
    lat = r["log_to_settled_seconds"]
    b = r["broker_orders_per_30s"]
    g = r["gas"]
    s = r["stages"]
    print("\nEnd to end, batched load (vault log -> settled), Futu's real 30 s window")
    print(
        f"  offered {r['offered_deposits_per_second']:g} deposits/s + "
        f"{r['offered_redeems_per_second']:g} redeems/s for {r['offered_seconds']:g} s; "
        f"sent {r['send']['sent']} at {r['send']['achieved_send_rate']}/s "
        f"(at most {r['send']['late_seconds_max']} s behind)"
    )
    print(
        f"  settled {r['settled']}/{r['deposits'] + r['redeems']} "
        f"(finished: {r['finished']}); reconciled: {'OK' if r['reconciliation_ok'] else 'FAILED'}"
    )
    print(
        f"  sustained {r['sustained_deposits_per_second']} deposits/s log->settled = "
        f"{r['ratio_to_one_order_per_deposit_ceiling']}x the 0.5/s ceiling"
    )
    st = r["steady_state"]
    print(
        f"  steady state (pipeline full: from first log + p99 to last log, "
        f"{st['window_seconds']} s): {st['deposits_per_second']} deposits/s settled; "
        f"p50 of the first 10 s logged {st['p50_first_10s']} s, of the last 10 s "
        f"{st['p50_last_10s']} s"
    )
    print(
        f"  deposits log->settled p50 {lat['deposits_p50']} s, p99 {lat['deposits_p99']} s "
        f"(all orders p50 {lat['all_p50']} s, p99 {lat['all_p99']} s)"
    )
    print("  stages p50/p99: " + ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in s.items()))
    place = r["profile"]["broker_requests"].get("place", {})
    # The simulator counts the requests as Futu would (the figure that must stay <= 15);
    # Bronco's Cycle.placed_at is written when the answer is recorded, up to seconds later,
    # so a window of those can hold one more than the requests really sent in it.
    print(
        f"  place requests per 30 s (the simulator's count): max {place.get('max_in_window')}; "
        f"broker orders by recorded placed_at: max {b['max_per_window']}, "
        f"mean {b['mean_per_window']}"
    )
    print(
        f"  settlement transactions per settled id {r['transactions_per_settled_id']} "
        f"({g['settlement_transactions']} transactions, {g['ids_per_transaction_mean']} ids each)"
    )
    print(
        f"  gas per settled id: batched {g.get('batched_per_id')}, single "
        f"{g.get('single_per_id', g.get('single_error'))} (settleDeposits of one: "
        f"{g.get('batch_of_one')})"
    )
    p = r["profile"]
    print("  profile: cycle steps " + json.dumps(p["cycle_steps"]))
    print("           limiter waits " + json.dumps(p["limiter_waits"]))
    print("           cycles " + json.dumps(p["cycles"]))
    print(
        "           broker requests "
        + json.dumps(
            {k: (v["requests"], v["max_in_window"]) for k, v in p["broker_requests"].items()}
        )
        + " (requests, most in any window)"
    )
    print(
        f"  load average: start {r['load_average_start']}, sending {r['load_average_sent']}, "
        f"end {r['load_average_end']}"
    )
