"""Listener benchmark: backfill throughput and live latency, on a real anvil node.

    .venv/bin/python bench/listener.py [--backfill 10000] [--live 500] [--rate 25]

Starts its own anvil, deploys the contracts, and uses its own database (bronco_bench_chain,
dropped and re-created; BENCH_DB) and Redis database 13 (flushed; BENCH_REDIS_DB), so it
never touches dev or test data.

1. Backfill: mines N Deposit events (8 users, 200 per block), then times the listener's
   catch-up from its checkpoint to the head: chunked eth_getLogs + one transaction per chunk
   writing ChainEvents, orders, audit entries and the checkpoint (orders enqueue on commit).
2. Live: sends M deposits at a fixed rate with automine on, and measures from "mined" (the
   receipt first answers, polled every millisecond) to "the order row is visible to another
   connection" (a watcher polling every millisecond), in WebSocket mode, then `--mode poll`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.processes import bench_database_environment  # noqa: E402  (after the path)

# A bench-only helper (compiled at run time with the pinned solc-js, never shipped): one
# transaction makes `count` deposits, each a real vault.deposit with its own Deposit log, so
# 100,000 logs take a few hundred transactions instead of 100,000.
DEPOSITOR_SOURCE = """
// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;
interface IBenchVault {
    function deposit(bytes32 symbol, uint256 usdtAmount) external returns (uint256);
}
interface IBenchToken {
    function approve(address spender, uint256 amount) external returns (bool);
}
contract BenchDepositor {
    function run(address usdt, address vault, bytes32 symbol, uint256 count, uint256 base)
        external
    {
        IBenchToken(usdt).approve(vault, type(uint256).max);
        for (uint256 i = 0; i < count; i++) IBenchVault(vault).deposit(symbol, base + i);
    }
}
"""

COMPILE_JS = """
const solc = require("solc");
const src = require("fs").readFileSync(0, "utf8");
const input = {language: "Solidity", sources: {"BenchDepositor.sol": {content: src}},
  settings: {evmVersion: "cancun", optimizer: {enabled: true, runs: 200},
    outputSelection: {"*": {"*": ["abi", "evm.bytecode.object"]}}}};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (out.errors || []).filter((e) => e.severity === "error");
if (errors.length) { console.error(JSON.stringify(errors)); process.exit(2); }
const c = out.contracts["BenchDepositor.sol"].BenchDepositor;
process.stdout.write("0x" + c.evm.bytecode.object);
"""


def depositor_bytecode() -> str:
    import subprocess

    return subprocess.run(
        ["node", "-e", COMPILE_JS],
        input=DEPOSITOR_SOURCE,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout


def mine_deposits(node, contracts, n: int, per_tx: int = 1000, txs_per_block: int = 8) -> int:  # type: ignore[no-untyped-def]
    """n Deposit events: one BenchDepositor per user #2-#9 (funded with that user's USDT),
    each `run` call making `per_tx` deposits; `txs_per_block` calls per mined block. The
    node must run without a block gas limit (`--disable-block-gas-limit`)."""
    import requests
    from eth_abi import encode
    from eth_utils import keccak

    from chain.client import address_of_key, symbol_to_bytes32
    from devtools.chain import ALL_KEYS

    client = node.client()
    session = requests.Session()

    def rpc(method: str, params: list) -> object:
        answer = session.post(
            node.rpc_url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            timeout=600,
        ).json()
        if "error" in answer:
            raise RuntimeError(f"{method} refused: {answer['error']}")
        return answer["result"]

    code = depositor_bytecode()
    users = [address_of_key(k) for k in ALL_KEYS[2:]]
    depositors = []
    for user in users:
        tx_hash = rpc("eth_sendTransaction", [{"from": user, "data": code, "gas": hex(2_000_000)}])
        depositors.append(client.wait_receipt(str(tx_hash)).contract_address)
    transfer = keccak(text="transfer(address,uint256)")[:4]
    for user, depositor in zip(users, depositors, strict=True):
        data = transfer + encode(["address", "uint256"], [depositor, 500_000 * 10**6])
        rpc(
            "eth_sendTransaction", [{"from": user, "to": contracts.usdt, "data": "0x" + data.hex()}]
        )
    run = keccak(text="run(address,address,bytes32,uint256,uint256)")[:4]
    symbol = symbol_to_bytes32("AAPL")
    rpc("evm_setAutomine", [False])
    sent = 0
    calls = 0
    while sent < n:
        batch = []
        for _ in range(txs_per_block):
            if sent >= n:
                break
            count = min(per_tx, n - sent)
            user = users[calls % len(users)]
            depositor = depositors[calls % len(users)]
            data = run + encode(
                ["address", "address", "bytes32", "uint256", "uint256"],
                [contracts.usdt, contracts.vault, symbol, count, 10**6 + sent],
            )
            batch.append(
                {
                    "jsonrpc": "2.0",
                    "id": calls,
                    "method": "eth_sendTransaction",
                    "params": [
                        {
                            "from": user,
                            "to": depositor,
                            "data": "0x" + data.hex(),
                            "gas": hex(200_000 + 150_000 * count),
                        }
                    ],
                }
            )
            sent += count
            calls += 1
        answers = session.post(node.rpc_url, json=batch, timeout=600).json()
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            raise RuntimeError(f"deposit batch refused: {errors[:3]}")
        rpc("evm_mine", [])
        for answer in answers:
            receipt = client.wait_receipt(answer["result"], timeout=600)
            if not receipt.succeeded:
                raise RuntimeError(f"deposit run {answer['result']} reverted")
    rpc("evm_setAutomine", [True])
    return sent


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DatabaseTime:
    """A Django execute wrapper: seconds spent in the database, by statement verb."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.statements = 0

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            verb = sql.lstrip().split(None, 1)[0].upper()
            self.seconds[verb] = self.seconds.get(verb, 0.0) + time.perf_counter() - t0
            self.statements += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_live(node, contracts, config, mode: str, n: int, rate: float) -> dict:  # type: ignore[no-untyped-def]
    import psycopg2
    import requests
    from eth_abi import encode
    from eth_utils import keccak

    from chain.client import address_of_key, symbol_to_bytes32
    from devtools.chain import ALL_KEYS, listener_running

    sender = address_of_key(ALL_KEYS[2])
    node.client().transact(
        private_key=ALL_KEYS[2],
        contract="MockUSDT",
        address=contracts.usdt,
        fn="approve",
        args=(contracts.vault, 2**256 - 1),
    )
    selector = keccak(text="deposit(bytes32,uint256)")[:4]
    mined_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        conn = psycopg2.connect(os.environ["DATABASE_URL"])
        conn.autocommit = True
        last = 0
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(id), 0) FROM orders_order")
            last = cur.fetchone()[0]
            while not stop.is_set():
                cur.execute(
                    "SELECT id, chain_tx_hash FROM orders_order WHERE id > %s ORDER BY id", [last]
                )
                now = time.perf_counter()
                for row_id, tx_hash in cur.fetchall():
                    seen_at.setdefault(tx_hash, now)
                    last = max(last, row_id)
                time.sleep(0.001)
        conn.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    session = requests.Session()
    with listener_running(config, mode=mode):
        time.sleep(1.0)  # connected and caught up
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for i in range(n):
            data = selector + encode(["bytes32", "uint256"], [symbol_to_bytes32("TSLA"), 5 + i])
            answer = session.post(
                node.rpc_url,
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "eth_sendTransaction",
                    "params": [
                        {
                            "from": sender,
                            "to": contracts.vault,
                            "data": "0x" + data.hex(),
                            # a deposit takes ~165,000 gas since the vault checks terms
                            "gas": hex(300_000),
                        }
                    ],
                },
                timeout=30,
            ).json()
            tx_hash = answer["result"]
            # anvil answers before its automine block is sealed: "mined" is when the receipt
            # (block included) first shows, polled every millisecond.
            while True:
                receipt = session.post(
                    node.rpc_url,
                    json={
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "eth_getTransactionReceipt",
                        "params": [tx_hash],
                    },
                    timeout=30,
                ).json()
                if receipt.get("result"):
                    if receipt["result"]["status"] != "0x1":
                        raise RuntimeError(f"live deposit {tx_hash} reverted")
                    break
                time.sleep(0.001)
            mined_at[tx_hash] = time.perf_counter()
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 60
        while len(set(mined_at) & set(seen_at)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    stop.set()
    watcher.join()
    latencies = [(seen_at[h] - t) * 1000 for h, t in mined_at.items() if h in seen_at]
    return {
        "events": n,
        "seen": len(latencies),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backfill", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=500)
    parser.add_argument("--rate", type=float, default=25.0, help="live deposits per second")
    parser.add_argument("--chunk", type=int, default=2000, help="backfill chunk (blocks)")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument(
        "--profile",
        choices=("cumulative", "tottime"),
        help="run the backfill under cProfile and print the top 40 by this key",
    )
    args = parser.parse_args()

    bench_database_environment(default_db="bronco_bench_chain")
    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from chain.listener import ChainListener
    from chain.models import ChainEvent
    from devtools.chain import deploy_contract_set, listener_config, start_anvil

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    node = start_anvil("--disable-block-gas-limit")
    try:
        contracts = deploy_contract_set(node)
        start_block = node.client().block_number() + 1
        t0 = time.perf_counter()
        mined = mine_deposits(node, contracts, args.backfill)
        generate_s = time.perf_counter() - t0
        head = node.client().block_number()

        config = listener_config(
            node,
            contracts,
            start_block=start_block,
            chunk_blocks=args.chunk,
            poll_interval=args.poll_interval,
        )
        listener = ChainListener(config)
        profiler = cProfile.Profile() if args.profile else None
        db = DatabaseTime()
        # One database connection for the whole backfill, so its server process's CPU time
        # can be read (the listener otherwise reconnects at each catch-up).
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = None
        listener.preflight()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend_pid = cursor.fetchone()[0]
        pids = {"listener": os.getpid(), "postgres": backend_pid, "anvil": node.process.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        with connection.execute_wrapper(db):
            listener.catch_up(head)
        if profiler is not None:
            profiler.disable()
        backfill_s = time.perf_counter() - t0
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] == backend_pid, "the backfill changed connections"
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.profile).print_stats(40)
        assert ChainEvent.objects.filter(name="Deposit").count() == mined, "backfill missed logs"

        ws = poll = None
        if args.live:
            ws = measure_live(node, contracts, config, "ws", args.live, args.rate)
            poll = measure_live(node, contracts, config, "poll", args.live, args.rate)
    finally:
        node.stop()
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()

    print()
    print(
        f"anvil 1.7.1, confirmations=1, backfill chunk={args.chunk} blocks, "
        f"poll interval={args.poll_interval}s, live rate={args.rate}/s"
    )
    print(f"(generated {mined} deposits in {generate_s:.1f}s over {head - start_block + 1} blocks)")
    print()
    print(f"| {'measure':<38} | {'ws':>10} | {'poll':>10} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|")
    rate = mined / backfill_s
    in_db = sum(db.seconds.values())
    print(
        f"backfill: {backfill_s:.2f}s, of which {in_db:.2f}s in {db.statements} database "
        f"statements ({', '.join(f'{k} {v:.2f}s' for k, v in sorted(db.seconds.items()))}); "
        f"load average before/after: {load_before} / {os.getloadavg()}"
    )
    busy = sum(cpu.values())
    print(
        "CPU seconds used during the backfill: "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
        + f" (sum {busy:.2f}): {mined / busy:.0f} logs per CPU-second of the three. PostgreSQL "
        "indexes a COPY while the listener formats the next rows (the COPY is streamed), so on "
        "an idle machine with two cores the wall time lies between the largest and the sum: "
        f"{mined / busy:.0f}-{mined / max(cpu.values()):.0f} logs/s"
    )
    print(f"| {f'backfill {mined} Deposit logs (s)':<38} | {backfill_s:>10.2f} | {'(same)':>10} |")
    print(f"| {'backfill throughput (logs/s)':<38} | {rate:>10.0f} | {'(same)':>10} |")
    if ws is None or poll is None:
        return
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max"), ("mean", "mean")):
        row = f"live mined -> order committed {label} (ms)"
        print(f"| {row:<38} | {ws[key]:>10.1f} | {poll[key]:>10.1f} |")
    print(
        f"| {'live events seen / sent':<38} | {ws['seen']:>6}/{ws['events']:<3} "
        f"| {poll['seen']:>6}/{poll['events']:<3} |"
    )


if __name__ == "__main__":
    main()
