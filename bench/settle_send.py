"""Settlement send benchmark: the sender's cost of one batched settlement, on a real anvil.

    .venv/bin/python bench/settle_send.py [--batch 100] [--rounds 3] [--profile 20]

Starts its own anvil, deploys the contracts, uses its own database (BENCH_DB, default
bronco_bench_settle, dropped and re-created) and Redis db BENCH_REDIS_DB (default 13, not
flushed). Makes `batch * rounds` real deposits, then per round settles `batch` of them with
`settlements_submit_batch` inside a transaction (as the settle task does; the broadcast runs
on commit) and prints, per round, wall and this process's CPU seconds, and the CPU seconds
of what is under the nonce row lock (allocation to commit) and of encode + sign alone. With
`--profile N`, the last round runs under cProfile and the top N functions by own time print.
Figures depend on the machine's load: the load average prints next to them.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.processes import bench_database_environment  # noqa: E402  (after the path)

UNIT, TOKEN = 10**6, 10**18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="top N of the last round")
    args = parser.parse_args()

    bench_database_environment(default_db="bronco_bench_settle")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import transaction

    from chain import client as chain_client_module
    from chain import services
    from chain.client import address_of_key, symbol_to_bytes32
    from chain.events import Deposit
    from chain.models import SettlementStatus, SettlementTx
    from chain.settlement import DepositSettlement
    from devtools.chain import USER_KEYS, deploy_contract_set, point_settings_at, start_anvil

    call_command("migrate", verbosity=0)
    node = start_anvil()
    try:
        contracts = deploy_contract_set(node)
        point_settings_at(settings, node, contracts)
        settings.CHAIN_SETTLEMENT_BATCH_MAX = args.batch

        client = node.client()
        user_key = USER_KEYS[0]
        user = address_of_key(user_key)
        client.transact(
            private_key=user_key,
            contract="MockUSDT",
            address=contracts.usdt,
            fn="approve",
            args=(contracts.vault, 2**256 - 1),
        )
        t0 = time.perf_counter()
        ids = []
        for _ in range(args.batch * args.rounds):
            receipt = client.transact(
                private_key=user_key,
                contract="BroncoVault",
                address=contracts.vault,
                fn="deposit",
                args=(symbol_to_bytes32("AAPL"), 5 * UNIT),
            )
            event = client.receipt_event(receipt, address=contracts.vault, event_type=Deposit)
            ids.append(event.deposit_id)
        made_s = time.perf_counter() - t0

        def request(deposit_id: int) -> DepositSettlement:
            return DepositSettlement(
                deposit_id=deposit_id,
                user=user,
                symbol="AAPL",
                deposit_usdt_units=5 * UNIT,
                mint_token_units=TOKEN // 10,
                refund_usdt_units=UNIT,
                cycle_id=1,
                price_per_share_units=20 * UNIT,
                fee_units=UNIT // 1000,
            )

        # CPU spent while the NonceSequence row is locked: from the allocation to the commit.
        locked = {"cpu": 0.0, "start": None}
        allocate = services.nonce_allocate

        def timed_allocate(**kwargs):  # type: ignore[no-untyped-def]
            nonce = allocate(**kwargs)
            locked["start"] = time.process_time()
            transaction.on_commit(
                lambda: locked.__setitem__(
                    "cpu", locked["cpu"] + time.process_time() - locked["start"]
                )
            )
            return nonce

        services.nonce_allocate = timed_allocate
        # Encoding and signing: `prepare` + `sign_call` where the client has them (the
        # encoding then runs before the nonce lock), else `sign`, which does both.
        sign_cpu = {"cpu": 0.0}
        client_cls = chain_client_module.ChainClient
        names = ("prepare", "sign_call") if hasattr(client_cls, "sign_call") else ("sign",)

        def timed(method):  # type: ignore[no-untyped-def]
            def wrapper(self, **kwargs):  # type: ignore[no-untyped-def]
                c0 = time.process_time()
                try:
                    return method(self, **kwargs)
                finally:
                    sign_cpu["cpu"] += time.process_time() - c0

            return wrapper

        for name in names:
            setattr(client_cls, name, timed(getattr(client_cls, name)))

        rows = []
        profiler = None
        for r in range(args.rounds):
            batch = [request(i) for i in ids[r * args.batch : (r + 1) * args.batch]]
            if args.profile and r == args.rounds - 1:
                profiler = cProfile.Profile()
            locked["cpu"] = sign_cpu["cpu"] = 0.0
            load = os.getloadavg()[0]
            w0, c0 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            with transaction.atomic():
                services.settlements_submit_batch(requests=batch, actor="bench")
            if profiler is not None:
                profiler.disable()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            rows.append((wall, cpu, locked["cpu"], sign_cpu["cpu"], load))
        sent = SettlementTx.objects.filter(status=SettlementStatus.SENT).count()
        assert sent == args.batch * args.rounds, f"{sent} settlements sent"
        for i in ids:
            services.settlement_check(kind="deposit", vault_id=i)
        confirmed = SettlementTx.objects.filter(status=SettlementStatus.CONFIRMED).count()
        assert confirmed == len(ids), f"only {confirmed} of {len(ids)} settled"
    finally:
        node.stop()

    print(f"\n{args.rounds} rounds of a {args.batch}-id settleDeposits batch ({made_s:.1f}s to")
    print(f"make {len(ids)} deposits); every id confirmed on chain afterwards")
    print("| round | wall s | CPU s | CPU s under nonce lock | CPU s encode+sign | load 1m |")
    print("|---|---|---|---|---|---|")
    for n, (wall, cpu, lock_cpu, sign_s, load) in enumerate(rows, 1):
        print(f"| {n} | {wall:.3f} | {cpu:.3f} | {lock_cpu:.3f} | {sign_s:.3f} | {load:.2f} |")
    print(
        f"median: wall {statistics.median(r[0] for r in rows):.3f}s, "
        f"CPU {statistics.median(r[1] for r in rows):.3f}s, under lock "
        f"{statistics.median(r[2] for r in rows):.3f}s, encode+sign "
        f"{statistics.median(r[3] for r in rows):.3f}s; load average now {os.getloadavg()}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
