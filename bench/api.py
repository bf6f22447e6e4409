"""Public API benchmark: requests per second and latency of `GET /api/v1/orders?address=`
with 100,000 orders in the database, under gunicorn (the production WSGI server, not
runserver), on this machine.

    .venv/bin/python bench/api.py [--orders 100000] [--addresses 1000] [--seconds 20]
                                  [--clients 8] [--workers 3] [--reuse]

Uses its own database (BENCH_DATABASE_URL, default bronco_bench_api: dropped and re-created)
and Redis database (BENCH_REDIS_URL, default db 13: flushed), so it never touches dev or test
data. Loads N orders spread over the addresses (newest first per address is the page), each
with three audit entries (its timeline: the real hash-chained append) and one allocation in a
cycle, then runs gunicorn with DJANGO_DEBUG=false and the rate limit off, and C client threads
that each ask, for random addresses, the first page then the next one through its cursor
(limit 20), for S seconds; then one client alone (latency without queueing). Prints
requests/s, p50/p99 latency, gunicorn's CPU time per request (less sensitive to other load
on the machine than the rates), the machine's load average, and the query plan of a page with
and without its index; writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bronco_bench_api"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bronco_project.settings.local")
os.environ["DATABASE_URL"] = DATABASE_URL
os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = REDIS_URL
os.environ["CELERY_RESULT_BACKEND"] = REDIS_URL
os.environ.setdefault("LOG_LEVEL", "WARNING")


def reset_database() -> None:
    import psycopg2

    name = DATABASE_URL.rsplit("/", 1)[-1]
    admin = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def address_of(i: int) -> str:
    return "0x" + f"{i:040x}"


def load(n_orders: int, n_addresses: int) -> None:
    """N orders (deposits and redeems, every status) round-robin over the addresses, three
    audit entries each and one allocation each in 1,000-order cycles."""
    from decimal import Decimal

    from django.utils import timezone

    from core.audit import AuditEntry, audit_record_many
    from orders.models import Allocation, Cycle, CycleStatus, Order, OrderStatus, OrderType

    statuses = list(OrderStatus.values)
    batch = 5_000
    started = time.monotonic()
    for start in range(0, n_orders, batch):
        rows = []
        for i in range(start, min(start + batch, n_orders)):
            buy = i % 4 != 0
            rows.append(
                Order(
                    order_type=OrderType.BUY if buy else OrderType.SELL,
                    status=statuses[i % len(statuses)],
                    chain_id=31337,
                    onchain_id=i + 1,
                    chain_tx_hash="0x" + f"{i:064x}",
                    user_address=address_of(i % n_addresses),
                    symbol="AAPL",
                    stock_code="US.AAPL",
                    usdt_amount=1_000 * 10**6 if buy else 0,
                    token_amount=0 if buy else 5 * 10**18,
                    cost_usdt=990 * 10**6,
                    fees_usdt=10**6,
                    refund_usdt=9 * 10**6 if buy else 0,
                    tokens_minted=5 * 10**18 if buy else 0,
                    settlement_tx_hash="0x" + f"{i + 10**9:064x}",
                )
            )
        orders = Order.objects.bulk_create(rows)
        cycle = Cycle.objects.create(
            symbol="AAPL",
            stock_code="US.AAPL",
            status=CycleStatus.ALLOCATED,
            quote_price=Decimal("198"),
            ccy_per_usdt=Decimal(1),
            lot_size=1,
            fee_rate=Decimal("0.001"),
            price=Decimal("198.01"),
            allocated_at=timezone.now(),
        )
        Allocation.objects.bulk_create(
            Allocation(
                cycle=cycle,
                order=o,
                order_type=o.order_type,
                token_units=5 * 10**18,
                usdt_units=990 * 10**6,
                fee_units=10**6,
            )
            for o in orders
        )
        audit_record_many(
            [
                AuditEntry(actor="bench", action=action, order_id=o.pk, after={"status": s})
                for o in orders
                for action, s in (
                    ("order.created", "PENDING"),
                    ("order.booked", "PENDING"),
                    ("order.joined_cycle", "EXECUTING"),
                )
            ]
        )
        print(f"  loaded {start + len(rows):,} orders ({time.monotonic() - started:.0f} s)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_plan(address: str) -> str:
    from django.db import connection
    from django.db.models.functions import Lower

    from orders.selectors import Order

    qs = (
        Order.objects.alias(user=Lower("user_address"))
        .filter(user=address.lower())
        .order_by("-pk")[:21]
    )
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("EXPLAIN ANALYZE " + sql, params)
        return "\n".join(r[0] for r in cur.fetchall())


def plan_without_index(address: str) -> str:
    """The same page with index scans switched off for this session: what it costs without
    order_by_user_newest (the single-column user_address index cannot serve lower())."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SET enable_indexscan = off")
        cur.execute("SET enable_bitmapscan = off")
        try:
            return query_plan(address)
        finally:
            cur.execute("RESET enable_indexscan")
            cur.execute("RESET enable_bitmapscan")


def cpu_seconds(master_pid: int) -> float:
    """User + system CPU seconds of gunicorn's master and its workers so far (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if master_pid in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_load(base: str, addresses: int, seconds: float, clients: int) -> dict:
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        mine: list[float] = []
        while time.monotonic() < stop:
            params = {"address": address_of(rng.randrange(addresses)), "limit": 20}
            for _ in range(2):  # the first page, then the next through its cursor
                t0 = time.perf_counter()
                r = session.get(f"{base}/api/v1/orders", params=params, timeout=30)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    with lock:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    break
                cursor = r.json()["next_cursor"]
                if not cursor:
                    break
                params = {**params, "cursor": cursor}
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--addresses", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database a previous run loaded"
    )
    args = parser.parse_args()

    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    if not args.reuse:
        reset_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from orders.selectors import Order

    if args.reuse and Order.objects.count() == args.orders:
        print(f"Reusing the {args.orders:,} orders already loaded")
    else:
        if args.reuse:
            raise SystemExit("--reuse: the database does not hold --orders orders; run without")
        print(f"Loading {args.orders:,} orders over {args.addresses:,} addresses ...")
        load(args.orders, args.addresses)
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE")
    plan = query_plan(address_of(7))
    print("Query plan of one page:\n" + plan)
    no_index = plan_without_index(address_of(7))
    print("Without the index:\n" + no_index)

    port = free_port()
    env = {
        **os.environ,
        "DJANGO_DEBUG": "false",
        "API_RATE_LIMIT_REQUESTS": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    argv = [
        str(Path(sys.executable).parent / "gunicorn"),
        "bronco_project.wsgi:application",
        *("--bind", f"127.0.0.1:{port}", "--workers", str(args.workers)),
        *("--log-level", "warning"),
    ]
    server = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/health", timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("gunicorn did not come up")
            time.sleep(0.2)
        run_load(base, args.addresses, 3.0, args.clients)  # warm-up: connections, caches
        load_before = os.getloadavg()[0]
        cpu_before = cpu_seconds(server.pid)
        result = run_load(base, args.addresses, args.seconds, args.clients)
        cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000 / max(result["requests"], 1)
        single = run_load(base, args.addresses, min(args.seconds, 10.0), 1)
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    import gunicorn

    report = {
        "endpoint": "GET /api/v1/orders?address=&limit=20 (first page and the next by cursor)",
        "orders": args.orders,
        "addresses": args.addresses,
        "orders_per_address": args.orders // args.addresses,
        "server": f"gunicorn {gunicorn.__version__}, {args.workers} sync workers, DEBUG off",
        "clients": args.clients,
        "machine_cores": os.cpu_count(),
        **result,
        "server_cpu_ms_per_request": round(cpu_ms, 2),
        "one_client": {k: single[k] for k in ("requests_per_second", "p50_ms", "p99_ms")},
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "query_plan": plan.splitlines(),
        "query_plan_without_index": no_index.splitlines(),
    }
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("query_plan")}, indent=2))
    out = REPO / "bench" / "results" / "api.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
