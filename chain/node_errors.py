"""Node errors by class, and what Bronco does for each: the one place that reads a node's
error codes, messages and HTTP statuses.

- Range too large (`RangeTooLarge`): -32005 "query returned more than 10000 results",
  -32602/-32600 "block range is too large" / "exceed maximum block range", "Log response size
  exceeded", "more than N results", HTTP 413. A read timeout (`NodeTimedOut`) on an
  eth_getLogs range wider than the smallest chunk counts too. Reaction: split the range.
- Unknown block (`UnknownBlock`): the node lacks a block the request named, beyond its head or
  gone from its chain: anvil's "BlockOutOfRangeError: block height is N but requested was M",
  geth's "block range extends beyond current head block", "header not found" and "unknown
  block", Besu's "Block not found", Nethermind's "N could not be found". Checked before the
  range refusals (geth's text says "block range"). Reaction: the head moved back (a reorg
  that shortened the chain, or a lagging backend): re-read the head, check the checkpoint
  against the node (walk back to the common ancestor when its block is gone), carry on.
- Rate limited or over quota (`RateLimited`): -32005 "limit exceeded", "rate limit",
  "quota", HTTP 429 (`Retry-After` honoured). Reaction: wait with jitter and ask the same
  range again; the chunk keeps its size.
- Transport (`ChainUnavailable`): connection refused or reset, a timeout on a small request,
  HTTP 5xx. Reaction: retry with capped backoff; alert `chain.node_unreachable` after
  `CHAIN_NODE_ALERT_AFTER_SECONDS`.
- Configuration (`NodeMisconfigured`): wrong chain id, no code at the vault address, an
  invalid address, an unknown method (-32601), HTTP 401/403. Reaction: stop, naming the
  setting to fix.

Anything else a node answers is `TransactionRejected` (the request itself was refused).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

import requests

from chain.exceptions import (
    ChainUnavailable,
    NodeMisconfigured,
    NodeTimedOut,
    RangeTooLarge,
    RateLimited,
    TransactionRejected,
    UnknownBlock,
)

_RANGE = re.compile(
    r"block range"
    r"|range (is )?too (large|wide|big)"
    r"|exceeds? (the )?max(imum)? (block )?range"
    r"|ranges? over \d+"
    r"|limited to a [\d,]+ (block )?range"
    r"|response size"
    r"|query returned more than"
    r"|more than [\d,]+ (results|logs)"
    r"|too many (results|logs|blocks)",
    re.IGNORECASE,
)
_UNKNOWN_BLOCK = re.compile(
    r"block ?out ?of ?range"
    r"|block height is \d+ but requested"
    r"|beyond (the )?(current )?head"
    r"|(above|after|ahead of|past) the (current |latest )?head"
    r"|header (was )?not found"
    r"|unknown block"
    r"|block (was )?not found"
    r"|block (\S+ )?(does not exist|is not available yet)"
    r"|^\s*(0x[0-9a-f]+|\d+) could not be found",
    re.IGNORECASE,
)
_RATE = re.compile(
    r"rate.?limit|limit exceeded|too many requests|quota|compute units|credits|throughput"
    r"|capacity exceeded|request limit",
    re.IGNORECASE,
)
_UNKNOWN_METHOD = re.compile(
    r"method not found|method .* (does not exist|is not available|not supported)"
    r"|unsupported method",
    re.IGNORECASE,
)


def rpc_error(code: int | None, message: str, *, retry_after: float | None = None) -> Exception:
    """The Bronco error for a JSON-RPC error object (`code`, `message`)."""
    text = str(message)
    if _UNKNOWN_BLOCK.search(text):
        return UnknownBlock(text)
    if _RANGE.search(text):
        return RangeTooLarge(text)
    if code in (-32005, 429) or _RATE.search(text):
        error = RateLimited(text)
        error.retry_after = retry_after  # type: ignore[attr-defined]
        return error
    if code == -32601 or _UNKNOWN_METHOD.search(text):
        return NodeMisconfigured(
            f"the node does not offer this method: {text}", setting="CHAIN_RPC_URL"
        )
    if code == -32602 and "address" in text.lower():
        return NodeMisconfigured(
            f"the node refused an address: {text}", setting="CHAIN_VAULT_ADDRESS"
        )
    return TransactionRejected(text)


def _body_error(response: requests.Response) -> tuple[int | None, str] | None:
    """The JSON-RPC error object of an HTTP error answer's body, when it carries one."""
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return None
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code")
        return (code if isinstance(code, int) else None), str(error.get("message", ""))
    return None


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def http_error(response: requests.Response) -> Exception:
    """The Bronco error for an HTTP answer that is not 2xx."""
    status = response.status_code
    retry_after = _retry_after(response)
    from_body = _body_error(response)
    if status == 413:
        return RangeTooLarge(f"HTTP 413: {from_body[1] if from_body else response.reason}")
    if status == 429:
        error = RateLimited(f"HTTP 429: {from_body[1] if from_body else response.reason}")
        error.retry_after = retry_after  # type: ignore[attr-defined]
        return error
    if status in (401, 403):
        return NodeMisconfigured(
            f"HTTP {status} from the node: credentials refused", setting="CHAIN_RPC_URL"
        )
    if from_body is not None:
        classified = rpc_error(*from_body, retry_after=retry_after)
        if not isinstance(classified, TransactionRejected):
            return classified
    return ChainUnavailable(f"HTTP {status} {response.reason}")


def transport_error(exc: BaseException) -> Exception:
    """The Bronco error for a requests/socket failure (no usable answer from the node)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return http_error(exc.response)
    if isinstance(exc, requests.exceptions.ReadTimeout | TimeoutError):
        return NodeTimedOut(f"read timeout: {exc}")
    return ChainUnavailable(f"{type(exc).__name__}: {exc}")


def web3_rpc_error(exc: Any) -> Exception:
    """The Bronco error for web3's Web3RPCError (its `rpc_response` holds the error)."""
    response = getattr(exc, "rpc_response", None) or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return rpc_error(code if isinstance(code, int) else None, str(error.get("message", "")))
    return rpc_error(None, str(getattr(exc, "message", exc)))


# --- reactions ------------------------------------------------------------------------------


@dataclass
class LogChunk:
    """The eth_getLogs range size: halved on a range refusal, doubled back after
    `grow_after` accepted ranges in a row, always within [minimum, maximum]."""

    maximum: int
    minimum: int = 1
    grow_after: int = 8
    size: int = 0
    streak: int = 0
    shrinks: int = 0
    grows: int = 0

    def __post_init__(self) -> None:
        self.minimum = max(1, min(self.minimum, self.maximum))
        self.size = self.size or self.maximum

    def shrink(self) -> bool:
        """Halve; False when already at the minimum (the refusal is then not about size)."""
        self.streak = 0
        if self.size <= self.minimum:
            return False
        self.size = max(self.minimum, self.size // 2)
        self.shrinks += 1
        return True

    def accepted(self, span: int) -> None:
        """A range of `span` blocks was answered. Only full-size ranges count toward growing
        (the short tail at the head says nothing about what the node accepts)."""
        if span < self.size:
            return
        self.streak += 1
        if self.streak >= self.grow_after and self.size < self.maximum:
            self.size = min(self.maximum, self.size * 2)
            self.streak = 0
            self.grows += 1


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter; `reset()` after a success."""

    base: float = 0.2
    cap: float = 10.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self, at_least: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        delay = self.rng.uniform(ceiling / 2, ceiling)
        return max(delay, min(at_least or 0.0, self.cap * 6))

    def reset(self) -> None:
        self.failures = 0
