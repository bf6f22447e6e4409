"""End-to-end benchmark: deposits per second from the vault log to the settled order.

    .venv/bin/python bench/e2e.py [--rate 200] [--seconds 60] [--depositors 200]
                                  [--redeemers 40] [--out bench/results/e2e.json]
    .venv/bin/python bench/e2e.py --phase WINDOW:RATE:DEPOSITS [--users 20]

Each run brings the whole system up from scratch with `run_stack`'s DevStack (anvil mining
a block a second, OpenBao, the OpenD simulator at Futu's real 30 s window - the same in the
workers' limiter -, web, a worker per queue, beat, the listener, Flower), in its own
database (BENCH_DB, default bronco_bench_e2e, dropped and re-created) and Redis database
(BENCH_REDIS_DB, default 14).

By default (`bench/batch_phase.py`) it offers RATE deposits per second for SECONDS over
AAPL, NVDA, TSLA and TCEHY (a 100-share HK lot) plus redeems at a tenth of that rate, from
pre-signed transactions sent in JSON-RPC batches (`devtools.load`), and prints in one run:
sustained deposits per second log -> settled and its ratio to the one-order-per-deposit
ceiling (Futu's 15 place requests per 30 s = 0.5/s), p50/p99, place requests per 30 s,
settlement transactions per settled id, gas per settled id single against batched, where
the time goes (cycle steps, limiter waits, broker requests per kind), the machine's load
average, and reconciliation.

`--phase` runs the older scenario driver instead (one signed transaction per deposit, at
most about 20 per second here): WINDOW seconds of Futu window, RATE deposits per second,
DEPOSITS deposits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)

from devtools.processes import stack_environment  # noqa: E402  (after the path is set)

# Its own database (dropped and re-created) and Redis database; BENCH_DB / BENCH_REDIS_DB
# move them (a developer running beside others uses their own).
DB_NAME = os.environ.get("BENCH_DB", "bronco_bench_e2e")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "14"))
# anvil mines a block a second with room for ~3,000 deposits: automine stops mining once
# about a thousand transactions wait in its pool (measured: ~100 deposits/s here).
ANVIL_ARGS = "--block-time 1 --gas-limit 300000000"
DEADLINE = 300


# The house's inventory settings of the batched run (README "Buy-ahead"): each symbol's
# place slot comes every ~8 s (four symbols share 15 place requests per 30 s), so a broker
# cycle buys 12 s of the symbol's net demand ahead, and the cycles in between trade from
# inventory. At 200 deposits/s AAPL's share is about 15,000 USDT/s: 12 s of it needs a cap
# of about 180,000 USDT, and 250,000 leaves room for the demand's swings.
BUY_AHEAD_SECONDS = 12.0
INVENTORY_CAP_USDT = 250_000


def _configure(*, buy_ahead: float, inventory_cap_usdt: int) -> dict[str, int]:
    """Ports and environment before Django reads its settings: this process reads the
    chain, the database and the broker the children use."""
    return stack_environment(
        db_name=DB_NAME,
        redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        extra={
            "ORDER_DEADLINE_SECONDS": str(DEADLINE),
            "BRONCO_ANVIL_ARGS": os.environ.get("BRONCO_ANVIL_ARGS", ANVIL_ARGS),
            "NETTING_BUY_AHEAD_SECONDS": str(buy_ahead),
            "NETTING_INVENTORY_CAP_USDT": str(inventory_cap_usdt),
        },
    )


def _phase(spec: str) -> tuple[float, float, int]:
    window, rate, deposits = spec.split(":")
    return float(window), float(rate), int(deposits)


def run_phase(ports: dict[str, int], *, window: float, rate: float, deposits: int, users: int):
    from django.conf import settings

    from core.models import AuditLog
    from devtools.management.commands.simulate import run_scenario
    from devtools.report import percentile
    from devtools.stack import DevStack, StackConfig
    from trading.session import reset_broker

    settings.FUTU_RATE_WINDOW_SECONDS = window
    reset_broker()
    stack = DevStack(
        StackConfig.on_ports(
            ports, var_dir=REPO / "var" / "bench-e2e", rate_window=window, deadline=DEADLINE
        ),
        out=lambda line: None,
    )
    print(f"\nphase: window {window:g} s, offered {rate:g} deposits/s, {deposits} deposits")
    try:
        stack.up()
        result = run_scenario(
            {
                "users": users,
                "deposits": deposits,
                "redeems": 0,
                "cancels": 0,
                "seed": 1,
                "rate": rate,
                "timeout": 1200.0,
                "sim_control": f"127.0.0.1:{ports['control']}",
                "opening_cash": "USD=10000000,HKD=50000000",
                "no_reconcile": False,
                "mix": "netting",
            },
            write=lambda line: print(line) if line.startswith("[") else None,
        )
        # Counted where Futu counts them: the requests the broker (simulator) served.
        from trading.opend_sim.server import SimulatorControl

        places = SimulatorControl("127.0.0.1", ports["control"]).rate_stats(kind="place")
    finally:
        stack.down()
        reset_broker()
    orders = result["orders"]
    settled_at = {
        order_id: at.timestamp()
        for order_id, at in AuditLog.objects.filter(
            order_id__in=[o.pk for o in orders], action="order.settled"
        ).values_list("order_id", "created_at")
    }
    first_log = min(result["log_times"].values())
    last_settled = max(settled_at.values())
    e2e = [settled_at[o.pk] - result["log_times"][o.pk] for o in orders if o.pk in settled_at]
    stages = {row["stage"]: row for row in result["report"]["latency_seconds"]}
    broker_rate = result["report"]["broker_orders_per_30s"]
    from chain.models import SettlementTx

    transactions = (
        SettlementTx.objects.filter(order_id__in=[o.pk for o in orders])
        .values("tx_hash")
        .distinct()
        .count()
    )
    return {
        "rate_window_seconds": window,
        "offered_deposits_per_second": rate,
        "achieved_send_rate": result["achieved_send_rate"],
        "deposits": deposits,
        "settled": len(settled_at),
        "finished": result["finished"],
        "sustained_deposits_per_second": round(len(settled_at) / (last_settled - first_log), 3),
        "ratio_to_one_order_per_deposit_ceiling": round(
            len(settled_at) / (last_settled - first_log) / 0.5, 1
        ),
        "settlement_transactions": transactions,
        "transactions_per_settled_id": round(transactions / max(len(settled_at), 1), 4),
        "cycles": result["report"].get("cycles", {}),
        "log_to_settled_seconds": {
            "p50": percentile(e2e, 50),
            "p99": percentile(e2e, 99),
            "max": max(e2e),
        },
        "stages": {
            name: {"p50": row["p50"], "p99": row["p99"]}
            for name, row in stages.items()
            if name in ("validate (book)", "wait for a cycle", "trade (book -> done)", "settle")
        },
        "broker_orders_per_30s": broker_rate,
        "broker_place_requests": places,
        "outcomes": result["report"]["outcomes"],
        "reconciliation_ok": result["reconciliation"]["ok"],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phase",
        action="append",
        type=_phase,
        help="WINDOW:RATE:DEPOSITS with the one-transaction-per-deposit scenario driver "
        "(repeatable); without it, the batched run (--rate, --seconds)",
    )
    parser.add_argument("--users", type=int, default=20, help="users of a --phase run")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="batched: deposits offered per second"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="batched: for how long")
    parser.add_argument("--depositors", type=int, default=200, help="batched: depositing users")
    parser.add_argument("--redeemers", type=int, default=40, help="batched: redeeming users")
    parser.add_argument(
        "--buy-ahead",
        type=float,
        default=BUY_AHEAD_SECONDS,
        help="seconds of net demand a broker cycle buys ahead (NETTING_BUY_AHEAD_SECONDS; "
        "0: off, every book waits for its place slot)",
    )
    parser.add_argument(
        "--inventory-cap-usdt",
        type=int,
        default=INVENTORY_CAP_USDT,
        help="house inventory cap per symbol (NETTING_INVENTORY_CAP_USDT)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "e2e.json"))
    args = parser.parse_args()
    if args.buy_ahead < 0 or args.inventory_cap_usdt < 0:
        parser.error("--buy-ahead and --inventory-cap-usdt are never negative")
    ports = _configure(buy_ahead=args.buy_ahead, inventory_cap_usdt=args.inventory_cap_usdt)

    import django

    django.setup()
    from devtools.report import table

    started = time.time()
    if not args.phase:
        from bench.batch_phase import print_batch, run_batch_phase

        result = run_batch_phase(
            ports,
            rate=args.rate,
            seconds=args.seconds,
            users=args.depositors,
            redeem_users=args.redeemers,
            var_dir=REPO / "var" / "bench-e2e",
            deadline=DEADLINE,
        )
        print_batch(result)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "machine": {"cpus": os.cpu_count()},
                    "duration_seconds": round(time.time() - started, 1),
                    "command": " ".join(["bench/e2e.py", *sys.argv[1:]]),
                    "inventory": {
                        "buy_ahead_seconds": args.buy_ahead,
                        "cap_usdt_per_symbol": args.inventory_cap_usdt,
                    },
                    "batched": result,
                },
                indent=2,
                default=str,
            )
        )
        print(f"wrote {out}")
        return 0 if result["finished"] and result["reconciliation_ok"] else 1
    phases = args.phase
    results = [
        run_phase(ports, window=w, rate=r, deposits=n, users=args.users) for w, r, n in phases
    ]
    headers = [
        "window s",
        "offered/s",
        "sent/s",
        "settled",
        "e2e dep/s",
        "log->settled p50",
        "p99",
        "book->traded p50",
        "p99",
        "settle p50",
        "p99",
        "place requests max/30s",
        "refused",
        "cycles placed mean/30s",
        "tx per id",
        "x ceiling",
        "reconciled",
    ]
    rows = []
    for r in results:
        s = r["stages"]
        rows.append(
            [
                f"{r['rate_window_seconds']:g}",
                f"{r['offered_deposits_per_second']:g}",
                f"{r['achieved_send_rate']:.2f}",
                f"{r['settled']}/{r['deposits']}",
                f"{r['sustained_deposits_per_second']:.2f}",
                _fmt(r["log_to_settled_seconds"]["p50"]),
                _fmt(r["log_to_settled_seconds"]["p99"]),
                _fmt(s.get("trade (book -> done)", {}).get("p50")),
                _fmt(s.get("trade (book -> done)", {}).get("p99")),
                _fmt(s.get("settle", {}).get("p50")),
                _fmt(s.get("settle", {}).get("p99")),
                r["broker_place_requests"]["max_in_window"],
                r["broker_place_requests"]["refused"],
                r["broker_orders_per_30s"]["mean_per_window"],
                f"{r['transactions_per_settled_id']:.3f}",
                f"{r['ratio_to_one_order_per_deposit_ceiling']:g}x",
                "OK" if r["reconciliation_ok"] else "FAILED",
            ]
        )
    print("\nEnd to end (vault log -> settled order), seconds unless said")
    print(table(headers, rows))
    print(
        "Futu allows 15 place-order requests per 30 s (one broker order per deposit: 0.5 "
        "deposits/s); a window below 30 s is shortened, the same in the simulator and limiter."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count()},
                "users": args.users,
                "duration_seconds": round(time.time() - started, 1),
                "phases": results,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")
    return 0 if all(r["finished"] and r["reconciliation_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
