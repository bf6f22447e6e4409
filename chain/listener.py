"""The chain listener behind `manage.py listen_chain`.

What it guarantees:
- Every vault log up to `head - confirmations + 1` is acted on exactly once, in block order,
  by `chain.ingest.chain_logs_commit` (one transaction per batch, checkpoint included).
- The set of logs acted on for a confirmed range always comes from `eth_getLogs` over that
  range, read when the range is confirmed. The WebSocket subscription (newHeads + the vault's
  logs) is what makes it react at once; its logs are held as unconfirmed, and one that is
  gone from the canonical range when it is confirmed (a reorg before confirmation) is dropped
  and counted, while the replacement is taken from `eth_getLogs`. Relying on the pushed logs
  alone would race the newHeads/logs delivery order, which nodes do not promise.
- On start and after every reconnect it subscribes first and then backfills from the
  checkpoint in chunks, so nothing falls in the gap. The chunk halves when the node refuses
  a range (or times out on one) and grows back after a run of accepted ranges; a rate limit
  is waited out with jitter at the same size (`chain.node_errors` says which error is which).
- A node that is the wrong one (chain id, no vault code, unknown method) stops it with
  `NodeMisconfigured` naming the setting; an unreachable node raises `chain.node_unreachable`
  once it has failed for `node_alert_after_seconds`, resolved at the next success.
- Reorgs of any depth: a checkpoint block that is no longer canonical (or a `removed: true`
  log for an event acted on) makes it walk back to the common ancestor (the highest block
  whose stored hash the node still has), mark the events of replaced blocks removed, hold
  their orders and raise a critical alert (`chain.deep_reorg`), rewind the checkpoint to the
  ancestor and re-read forward (`chain.ingest.chain_reorg_rewind`). Re-mined logs are taken
  once each, keyed by (chain, event, vault id); a re-mined request releases its order; one
  still gone once the re-read passed its block and the confirmation depth, and not waiting in
  the node's pool, closes its order with nothing paid (`reorg_holds_resolve`); one mined
  after that revives its order, which settles after all. A reorg within the confirmation
  depth touches nothing acted on: the range is simply read when it is confirmed.
- A chain that got shorter (a reorg to fewer blocks than the head it was reading to, or than
  its checkpoint) never stops it: a block the node no longer has (`UnknownBlock`: "block out
  of range", "header not found", ...) or a range end that vanished or changed while its logs
  were read makes it re-read the head and walk back from the checkpoint as for any reorg.
  Nothing of such a read is acted on, so nothing is lost or doubled.
- Bad input never stops it: such logs are quarantined; node outages are retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from eth_utils import is_address

from chain.client import ChainClient, ChainSubscription, NewHead, RawLog
from chain.exceptions import (
    ChainError,
    ChainUnavailable,
    NodeMisconfigured,
    NodeTimedOut,
    RangeTooLarge,
    RateLimited,
    UnknownBlock,
)
from chain.ingest import (
    chain_logs_commit,
    chain_logs_replay,
    chain_reorg_rewind,
    cursor_ensure,
    cursor_record_head,
    removed_log_handle,
    reorg_holds_resolve,
    stored_block_hashes,
)
from chain.node_errors import Backoff, LogChunk
from core.alerts import alert_raise, alert_resolve

logger = logging.getLogger(__name__)

ACTOR = "listen_chain"


FINALITY_MODES = ("confirmations", "finalized", "safe")
# The WebSocket loop takes up to this many queued items at once (each waited for at most
# _WS_DRAIN_WAIT seconds) before one catch-up.
_WS_DRAIN_MAX = 1000
_WS_DRAIN_WAIT = 0.002
# Restarts of one catch-up when the node lacks a block it named (the head moved back).
_MOVED_BACK_RETRIES = 3


def commit_parts(logs: list[RawLog], *, end: int, max_logs: int) -> list[tuple[int, list[RawLog]]]:
    """`logs` of a range ending at block `end` (sorted by block), cut at block boundaries into
    parts of at most `max_logs` logs (a block is never cut: one with more is a part alone),
    each with the last block it covers; the last part ends at `end`. Each part is committed
    with its own checkpoint, so a 100,000-log range is not one transaction."""
    parts: list[tuple[int, list[RawLog]]] = []
    current: list[RawLog] = []
    for log in logs:
        if len(current) >= max_logs and current[-1].block_number != log.block_number:
            parts.append((current[-1].block_number, current))
            current = []
        current.append(log)
    parts.append((end, current))
    return parts


@dataclass(frozen=True)
class ListenerConfig:
    chain_id: int
    vault: str
    rpc_url: str
    ws_url: str
    confirmations: int = 1
    chunk_blocks: int = 2000
    min_chunk_blocks: int = 1
    chunk_grow_after: int = 8
    poll_interval: float = 1.0
    reconnect_max_delay: float = 10.0
    start_block: int = 0
    idle_check_seconds: float = 5.0
    rpc_timeout: float = 15.0
    node_alert_after_seconds: float = 60.0
    finality: str = "confirmations"
    commit_logs: int = 5000

    @classmethod
    def from_settings(cls, **overrides: Any) -> ListenerConfig:
        from chain.deployment import contract_set

        contracts = contract_set()
        values: dict[str, Any] = {
            "chain_id": settings.CHAIN_ID,
            "vault": contracts.vault,
            "rpc_url": settings.CHAIN_RPC_URL,
            "ws_url": settings.CHAIN_WS_URL,
            "confirmations": settings.CHAIN_CONFIRMATIONS,
            "chunk_blocks": settings.CHAIN_BACKFILL_CHUNK_BLOCKS,
            "min_chunk_blocks": settings.CHAIN_BACKFILL_MIN_CHUNK_BLOCKS,
            "chunk_grow_after": settings.CHAIN_BACKFILL_GROW_AFTER,
            "rpc_timeout": settings.CHAIN_RPC_TIMEOUT_SECONDS,
            "node_alert_after_seconds": settings.CHAIN_NODE_ALERT_AFTER_SECONDS,
            "poll_interval": settings.CHAIN_POLL_INTERVAL_SECONDS,
            "reconnect_max_delay": settings.CHAIN_RECONNECT_MAX_DELAY_SECONDS,
            "start_block": settings.CHAIN_START_BLOCK or contracts.deploy_block,
            "finality": settings.CHAIN_FINALITY,
            "commit_logs": settings.CHAIN_BACKFILL_COMMIT_LOGS,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class ListenerStats:
    committed: int = 0
    duplicates: int = 0
    quarantined: int = 0
    orphaned_dropped: int = 0
    alerts: int = 0
    reorgs: int = 0
    reconnects: int = 0
    batches: int = 0
    head: int = 0
    checkpoint: int = -1
    chunk_halvings: int = 0
    chunk_grows: int = 0
    range_timeouts: int = 0
    rate_limited: int = 0
    get_logs_calls: int = 0
    head_moved_back: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        """Blocks between the head seen and the checkpoint (what metrics export)."""
        return max(0, self.head - self.checkpoint)


class ChainListener:
    """Run with `run(mode="ws"|"poll")`; it returns when `stop_event` is set."""

    def __init__(self, config: ListenerConfig, *, stop_event: threading.Event | None = None):
        if config.confirmations < 1:
            raise ValueError("confirmations must be at least 1 (the including block)")
        self.config = config
        self.stop_event = stop_event or threading.Event()
        self.stats = ListenerStats()
        self.chunk = LogChunk(
            maximum=config.chunk_blocks,
            minimum=config.min_chunk_blocks,
            grow_after=config.chunk_grow_after,
        )
        self._rate_backoff = Backoff(base=0.2, cap=config.reconnect_max_delay)
        self._failing_since: float | None = None
        self._alerted = False
        self._preflight_done = False
        self._unconfirmed: dict[tuple[str, int, str], RawLog] = {}
        self._unconfirmed_lock = threading.Lock()
        self._client: ChainClient | None = None
        self._checkpoint_hash = ""
        self._suspect_reorg = False
        self._tag_unsupported = False
        if config.finality not in FINALITY_MODES:
            raise ValueError(f"finality must be one of {FINALITY_MODES}, not {config.finality!r}")

    # --- the sync core (runs in one thread: the caller's in poll mode, an executor in ws) ---

    @property
    def client(self) -> ChainClient:
        if self._client is None:
            self._client = ChainClient(self.config.rpc_url, timeout=self.config.rpc_timeout)
        return self._client

    def preflight(self) -> None:
        """Refuse a node that is the wrong one, naming the setting (NodeMisconfigured): an
        invalid vault address, another chain id, no contract code at the vault address.
        Transport errors pass through (the caller retries)."""
        if not is_address(self.config.vault):
            raise NodeMisconfigured(
                f"{self.config.vault!r} is not an address", setting="CHAIN_VAULT_ADDRESS"
            )
        node_chain = self.client.chain_id()
        if node_chain != self.config.chain_id:
            raise NodeMisconfigured(
                f"the node at {self.config.rpc_url} is chain {node_chain}, "
                f"Bronco expects chain {self.config.chain_id}",
                setting="CHAIN_ID / CHAIN_RPC_URL",
            )
        if not self.client.code_at(self.config.vault):
            raise NodeMisconfigured(
                f"no contract code at the vault address {self.config.vault} on chain {node_chain}",
                setting="CHAIN_VAULT_ADDRESS",
            )
        self._preflight_done = True

    def _load_checkpoint(self) -> None:
        checkpoint = cursor_ensure(
            chain_id=self.config.chain_id,
            address=self.config.vault,
            start_block=self.config.start_block,
        )
        self.stats.checkpoint = checkpoint.block_number
        self._checkpoint_hash = checkpoint.block_hash

    def catch_up(self, head: int) -> int:
        """Act on every log confirmed at `head` past the checkpoint. Returns events written.

        `head` may be stale: the chain may have been shortened since (a reorg to fewer
        blocks), or this node may be behind the one that announced it. A block the node
        does not have (`UnknownBlock`: an error, or a range end that is gone or changed while
        its logs were read) makes it re-read the head and start over from the checkpoint,
        which `_check_checkpoint_canonical` walks back to the common ancestor when its block
        is gone. After `_MOVED_BACK_RETRIES` such restarts in a row it returns; the next
        round (poll interval, new head, idle check) carries on."""
        close_old_connections()
        if not self._preflight_done:
            self.preflight()
        before = self.stats.committed
        for attempt in range(_MOVED_BACK_RETRIES + 1):
            try:
                self._catch_up_once(head)
                break
            except UnknownBlock as exc:
                self.stats.head_moved_back += 1
                if attempt == _MOVED_BACK_RETRIES or self.stop_event.is_set():
                    logger.warning("head still moving back (%s); trying again next round", exc)
                    break
                if attempt:
                    self.stop_event.wait(min(0.05 * 2**attempt, self.config.poll_interval))
                was, head = head, self.client.block_number()
                logger.warning(
                    "the node lacks a block at or below head %s (%s): head now %s; "
                    "checking the checkpoint and reading again",
                    was,
                    exc,
                    head,
                )
        return self.stats.committed - before

    def _catch_up_once(self, head: int) -> None:
        self._load_checkpoint()
        self.stats.head = head
        self._check_checkpoint_canonical()
        target = self._confirmed_target(head)
        if target <= self.stats.checkpoint:
            cursor_record_head(chain_id=self.config.chain_id, address=self.config.vault, head=head)
            return
        start = self.stats.checkpoint + 1
        while start <= target and not self.stop_event.is_set():
            end = min(start + self.chunk.size - 1, target)
            end_hash = self._existing_block_hash(end)
            logs = self._get_logs(start, end)
            if logs is None:
                continue
            parts = commit_parts(logs, end=end, max_logs=self.config.commit_logs)
            hashes = [self._existing_block_hash(part_end) for part_end, _ in parts[:-1]]
            # The range end read again after its logs: unchanged, every block up to it was
            # the same chain throughout (hashes chain). Gone or changed, the logs may be
            # partial (a node answers a range past its head with what it has) or another
            # chain's: none of it is acted on.
            if self.client.block_hash(end) != end_hash:
                raise UnknownBlock(f"block {end} changed while its logs were read")
            hashes.append(end_hash)
            for (part_end, part), part_hash in zip(parts, hashes, strict=True):
                result = chain_logs_commit(
                    chain_id=self.config.chain_id,
                    vault=self.config.vault,
                    logs=part,
                    to_block=part_end,
                    to_block_hash=part_hash,
                    head=head,
                    actor=ACTOR,
                )
                self.stats.batches += 1
                self.stats.committed += result.committed
                self.stats.duplicates += result.duplicates
                self.stats.quarantined += result.quarantined
                self.stats.checkpoint = result.checkpoint
                self._checkpoint_hash = part_hash
            self._settle_unconfirmed(up_to=end, canonical=logs)
            start = end + 1
            self._node_ok()
            reorg_holds_resolve(
                chain_id=self.config.chain_id,
                checkpoint=result.checkpoint,
                margin=self.config.confirmations,
                on_chain=self._request_on_chain,
                tx_pending=self._transaction_pending,
                actor=ACTOR,
            )

    def _existing_block_hash(self, number: int) -> str:
        """The hash of block `number`; UnknownBlock when the node does not have it."""
        found = self.client.block_hash(number)
        if found is None:
            raise UnknownBlock(f"the node has no block {number}")
        return found

    def _confirmed_target(self, head: int) -> int:
        """The highest block to act on at `head`: the node's `finalized` / `safe` block when
        `finality` names that tag and the node knows it, else `head - confirmations + 1`. A
        node that does not know the tag is read by count from then on (warned once)."""
        by_count = head - self.config.confirmations + 1
        if self.config.finality == "confirmations" or self._tag_unsupported:
            return by_count
        try:
            tagged = self.client.block(self.config.finality)
        except ChainUnavailable:
            raise
        except ChainError as exc:
            tagged, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "no such block"
        if tagged is None:
            self._tag_unsupported = True
            logger.warning(
                "the node does not answer the %r block tag (%s): confirmations=%s instead",
                self.config.finality,
                why,
                self.config.confirmations,
            )
            return by_count
        return min(tagged.number, head)

    def replay(self, from_block: int, to_block: int) -> ListenerStats:
        """Read [from_block, to_block] again and act on any log of it Bronco has no record of
        (`listen_chain --replay FROM:TO`): idempotent, nothing doubles, the checkpoint does
        not move (blocks above it are left to the listener). Node errors are handled as in
        the backfill; a transport error stops the replay (run it again)."""
        if from_block < 0:
            raise ValueError(f"block numbers start at 0, got {from_block}")
        if from_block > to_block:
            raise ValueError(f"empty range {from_block}:{to_block}")
        close_old_connections()
        self.preflight()
        self._load_checkpoint()
        # Blocks above the checkpoint are the listener's (they may not be confirmed yet, or
        # not mined): not read here. `stats.checkpoint` tells the caller where that began.
        last = min(to_block, self.stats.checkpoint)
        start = from_block
        while start <= last and not self.stop_event.is_set():
            end = min(start + self.chunk.size - 1, last)
            logs = self._get_logs(start, end)
            if logs is None:
                continue
            result = chain_logs_replay(
                chain_id=self.config.chain_id, vault=self.config.vault, logs=logs, actor=ACTOR
            )
            self.stats.batches += 1
            self.stats.committed += result.committed
            self.stats.duplicates += result.duplicates
            self.stats.quarantined += result.quarantined
            start = end + 1
        return self.stats

    def log_on_chain(self, log: RawLog) -> bool:
        """Does the node still have this log, at its block hash (not reorged away)?"""
        found = self.client.get_logs(
            from_block=log.block_number, to_block=log.block_number, address=self.config.vault
        )
        return any(f.key == log.key and f.block_hash == log.block_hash for f in found)

    def _get_logs(self, start: int, end: int) -> list[RawLog] | None:
        """The vault's logs of [start, end], or None when the range must be asked again
        (smaller after a range refusal, the same after a rate limit). Raises what no
        retry of this range can fix: transport errors, a refusal at the smallest chunk,
        configuration errors."""
        span = end - start + 1
        self.stats.get_logs_calls += 1
        try:
            logs = self.client.get_logs(from_block=start, to_block=end, address=self.config.vault)
        except NodeTimedOut:
            if span <= self.chunk.minimum:
                raise
            self.stats.range_timeouts += 1
            self._shrink(f"timed out on {span} blocks")
            return None
        except RangeTooLarge as exc:
            if not self._shrink(f"refused {span} blocks: {exc}"):
                raise
            return None
        except RateLimited as exc:
            self.stats.rate_limited += 1
            delay = self._rate_backoff.next(at_least=getattr(exc, "retry_after", None))
            logger.warning("node rate limited eth_getLogs (%s); waiting %.2fs", exc, delay)
            self.stop_event.wait(delay)
            return None
        self._rate_backoff.reset()
        grows = self.chunk.grows
        self.chunk.accepted(span)
        if self.chunk.grows > grows:
            self.stats.chunk_grows += 1
            logger.info("node accepts %s-block ranges again; chunk now %s", span, self.chunk.size)
        return logs

    def _shrink(self, why: str) -> bool:
        if not self.chunk.shrink():
            return False
        self.stats.chunk_halvings += 1
        logger.warning("node %s; chunk now %s blocks", why, self.chunk.size)
        return True

    def _node_ok(self) -> None:
        """The node answered a full round: end an outage (and its alert)."""
        self._failing_since = None
        if self._alerted:
            self._alerted = False
            alert_resolve(key="chain.node_unreachable", actor=ACTOR)

    def _transaction_pending(self, tx_hash: str) -> bool:
        """Is the transaction waiting in the node's pool (known to it, not mined)?"""
        return self.client.receipt(tx_hash) is None and self.client.transaction_known(tx_hash)

    def _request_on_chain(self, name: str, vault_id: int) -> bool:
        """Does the vault hold this deposit/redeem at its id now (even unconfirmed)?"""
        fn = "deposits" if name == "Deposit" else "redeems"
        record = self.client.call("BroncoVault", self.config.vault, fn, vault_id)
        return int(record[0], 16) != 0 if isinstance(record[0], str) else bool(record[0])

    def _check_checkpoint_canonical(self) -> None:
        """When the checkpoint block is no longer the node's, walk back to the common ancestor
        and rewind there (see the module docstring). Runs before every catch-up."""
        number, known = self.stats.checkpoint, self._checkpoint_hash
        if number < 0 or not known:
            return
        current = self.client.block_hash(number)
        if current == known and not self._suspect_reorg:
            return
        ancestor, ancestor_hash = self._common_ancestor(below=number, checkpoint_hash=known)
        self._suspect_reorg = False
        if ancestor == number:
            return
        self.stats.alerts += 1
        rewind = chain_reorg_rewind(
            chain_id=self.config.chain_id,
            vault=self.config.vault,
            ancestor=ancestor,
            ancestor_hash=ancestor_hash,
            was_block=number,
            was_hash=known,
            now_hash=current or "",
            actor=ACTOR,
        )
        logger.warning(
            "reorg: checkpoint %s replaced; rewound to %s (%s events removed, %s orders held)",
            number,
            ancestor,
            rewind.removed,
            len(rewind.held),
        )
        self.stats.reorgs += 1
        self.stats.checkpoint = ancestor
        self._checkpoint_hash = ancestor_hash

    def _common_ancestor(self, *, below: int, checkpoint_hash: str) -> tuple[int, str]:
        """The highest block Bronco recorded (the checkpoint, blocks of live events) whose
        hash the node still has: every block up to it is unchanged (hashes chain), so
        everything above it is re-read. Falls back to the block before the start block."""
        candidates = [(below, checkpoint_hash)] + stored_block_hashes(
            chain_id=self.config.chain_id, vault=self.config.vault, below=below
        )
        for number, stored in candidates:
            if stored and self.client.block_hash(number) == stored:
                return number, stored
        start = max(self.config.start_block, 0) - 1
        return start, (self.client.block_hash(start) or "") if start >= 0 else ""

    def _settle_unconfirmed(self, *, up_to: int, canonical: list[RawLog]) -> None:
        """Forget pushed logs now confirmed; count those the canonical range no longer has."""
        keep = {(log.tx_hash, log.log_index, log.block_hash) for log in canonical}
        with self._unconfirmed_lock:
            for key, log in list(self._unconfirmed.items()):
                if log.block_number <= up_to:
                    del self._unconfirmed[key]
                    if key not in keep:
                        self.stats.orphaned_dropped += 1
                        logger.info(
                            "unconfirmed %s#%s vanished in a reorg before confirmation: dropped",
                            log.tx_hash,
                            log.log_index,
                        )

    def on_pushed_log(self, log: RawLog) -> None:
        """A log from the subscription: hold it until confirmed, or drop it when removed."""
        key = (log.tx_hash, log.log_index, log.block_hash)
        with self._unconfirmed_lock:
            if not log.removed:
                if log.block_number > self.stats.checkpoint:
                    self._unconfirmed[key] = log
                return
            if self._unconfirmed.pop(key, None) is not None:
                self.stats.orphaned_dropped += 1
                logger.info("unconfirmed %s#%s removed by the node: dropped", *key[:2])
                return
        close_old_connections()
        if removed_log_handle(chain_id=self.config.chain_id, log=log, actor=ACTOR):
            self._suspect_reorg = True

    @property
    def unconfirmed_count(self) -> int:
        with self._unconfirmed_lock:
            return len(self._unconfirmed)

    # --- poll mode ---------------------------------------------------------------------------

    def run_poll(self) -> None:
        delay = self.config.poll_interval
        while not self.stop_event.is_set():
            try:
                self.catch_up(self.client.block_number())
                delay = self.config.poll_interval
            except (ChainUnavailable, RangeTooLarge, DatabaseError) as exc:
                delay = self._note_failure(exc, delay)
            self.stop_event.wait(delay)

    def _note_failure(self, exc: Exception, delay: float) -> float:
        """Log a failed round and return the next wait (capped, doubled). A node failing
        for longer than `node_alert_after_seconds` raises `chain.node_unreachable`."""
        self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        del self.stats.errors[:-20]
        logger.warning("listener: %s: %s; retrying in %.1fs", type(exc).__name__, exc, delay)
        if isinstance(exc, DatabaseError):
            connection.close()
        elif isinstance(exc, ChainUnavailable | RangeTooLarge):
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if not self._alerted and now - self._failing_since >= (
                self.config.node_alert_after_seconds
            ):
                self._node_alert(exc, now - self._failing_since)
        return min(max(delay, 0.2) * 2, self.config.reconnect_max_delay)

    def _node_alert(self, exc: Exception, seconds: float) -> None:
        try:
            alert_raise(
                key="chain.node_unreachable",
                message=f"the listener has not reached the node for {seconds:.0f}s: {exc}",
                source=ACTOR,
                details={"rpc_url": self.config.rpc_url, "error": str(exc)[:300]},
            )
            self._alerted = True
            self.stats.alerts += 1
        except DatabaseError:
            logger.exception("could not record the node_unreachable alert")

    # --- WebSocket mode ------------------------------------------------------------------------

    def run_ws(self) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listener-db")
        try:
            asyncio.run(self._ws_main(executor))
        finally:
            executor.submit(lambda: connection.close()).result()
            executor.shutdown(wait=True)

    async def _ws_main(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()

        def in_core(fn: Callable[..., Any], *args: Any) -> Any:
            return loop.run_in_executor(executor, fn, *args)

        delay = 0.2
        first = True
        while not self.stop_event.is_set():
            if not first:
                self.stats.reconnects += 1
            first = False
            try:
                async with ChainSubscription(self.config.ws_url, self.config.vault) as sub:
                    head = await sub.block_number()
                    await in_core(self.catch_up, head)
                    delay = 0.2
                    idle = 0.0
                    while not self.stop_event.is_set():
                        item = await sub.next(0.25)
                        if item is None:
                            idle += 0.25
                            if idle >= self.config.idle_check_seconds:
                                idle = 0.0
                                await in_core(self.catch_up, await sub.block_number())
                            continue
                        idle = 0.0
                        # What queued up while the last catch-up ran is taken at once and
                        # read by one catch-up: one per head fell behind a fast chain.
                        items = [item]
                        while len(items) < _WS_DRAIN_MAX:
                            more = await sub.next(_WS_DRAIN_WAIT)
                            if more is None:
                                break
                            items.append(more)
                        head: int | None = None
                        for item in items:
                            if isinstance(item, NewHead):
                                head = item.number  # the latest: lower after a reorg
                            else:
                                await in_core(self.on_pushed_log, item)
                                if not item.removed and item.block_number > max(
                                    head or -1, self.stats.head
                                ):
                                    head = item.block_number
                        if head is not None:
                            await in_core(self.catch_up, head)
            except (ChainUnavailable, RangeTooLarge, DatabaseError) as exc:
                delay = await in_core(self._note_failure, exc, delay)
                await loop.run_in_executor(None, self.stop_event.wait, delay)

    def run(self, mode: str = "ws") -> None:
        if mode not in ("ws", "poll"):
            raise ValueError(f"unknown mode {mode!r}")
        logger.info(
            "listener starting",
            extra={"mode": mode, "vault": self.config.vault, "chain_id": self.config.chain_id},
        )
        if mode == "poll":
            try:
                self.run_poll()
            finally:
                connection.close()
        else:
            self.run_ws()
        logger.info("listener stopped at block %s", self.stats.checkpoint)
