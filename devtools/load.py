"""A load generator that can offer hundreds of deposits per second to a dev chain.

One `eth_sendTransaction` (or a web3 `transact`) per deposit signs, sends and waits in one
round trip each: about 20-30 deposits per second on this machine. `BatchLoad` instead signs
every transaction here ahead of time (each user's nonces counted locally, from the node's
pending count at the start) and sends what is due in one JSON-RPC batch of
`eth_sendRawTransaction` every `tick` seconds; a watcher reads the vault's Deposit and
Redeem logs with `eth_getLogs` over each new range of blocks and notes when each log first
existed (what the benchmark measures latency from) and its vault id.

Dev chains only: users get gas money with `anvil_setBalance` and mock USDT minted by the
deployer (who owns MockUSDT). Used by `bench/e2e.py`; never imported by the product.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import requests
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from chain.client import address_of_key, event_topic, symbol_to_bytes32

_SELECTORS = {
    name: keccak(text=signature)[:4]
    for name, signature in {
        "deposit": "deposit(bytes32,uint256)",
        "redeem": "redeem(bytes32,uint256)",
        "approve": "approve(address,uint256)",
        "mint": "mint(address,uint256)",
    }.items()
}
MAX_FEE_PER_GAS = 100 * 10**9
PRIORITY_FEE_PER_GAS = 10**9
ETH_FUNDING_WEI = 1_000 * 10**18


def calldata(fn: str, types: list[str], args: list) -> str:  # type: ignore[type-arg]
    """ABI-encoded call of `fn` (one of deposit, redeem, approve, mint)."""
    return "0x" + (_SELECTORS[fn] + encode(types, args)).hex()


@dataclass
class LoadTx:
    """One signed user transaction of the load. `kind`: deposit or redeem; `seen_at`
    (time.time()) and `vault_id` once its log was read."""

    kind: str
    user: int
    symbol: str
    amount: int
    tx_hash: str
    raw: str
    due: float = 0.0  # seconds after the start
    sent_at: float = 0.0
    seen_at: float = 0.0
    vault_id: int | None = None


@dataclass
class LoadStats:
    sent: int = 0
    batches: int = 0
    send_errors: list[str] = field(default_factory=list)
    started_at: float = 0.0
    done_at: float = 0.0
    late_seconds_max: float = 0.0  # how far behind its schedule the sender ever was


class BatchLoad:
    """Pre-signed user transactions sent in JSON-RPC batches at a fixed schedule."""

    def __init__(
        self,
        *,
        rpc_url: str,
        chain_id: int,
        vault: str,
        usdt: str,
        keys: list[str],
        deposit_gas: int = 300_000,
        redeem_gas: int = 300_000,
    ) -> None:
        self.rpc_url = rpc_url
        self.chain_id = chain_id
        self.vault = to_checksum_address(vault)
        self.usdt = to_checksum_address(usdt)
        self.keys = keys
        self.addresses = [address_of_key(k) for k in keys]
        self.nonces: list[int] = [0] * len(keys)
        self.gas = {"deposit": deposit_gas, "redeem": redeem_gas}
        self.session = requests.Session()
        self.by_hash: dict[str, LoadTx] = {}
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._topics = {
            event_topic("Deposit"): "deposit",
            event_topic("Redeem"): "redeem",
        }

    # --- JSON-RPC --------------------------------------------------------------------
    def batch(self, calls: Iterable[tuple[str, list]]) -> list:  # type: ignore[type-arg]
        """One HTTP request carrying every call; the results in the calls' order. Raises
        RuntimeError naming the first call the node refused."""
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        if not body:
            return []
        answer = self.session.post(self.rpc_url, json=body, timeout=60).json()
        by_id = {a["id"]: a for a in answer}
        out = []
        for i in range(len(body)):
            a = by_id[i]
            if "error" in a:
                raise RuntimeError(f"{body[i]['method']}: {a['error']}")
            out.append(a["result"])
        return out

    def rpc(self, method: str, params: list) -> object:  # type: ignore[type-arg]
        return self.batch([(method, params)])[0]

    def _sign(self, key: str, nonce: int, to: str, data: str, gas: int) -> tuple[str, str]:
        signed = Account.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": to,
                "data": data,
                "gas": gas,
                "maxFeePerGas": MAX_FEE_PER_GAS,
                "maxPriorityFeePerGas": PRIORITY_FEE_PER_GAS,
                "value": 0,
            },
            key,
        )
        return "0x" + signed.hash.hex().removeprefix(
            "0x"
        ), "0x" + signed.raw_transaction.hex().removeprefix("0x")

    def _wait_mined(self, hashes: list[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(hashes)
        while pending:
            receipts = []
            for i in range(0, len(pending), 500):
                chunk = pending[i : i + 500]
                receipts += self.batch(("eth_getTransactionReceipt", [h]) for h in chunk)
            failed = [
                h for h, r in zip(pending, receipts, strict=True) if r and r["status"] != "0x1"
            ]
            if failed:
                raise RuntimeError(f"{len(failed)} setup transactions reverted, e.g. {failed[0]}")
            pending = [h for h, r in zip(pending, receipts, strict=True) if r is None]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} setup transactions not mined in {timeout} s")
            if pending:
                time.sleep(0.2)

    def _send_signed(self, raws: list[str]) -> None:
        for i in range(0, len(raws), 500):
            self.batch(("eth_sendRawTransaction", [r]) for r in raws[i : i + 500])

    # --- setup -----------------------------------------------------------------------
    def fund(self, *, deployer_key: str, usdt_units: int) -> None:
        """Gas money, `usdt_units` of mock USDT and a max approval of the vault for every
        user, all in batches; returns once all of it is mined."""
        self.batch(("anvil_setBalance", [a, hex(ETH_FUNDING_WEI)]) for a in self.addresses)
        deployer = address_of_key(deployer_key)
        nonce = int(str(self.rpc("eth_getTransactionCount", [deployer, "pending"])), 16)
        mints = []
        for i, address in enumerate(self.addresses):
            data = calldata("mint", ["address", "uint256"], [address, usdt_units])
            mints.append(self._sign(deployer_key, nonce + i, self.usdt, data, 100_000))
        self._send_signed([raw for _, raw in mints])
        counts = self.batch(("eth_getTransactionCount", [a, "pending"]) for a in self.addresses)
        self.nonces = [int(c, 16) for c in counts]
        approvals = []
        for i, key in enumerate(self.keys):
            data = calldata("approve", ["address", "uint256"], [self.vault, 2**256 - 1])
            approvals.append(self._sign(key, self.nonces[i], self.usdt, data, 100_000))
            self.nonces[i] += 1
        self._send_signed([raw for _, raw in approvals])
        self._wait_mined([h for h, _ in mints + approvals])

    def sign(self, kind: str, user: int, symbol: str, amount: int, due: float) -> LoadTx:
        """A deposit (`amount` USDT base units) or redeem (`amount` token units) of `user`,
        signed with its next nonce, to go out `due` seconds after the start."""
        data = calldata(kind, ["bytes32", "uint256"], [symbol_to_bytes32(symbol), amount])
        tx_hash, raw = self._sign(
            self.keys[user], self.nonces[user], self.vault, data, self.gas[kind]
        )
        self.nonces[user] += 1
        tx = LoadTx(kind, user, symbol, amount, tx_hash, raw, due=due)
        self.by_hash[tx_hash] = tx
        return tx

    # --- running ---------------------------------------------------------------------
    def send(self, txs: list[LoadTx], *, tick: float = 0.05) -> LoadStats:
        """Send `txs` (sorted by `due`) on their schedule: every `tick` seconds, whatever is
        due goes out as one batch. Blocks until all are sent."""
        txs = sorted(txs, key=lambda t: t.due)
        stats = self.stats = LoadStats()
        stats.started_at = start = time.time()
        i = 0
        while i < len(txs):
            tick_started = time.time()
            now = tick_started - start
            j = i
            while j < len(txs) and txs[j].due <= now:
                j += 1
            if j > i:
                stats.late_seconds_max = max(stats.late_seconds_max, now - txs[i].due)
                chunk = txs[i:j]
                sent_at = time.time()
                try:
                    self._send_signed([t.raw for t in chunk])
                except (RuntimeError, requests.RequestException) as exc:
                    stats.send_errors.append(str(exc)[:300])
                for t in chunk:
                    t.sent_at = sent_at
                stats.sent += len(chunk)
                stats.batches += 1
                i = j
            # The next batch one tick on (whatever falls due meanwhile goes in it), or when
            # the next transaction is due if that is later: never one request per
            # transaction on a machine fast enough to be on time.
            until_due = txs[i].due - (time.time() - start) if i < len(txs) else 0.0
            time.sleep(max(tick - (time.time() - tick_started), until_due, 0.001))
        stats.done_at = time.time()
        return stats

    def watch(self, from_block: int, *, poll: float = 0.05) -> threading.Thread:
        """Start a thread reading the vault's Deposit and Redeem logs from `from_block` on:
        each of our transactions gets `seen_at` and `vault_id`. `stop()` ends it."""

        def run() -> None:
            cursor = from_block
            while not self._stop.is_set():
                try:
                    head = int(str(self.rpc("eth_blockNumber", [])), 16)
                    if head >= cursor:
                        logs = self.rpc(
                            "eth_getLogs",
                            [
                                {
                                    "address": self.vault,
                                    "fromBlock": hex(cursor),
                                    "toBlock": hex(head),
                                    "topics": [list(self._topics)],
                                }
                            ],
                        )
                        now = time.time()
                        for log in logs:  # type: ignore[attr-defined]
                            tx = self.by_hash.get(log["transactionHash"])
                            if tx is not None and tx.vault_id is None:
                                tx.vault_id = int(log["topics"][1], 16)
                                tx.seen_at = now
                        cursor = head + 1
                except (RuntimeError, requests.RequestException, ValueError):
                    pass
                self._stop.wait(poll)

        thread = threading.Thread(target=run, name="load-log-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
