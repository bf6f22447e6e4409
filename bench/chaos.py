"""Chaos benchmark: outside users' deposits and redeems through the whole system while its
parts are killed, and what that cost.

    .venv/bin/python bench/chaos.py [--orders 300] [--rate 2] [--fault-interval 20]
                                    [--faults broker-group,listener,...] [--rate-window 30]
                                    [--out bench/results/chaos.json]

Brings the system up under its own supervisor (`run_stack`'s DevStack: anvil, OpenBao, the
OpenD simulator, web, a worker per queue, beat, the listener, Flower; a dead process is
restarted with backoff, devtools.processes.RestartPolicy) in its own database
(bronco_bench_chaos, dropped and re-created) and **a Redis server of its own** (started here
on a free port without persistence, so it can be killed and come back empty). The scenario
driver (`manage.py simulate`'s, mix "netting": every symbol fills at once) sends real signed
deposits and redeems from generated user keys, never from Bronco's operator account. Once
orders flow, one fault every `--fault-interval` seconds, in this order:

  broker-group   kill -9 the broker queue's worker with its whole process group (its pool)
  reorg          evm_snapshot, 4 s of traffic and 2 more blocks, evm_revert, the reverted
                 blocks' signed transactions sent again (a real reorg returns them to the
                 mempool), 3 blocks mined so the new chain is the longer one
  listener       kill -9 the chain listener
  node-outage    SIGSTOP anvil for 10 s (the node answers nothing), then SIGCONT
  chain-worker   kill -9 the chain queue's worker group
  pool-child     kill -9 the busiest prefork child of the broker worker (mid-task)
  opend          kill -9 the OpenD simulator (restarted from its state file)
  redis          kill -9 the Redis server and start it again empty (queues, locks, limiter)

and prints: sent (deposits, redeems), settled, traded, refunded because of a fault (terminal
with nothing traded: in this mix every order fills, so each of those is the faults' cost),
lost (on chain, no terminal order at the end), dropped by the reorg (no longer on chain: the
user kept the money), paid twice (an id with two live settlement events), duplicate broker
orders (two broker orders with one remark), per fault: the time until the process was back,
until the next order settled after it, and the longest stretch without any settlement
between the fault and the next one (or the end: how long the pipeline stalled), and
`reconcile`'s verdict. Exit 0 only when
nothing was lost, paid twice or ordered twice, every order finished and reconcile is clean.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)

from devtools.processes import free_port, spawn, stack_environment, stop_group  # noqa: E402

DB_NAME = "bronco_bench_chaos"
# The chain faults early, while users still send (a reorg then has transactions to replace).
FAULTS = (
    "broker-group",
    "reorg",
    "listener",
    "node-outage",
    "chain-worker",
    "pool-child",
    "opend",
    "redis",
)
OPENING_CASH = "USD=10000000,HKD=50000000"


@dataclass
class FaultRecord:
    name: str
    at: float  # time.time() of the injection
    ended_at: float = 0.0  # the fault's own end (a restart seen, SIGCONT, revert done)
    back_after: float | None = None  # seconds until the process was back
    first_settled_after: float | None = None  # seconds until an order settled after it
    longest_stall: float | None = None  # longest gap without a settlement until the next fault
    note: str = ""


class OwnRedis:
    """A Redis server for this run only, without persistence: killed, it comes back empty."""

    def __init__(self, var: Path) -> None:
        self.port = free_port()
        self.var = var
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        with open(self.var / "redis.log", "ab") as log:
            self.proc = spawn(
                [
                    "redis-server",
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.var)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait()

    def wait(self, timeout: float = 15.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=5)


def _configure(redis_url: str) -> dict[str, int]:
    broker = os.environ.get("CHAOS_CELERY_BROKER_URL", redis_url)
    return stack_environment(
        db_name=DB_NAME, redis_url=redis_url, extra={"CELERY_BROKER_URL": broker}
    )


# --- faults ------------------------------------------------------------------------------


def _children_of(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _cpu(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class Chaos:
    def __init__(self, stack: Any, redis_server: OwnRedis, sim_control: str, out: Any) -> None:
        self.stack = stack
        self.redis = redis_server
        self.sim_control = sim_control
        self.out = out
        self.records: list[FaultRecord] = []

    def idle(self, seconds: float) -> None:
        """Wait while supervising (restarts of what died happen here)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.stack.supervise()
            time.sleep(0.2)

    def _kill_child(self, name: str, record: FaultRecord) -> None:
        child = self.stack.supervisor.child(name)
        restarts = len(child.restarts)
        os.killpg(child.proc.pid, signal.SIGKILL)
        started = time.monotonic()
        while len(child.restarts) == restarts or not child.alive:
            self.idle(0.2)
            if time.monotonic() - started > 120:
                record.note = "not restarted within 120 s"
                return
        record.back_after = round(time.time() - record.at, 2)

    def inject(self, name: str) -> FaultRecord:
        record = FaultRecord(name=name, at=time.time())
        self.out(f"[chaos] {time.strftime('%H:%M:%S')} fault: {name}")
        getattr(self, "_" + name.replace("-", "_"))(record)
        record.ended_at = time.time()
        self.records.append(record)
        return record

    def _broker_group(self, record: FaultRecord) -> None:
        self._kill_child("worker-broker", record)

    def _listener(self, record: FaultRecord) -> None:
        self._kill_child("listener", record)

    def _chain_worker(self, record: FaultRecord) -> None:
        self._kill_child("worker-chain", record)

    def _pool_child(self, record: FaultRecord) -> None:
        master = self.stack.supervisor.child("worker-broker").proc.pid
        pool = _children_of(master)
        if not pool:
            record.note = "no pool child found"
            return
        before = {pid: _cpu(pid) for pid in pool}
        time.sleep(0.5)
        busiest = max(pool, key=lambda pid: _cpu(pid) - before[pid])
        record.note = f"pid {busiest}, {_cpu(busiest) - before[busiest]} ticks in the last 0.5 s"
        os.kill(busiest, signal.SIGKILL)
        started = time.monotonic()
        while len([p for p in _children_of(master) if p != busiest]) < len(pool):
            self.idle(0.1)
            if time.monotonic() - started > 60:
                record.note += "; pool not refilled within 60 s"
                return
        record.back_after = round(time.time() - record.at, 2)

    def _opend(self, record: FaultRecord) -> None:
        self._kill_child("opend-sim", record)
        self._script_simulator()

    def _script_simulator(self) -> None:
        """The scenario's market script again (open markets, every symbol fills at once),
        in case the simulator's state file does not carry it."""
        from django.conf import settings

        from devtools.scenario import NETTING_SCRIPT
        from trading.opend_sim.server import SimulatorControl

        host, _, port = self.sim_control.rpartition(":")
        deadline = time.monotonic() + 30
        while True:
            try:
                control = SimulatorControl(host, int(port), timeout=2)
                control.ping()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                self.idle(0.2)
        for market in ("US", "HK"):
            control.set_market_open(market=market, is_open=True)
        for code in settings.BRONCO_SYMBOLS.values():
            if code in NETTING_SCRIPT:
                control.set_security(code=code, **NETTING_SCRIPT[code][0])
        control.close()

    def _redis(self, record: FaultRecord) -> None:
        self.redis.kill()
        self.redis.start()
        record.back_after = round(time.time() - record.at, 2)

    def _reorg(self, record: FaultRecord) -> None:
        from chain.client import chain_client
        from chain.exceptions import ChainError

        client = chain_client()
        snapshot = client.rpc("evm_snapshot", [])
        from_block = client.block_number() + 1
        self.idle(4.0)
        client.rpc("anvil_mine", [hex(2)])  # blocks to replace even when no one sent
        head = client.block_number()
        hashes = []
        for number in range(from_block, head + 1):
            block = client.rpc("eth_getBlockByNumber", [hex(number), False])
            hashes += block["transactions"]
        raws = [client.rpc("eth_getRawTransactionByHash", [h]) for h in hashes]
        if not client.rpc("evm_revert", [snapshot]):
            record.note = "evm_revert refused"
            return
        resent, refused = 0, Counter()
        for raw in raws:
            try:
                client.rpc("eth_sendRawTransaction", [raw])
                resent += 1
            except ChainError as exc:  # already known, nonce taken: as in a real reorg
                refused[type(exc).__name__] += 1
        client.rpc("anvil_mine", [hex(3)])  # the new chain is longer: it wins
        record.note = (
            f"{head - from_block + 1} blocks replaced, {len(raws)} transactions, "
            f"{resent} sent again, refused {dict(refused)}"
        )
        record.back_after = round(time.time() - record.at, 2)

    def _node_outage(self, record: FaultRecord) -> None:
        anvil = self.stack.supervisor.child("anvil").proc.pid
        os.killpg(anvil, signal.SIGSTOP)
        try:
            self.idle(10.0)
        finally:
            os.killpg(anvil, signal.SIGCONT)
        record.note = "10 s without answers"
        record.back_after = round(time.time() - record.at, 2)


# --- the run -----------------------------------------------------------------------------


def _figures(result: dict[str, Any], chaos: Chaos) -> dict[str, Any]:
    from django.conf import settings

    from chain.client import chain_client
    from chain.models import ChainEvent
    from core.models import Alert, AuditLog
    from orders.models import OrderStatus, OrderType
    from trading.opend_sim.server import SimulatorControl

    orders = result["orders"]
    sent = result["sent_records"]
    client = chain_client()
    by_key = {
        (OrderType.BUY if o.order_type == OrderType.BUY else OrderType.SELL, int(o.onchain_id)): o
        for o in orders
    }
    lost, dropped, vanished_orders = [], [], set()
    for s in sent:
        if s.kind not in ("deposit", "redeem"):
            continue
        order = by_key.get((OrderType.BUY if s.kind == "deposit" else OrderType.SELL, s.onchain_id))
        receipt = client.rpc("eth_getTransactionReceipt", [s.tx_hash])
        status = None if receipt is None else receipt["status"]
        if isinstance(status, str):
            status = int(status, 16)
        if status is None or status == 0:
            # Replaced by the reorg and not mined again (or reverted when it was): the
            # request is gone from the chain, the user kept the money.
            dropped.append(s.tx_hash)
            if order is not None:
                vanished_orders.add(order.pk)
        elif order is None or not order.is_terminal:
            lost.append(s.tx_hash)
    terminal = [o for o in orders if o.is_terminal and o.pk not in vanished_orders]
    untraded = [o for o in terminal if int(o.cost_usdt) == 0]
    reasons = Counter((o.last_error or o.hold_reason or o.status)[:80] for o in untraded)

    settlement_events = ("DepositSettled", "RedeemSettled", "DepositRefunded")
    live = ChainEvent.objects.filter(
        chain_id=settings.CHAIN_ID, name__in=settlement_events, removed_at__isnull=True
    )
    per_id = Counter(live.values_list("name", "vault_id"))
    paid_twice = sum(1 for n in per_id.values() if n > 1)

    host, _, port = chaos.sim_control.rpartition(":")
    control = SimulatorControl(host, int(port), timeout=10)
    remarks = Counter(o["remark"] for o in control.orders() if o["remark"])
    control.close()
    duplicates = sum(n - 1 for n in remarks.values() if n > 1)

    settled_times = sorted(
        at.timestamp()
        for at in AuditLog.objects.filter(
            order_id__in=[o.pk for o in orders], action="order.settled"
        ).values_list("created_at", flat=True)
    )
    last_settled = settled_times[-1] if settled_times else time.time()
    for i, record in enumerate(chaos.records):
        after = next((t for t in settled_times if t >= record.ended_at), None)
        if after is not None:
            record.first_settled_after = round(after - record.at, 2)
        until = chaos.records[i + 1].at if i + 1 < len(chaos.records) else last_settled
        marks = [record.at, *(t for t in settled_times if record.at < t < until), until]
        record.longest_stall = round(max(b - a for a, b in pairwise(marks)), 2)
    alerts = Counter(
        Alert.objects.filter(created_at__gte=result["started_at_dt"]).values_list("key", flat=True)
    )
    return {
        "sent": result["sent"],
        "orders": len(orders),
        "settled": sum(o.status == OrderStatus.EXECUTED for o in orders),
        "traded": sum(int(o.cost_usdt) > 0 for o in orders),
        "refunded_because_of_a_fault": len(untraded),
        "refund_reasons": dict(reasons.most_common(10)),
        "lost": len(lost),
        "lost_tx": lost[:20],
        "dropped_by_reorg": len(dropped),
        "paid_twice": paid_twice,
        "duplicate_broker_orders": duplicates,
        "finished": result["finished"],
        "elapsed_seconds": result["elapsed_seconds"],
        "faults": [asdict(r) for r in chaos.records],
        "alerts_opened": dict(alerts),
        "reconcile_ok": result["reconciliation"].get("ok"),
        "reconciliation": result["reconciliation"],
        # What the load generator did not send (a user's redeem with no whole share to
        # sell within its wait, a transaction that failed): the users', not Bronco's.
        "not_sent": {"skipped": result["skipped"], "errors": result["errors"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300, help="deposits + redeems")
    parser.add_argument("--redeem-share", type=float, default=0.15)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0, help="offered deposits per second")
    parser.add_argument("--fault-interval", type=float, default=20.0)
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help="comma-separated, injected in the order given (default: all, in this order): "
        + ", ".join(FAULTS),
    )
    parser.add_argument("--rate-window", type=float, default=30.0)
    parser.add_argument("--deadline", type=int, default=300, help="ORDER_DEADLINE_SECONDS")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "chaos.json"))
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if not faults:
        parser.error(f"--faults names no fault; known: {', '.join(FAULTS)}")
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")

    var = REPO / "var" / "bench-chaos"
    own_redis = OwnRedis(var / "redis")
    os.environ["ORDER_DEADLINE_SECONDS"] = str(args.deadline)
    ports = _configure(own_redis.url)
    own_redis.start()

    import django

    django.setup()
    from django.utils import timezone

    from devtools.management.commands.simulate import run_scenario
    from devtools.processes import RestartPolicy
    from devtools.report import table
    from devtools.stack import DevStack, StackConfig
    from orders.models import Order

    def say(line: str) -> None:
        print(line, flush=True)

    stack = DevStack(
        StackConfig.on_ports(
            ports, var_dir=var, rate_window=args.rate_window, deadline=args.deadline
        ),
        out=lambda line: say(line) if line.startswith("supervisor") else None,
        # Faults are deliberate: more of them than `make run` would take as a loop.
        policy=RestartPolicy(max_restarts=10, window=60.0),
    )
    sim_control = f"127.0.0.1:{ports['control']}"
    redeems = round(args.orders * args.redeem_share)
    holder: dict[str, Any] = {}
    chaos = Chaos(stack, own_redis, sim_control, say)
    code = 1
    try:
        stack.up()
        say(f"system up (own Redis {own_redis.url}); {args.orders} orders, faults: {faults}")
        started_at_dt = timezone.now()

        def scenario() -> None:
            try:
                holder["result"] = run_scenario(
                    {
                        "users": args.users,
                        "deposits": args.orders - redeems,
                        "redeems": redeems,
                        "cancels": 0,
                        "seed": args.seed,
                        "rate": args.rate,
                        "timeout": args.timeout,
                        "sim_control": sim_control,
                        "opening_cash": OPENING_CASH,
                        "no_reconcile": False,
                        "mix": "netting",
                    },
                    write=lambda line: say(line) if line.startswith("[") else None,
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                holder["error"] = repr(exc)

        thread = threading.Thread(target=scenario, name="chaos-scenario", daemon=True)
        thread.start()
        while not Order.objects.exists() and thread.is_alive():
            chaos.idle(1.0)
        rng = random.Random(args.seed)
        for name in faults:
            chaos.idle(args.fault_interval * rng.uniform(0.8, 1.2))
            if not thread.is_alive():
                break
            chaos.inject(name)
        while thread.is_alive():
            chaos.idle(1.0)
        if "error" in holder:
            say(f"scenario failed: {holder['error']}")
            return 1
        result = holder["result"]
        result["started_at_dt"] = started_at_dt
        figures = _figures(result, chaos)
    finally:
        stack.down()
        own_redis.stop()

    say("\nChaos run: outside users' deposits and redeems, faults injected during the load")
    rows = [
        ["sent", f"{figures['sent']['deposit']} deposits, {figures['sent']['redeem']} redeems"],
        ["settled (EXECUTED)", figures["settled"]],
        ["traded", figures["traded"]],
        ["refunded because of a fault", figures["refunded_because_of_a_fault"]],
        ["lost", figures["lost"]],
        ["dropped by the reorg (not on chain, or reverted)", figures["dropped_by_reorg"]],
        ["paid twice", figures["paid_twice"]],
        ["duplicate broker orders", figures["duplicate_broker_orders"]],
        ["every order finished", figures["finished"]],
        ["reconcile", "OK" if figures["reconcile_ok"] else "FAILED"],
    ]
    say(table(["", ""], rows))
    say("\nPer fault (seconds from the injection)")
    say(
        table(
            ["fault", "process back", "next settlement", "longest stall", "note"],
            [
                [
                    f["name"],
                    "-" if f["back_after"] is None else f"{f['back_after']:.1f}",
                    "-" if f["first_settled_after"] is None else f"{f['first_settled_after']:.1f}",
                    "-" if f["longest_stall"] is None else f"{f['longest_stall']:.1f}",
                    f["note"],
                ]
                for f in figures["faults"]
            ],
        )
    )
    for kind, lines in figures["not_sent"].items():
        for line in lines:
            say(f"not sent ({kind}): {line}")
    if figures["refund_reasons"]:
        say("\nWhy the untraded orders ended as they did:")
        for reason, n in figures["refund_reasons"].items():
            say(f"  {n:>5}  {reason}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": {"cpus": os.cpu_count()},
                "rate_window_seconds": args.rate_window,
                "order_deadline_seconds": args.deadline,
                **figures,
            },
            indent=2,
            default=str,
        )
    )
    say(f"wrote {out}")
    ok = (
        figures["lost"] == 0
        and figures["paid_twice"] == 0
        and figures["duplicate_broker_orders"] == 0
        and figures["finished"]
        and figures["reconcile_ok"]
    )
    code = 0 if ok else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
