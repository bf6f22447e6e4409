"""The web3 adapter: the only module that touches web3 objects.

Everything it returns is a Bronco type (the dataclasses below, the typed events of
`chain.events`, ints, checksummed address strings, 0x-hex strings); every node or web3 error
leaves it translated into `chain.exceptions`. `ChainClient` is synchronous over HTTP (one per
thread and URL, see `chain_client`); `ChainSubscription` is the asynchronous WebSocket side used
by the listener.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import websockets
from eth_abi import decode as abi_decode
from eth_abi import grammar as abi_grammar
from eth_abi.exceptions import DecodingError, EncodingError
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3, HTTPProvider, Web3, WebSocketProvider
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    InvalidAddress,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
)

from chain import node_errors
from chain.events import ContractEvent, EventT, event_from_abi, event_type
from chain.events import bytes32_to_symbol as bytes32_to_symbol  # re-exported: callers' door
from chain.events import symbol_to_bytes32 as symbol_to_bytes32
from chain.exceptions import (
    ChainUnavailable,
    ContractReverted,
    NodeMisconfigured,
    TransactionRejected,
    UnknownBlock,
)
from core.exceptions import TIME_LIMITS

logger = logging.getLogger(__name__)

ARTIFACTS_PATH = Path(__file__).resolve().parent / "contracts" / "artifacts.json"

# --- Bronco types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawLog:
    """A log as the node delivered it, before any decoding."""

    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)


@dataclass(frozen=True)
class NewHead:
    number: int
    hash: str


@dataclass(frozen=True)
class BlockHeader:
    number: int
    hash: str
    timestamp: int
    base_fee_per_gas: int


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    status: int
    block_number: int
    block_hash: str
    gas_used: int
    contract_address: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == 1


@dataclass(frozen=True)
class SignedTx:
    tx_hash: str
    raw: str
    nonce: int
    gas_limit: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True)
class Call:
    """A contract call (or a deployment, `to` None) as transaction fields: `data` is the
    0x-hex calldata."""

    to: str | None
    data: str

    def fields(self) -> dict[str, str]:
        return {"data": self.data} if self.to is None else {"to": self.to, "data": self.data}


@dataclass(frozen=True)
class FeeQuote:
    base_fee_per_gas: int
    max_priority_fee_per_gas: int


class UndecodableLog(Exception):
    """A log that is not one of the vault's events, or whose data does not decode.
    `event` names the ABI event its topic claims ("" for an unknown topic)."""

    def __init__(self, reason: str, detail: str = "", *, event: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.event = event


# --- artifacts and ABI ----------------------------------------------------------------------


@functools.cache
def artifacts() -> dict[str, Any]:
    """The committed compiled contracts (chain/contracts/artifacts.json)."""
    return json.loads(ARTIFACTS_PATH.read_text())


def contract_abi(name: str) -> list[dict[str, Any]]:
    return artifacts()["contracts"][name]["abi"]


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_abi_type(i) for i in item['inputs'])})"


def _abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return item["type"]


@functools.cache
def _event_table(contract: str) -> dict[str, dict[str, Any]]:
    """topic0 -> event ABI entry."""
    table = {}
    for item in contract_abi(contract):
        if item["type"] == "event":
            table["0x" + keccak(text=_signature(item)).hex()] = item
    return table


@functools.cache
def _error_table() -> dict[str, dict[str, Any]]:
    """4-byte selector -> custom error ABI entry, over every contract we ship."""
    table = {}
    for contract in artifacts()["contracts"].values():
        for item in contract["abi"]:
            if item["type"] == "error":
                table["0x" + keccak(text=_signature(item))[:4].hex()] = item
    return table


def event_topic(name: str, contract: str = "BroncoVault") -> str:
    for topic, item in _event_table(contract).items():
        if item["name"] == name:
            return topic
    raise KeyError(name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class _EventPlan:
    """How to decode one event's logs: built once per (contract, topic0)."""

    name: str
    cls: type[ContractEvent]
    indexed: tuple[tuple[str, str], ...]  # (ABI name, ABI type) of each indexed input
    plain_names: tuple[str, ...]
    plain_types: tuple[str, ...]
    static_size: int | None  # the exact data length when every plain input is static
    addresses: frozenset[str]  # ABI names of the address inputs (checksummed)


@functools.cache
def _event_plan(contract: str, topic0: str) -> _EventPlan | None:
    item = _event_table(contract).get(topic0)
    if item is None:
        return None
    cls = event_type(contract, item["name"])
    if cls is None:
        raise UndecodableLog("unknown_topic", f"{contract}.{item['name']} has no Bronco type")
    plain = [i for i in item["inputs"] if not i["indexed"]]
    plain_types = tuple(_abi_type(i) for i in plain)
    return _EventPlan(
        name=item["name"],
        cls=cls,
        indexed=tuple((i["name"], _abi_type(i)) for i in item["inputs"] if i["indexed"]),
        plain_names=tuple(i["name"] for i in plain),
        plain_types=plain_types,
        static_size=32 * len(plain) if all(t in _STATIC_TYPES for t in plain_types) else None,
        addresses=frozenset(i["name"] for i in item["inputs"] if i["type"] == "address"),
    )


def decode_log(raw: RawLog, contract: str = "BroncoVault") -> ContractEvent:
    """Decode one of `contract`'s events into its `chain.events` dataclass, strictly: the
    topic count and data length must be exactly the ABI's, and a `symbol` must be a padded
    ASCII symbol, or UndecodableLog says why. The one place events are built."""
    if not raw.topics:
        raise UndecodableLog("unknown_topic", "anonymous log")
    plan = _event_plan(contract, raw.topics[0].lower())
    if plan is None:
        raise UndecodableLog("unknown_topic", raw.topics[0])
    if len(raw.topics) != 1 + len(plan.indexed):
        raise UndecodableLog(
            "undecodable", f"{plan.name}: {len(raw.topics) - 1} indexed topics", event=plan.name
        )
    try:
        data = bytes.fromhex(raw.data[2:] if raw.data.startswith(("0x", "0X")) else raw.data)
    except ValueError as exc:
        raise UndecodableLog("undecodable", f"{plan.name}: {exc}", event=plan.name) from exc
    if plan.static_size is not None and len(data) != plan.static_size:
        raise UndecodableLog("undecodable", f"{plan.name}: {len(data)} data bytes", event=plan.name)
    try:
        args: dict[str, Any] = {}
        for (name, abi_type), topic in zip(plan.indexed, raw.topics[1:], strict=True):
            word = bytes.fromhex(topic[2:] if topic.startswith(("0x", "0X")) else topic)
            if len(word) != 32:
                raise ValueError(f"topic of {len(word)} bytes")
            if abi_type in _STATIC_TYPES:
                args[name] = _static_word(abi_type, word)
            else:
                (args[name],) = abi_decode([abi_type], word)
        if plan.static_size is not None:
            values = [
                _static_word(t, data[32 * i : 32 * i + 32]) for i, t in enumerate(plan.plain_types)
            ]
        else:
            values = list(abi_decode(plan.plain_types, data, strict=True))
        args.update(zip(plan.plain_names, values, strict=True))
    except (DecodingError, ValueError, TypeError, OverflowError) as exc:
        raise UndecodableLog("undecodable", f"{plan.name}: {exc}", event=plan.name) from exc
    for name in plan.addresses:
        args[name] = checksum_address(args[name])
    position = {
        "address": raw.address,
        "tx_hash": raw.tx_hash,
        "log_index": raw.log_index,
        "block_number": raw.block_number,
        "block_hash": raw.block_hash,
    }
    try:
        return event_from_abi(
            plan.cls, {k: _jsonable(v) for k, v in args.items()}, position=position
        )
    except ValueError as exc:
        raise UndecodableLog("undecodable", f"{plan.name}: {exc}", event=plan.name) from exc


def _static_word(abi_type: str, word: bytes) -> Any:
    """One 32-byte ABI word of a static type (uintN, address, bool, bytes32), decoded as
    strictly as eth_abi does (no stray high bits, padding zero) without its per-call setup:
    a backfill decodes hundreds of thousands. ValueError for a word that is not such a value."""
    if abi_type == "address":
        if any(word[:12]):
            raise ValueError("address word with non-zero padding")
        return "0x" + word[12:].hex()
    if abi_type == "bytes32":
        return word
    value = int.from_bytes(word, "big")
    if abi_type == "bool":
        if value > 1:
            raise ValueError(f"bool word {value}")
        return bool(value)
    bits = int(abi_type[4:])  # uintN
    if value >> bits:
        raise ValueError(f"{abi_type} word out of range")
    return value


_STATIC_TYPES = frozenset({"address", "bool", "bytes32"} | {f"uint{n}" for n in range(8, 257, 8)})


@dataclass(frozen=True)
class _FunctionPlan:
    """How to encode one (not overloaded) function's calls: built once per (contract, name)."""

    selector: bytes
    types: tuple[str, ...]
    parsed: tuple[Any, ...]  # eth_abi.grammar types of `types`


@functools.cache
def _function_plan(contract: str, fn: str) -> _FunctionPlan | None:
    items = [i for i in contract_abi(contract) if i["type"] == "function" and i["name"] == fn]
    if len(items) != 1:
        return None  # overloaded (web3 picks by the arguments) or unknown (web3 says so)
    types = tuple(_abi_type(i) for i in items[0]["inputs"])
    return _FunctionPlan(
        selector=keccak(text=_signature(items[0]))[:4],
        types=types,
        parsed=tuple(abi_grammar.parse(t) for t in types),
    )


def _canonical(abi_type: Any, value: Any) -> bool:
    """Whether `value` is already what web3's encoder would hand eth_abi for `abi_type`
    (its normalisers change nothing): an address a checksummed string, bytes as bytes, a
    string as str; arrays and tuples element by element. Anything else goes through web3."""
    if abi_type.arrlist:
        if not isinstance(value, list | tuple):
            return False
        item = abi_type.item_type
        return all(_canonical(item, v) for v in value)
    if isinstance(abi_type, abi_grammar.TupleType):
        return isinstance(value, list | tuple) and all(
            _canonical(t, v) for t, v in zip(abi_type.components, value, strict=False)
        )
    base = abi_type.base
    if base == "address":
        return isinstance(value, str) and checksum_address(value) == value
    if base == "bytes":
        return isinstance(value, bytes)
    if base == "string":
        return isinstance(value, str)
    return True


def _encode_call(codec: Any, contract: str, fn: str, args: tuple) -> str | None:
    """0x-hex calldata of `contract.fn(*args)`, byte for byte what web3's `encode_abi` gives,
    without its per-call ABI look-up, double validation and normalising walk (most of a
    100-id settlement batch's signing time). None when web3 must do it: an overloaded or
    unknown function, arguments it would normalise (hex strings for bytes, ENS names, ...),
    or arguments that do not encode (web3 then raises its own error)."""
    plan = _function_plan(contract, fn)
    if plan is None or len(args) != len(plan.types):
        return None
    if not all(_canonical(t, v) for t, v in zip(plan.parsed, args, strict=True)):
        return None
    try:
        return "0x" + (plan.selector + codec.encode(plan.types, args)).hex()
    except (EncodingError, ValueError, TypeError, OverflowError):
        return None


def decode_revert(data: Any) -> tuple[str, tuple]:
    """(custom error name, args) from revert data, or ("", ()) when it is not one of ours."""
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, str | bytes) or not data:
        return "", ()
    blob = bytes(HexBytes(data))
    item = _error_table().get("0x" + blob[:4].hex())
    if item is None:
        return "", ()
    try:
        values = abi_decode([_abi_type(i) for i in item["inputs"]], blob[4:])
    except (DecodingError, ValueError):
        return item["name"], ()
    return item["name"], tuple(_jsonable(v) for v in values)


def address_of_key(private_key: str) -> str:
    return Account.from_key(private_key).address


# --- the synchronous HTTP client ------------------------------------------------------------


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


@functools.lru_cache(maxsize=65536)
def checksum_address(address: str) -> str:
    """`to_checksum_address`, remembered: a backfill meets the same few addresses (the vault,
    its users) over and over, and the keccak behind each checksum is the decoder's cost."""
    return to_checksum_address(address)


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _raw_log_json(entry: dict[str, Any]) -> RawLog:
    """A log straight from eth_getLogs' JSON (hex strings), without web3's formatters."""
    return RawLog(
        address=checksum_address(entry["address"]),
        topics=tuple(t.lower() for t in entry["topics"]),
        data=entry["data"],
        block_number=int(entry["blockNumber"], 16),
        block_hash=entry["blockHash"].lower(),
        tx_hash=entry["transactionHash"].lower(),
        log_index=int(entry["logIndex"], 16),
        removed=bool(entry.get("removed", False)),
    )


def _raw_log(entry: Any) -> RawLog:
    return RawLog(
        address=checksum_address(entry["address"]),
        topics=tuple(_hex(t) for t in entry["topics"]),
        data=_hex(entry["data"]),
        block_number=int(entry["blockNumber"]),
        block_hash=_hex(entry["blockHash"]),
        tx_hash=_hex(entry["transactionHash"]),
        log_index=int(entry["logIndex"]),
        removed=bool(entry.get("removed", False)),
    )


def _receipt(r: Mapping[str, Any]) -> Receipt:
    """A receipt as the node sends it (JSON-RPC hex quantities, not web3's formatted
    AttributeDict): only the fields Bronco reads are decoded, never its logs."""
    contract = r.get("contractAddress")
    return Receipt(
        tx_hash=str(r["transactionHash"]).lower(),
        status=int(r["status"], 16),
        block_number=int(r["blockNumber"], 16),
        block_hash=str(r["blockHash"]).lower(),
        gas_used=int(r["gasUsed"], 16),
        contract_address=to_checksum_address(contract) if contract else None,
    )


def _translate(exc: BaseException) -> Exception:
    """Any web3/requests/socket error as a Bronco error, by class (chain.node_errors)."""
    if isinstance(exc, ContractLogicError):
        name, args = decode_revert(exc.data)
        return ContractReverted(str(exc.message or exc), error_name=name, error_args=args)
    if isinstance(exc, BlockNotFound):
        return UnknownBlock(str(exc))
    if isinstance(exc, InvalidAddress):
        return NodeMisconfigured(f"invalid address: {exc}", setting="CHAIN_VAULT_ADDRESS")
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return node_errors.transport_error(exc)
    if isinstance(exc, Web3RPCError):
        return node_errors.web3_rpc_error(exc)
    return ChainUnavailable(f"{type(exc).__name__}: {exc}")


class ChainClient:
    """Synchronous JSON-RPC over HTTP. Not shared between threads: use `chain_client()`."""

    def __init__(self, rpc_url: str, *, timeout: float = 15.0) -> None:
        self.rpc_url = rpc_url
        # web3's own retries (5 tries of every failed read) are off: Bronco reacts by error
        # class (chain.node_errors), and a hidden retry loop would hide a range refusal.
        self._w3 = Web3(
            HTTPProvider(
                rpc_url,
                request_kwargs={"timeout": timeout},
                exception_retry_configuration=None,
            )
        )
        self._contracts: dict[tuple[str, str | None], Any] = {}

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Web3Exception, requests.exceptions.RequestException, OSError) as exc:
            raise _translate(exc) from exc

    # chain state
    def chain_id(self) -> int:
        return int(self._run(lambda: self._w3.eth.chain_id))

    def block_number(self) -> int:
        return int(self._run(lambda: self._w3.eth.block_number))

    def block(self, number: int | str = "latest") -> BlockHeader | None:
        """The block's header, or None when the node does not have it (beyond its head, gone
        in a reorg, a tag it does not know). Transport errors raise."""
        try:
            b = self._run(self._w3.eth.get_block, number)
        except (TransactionRejected, UnknownBlock):
            return None
        if b is None:
            return None
        return BlockHeader(
            number=int(b["number"]),
            hash=_hex(b["hash"]),
            timestamp=int(b["timestamp"]),
            base_fee_per_gas=int(b.get("baseFeePerGas") or 0),
        )

    def block_hash(self, number: int) -> str | None:
        header = self.block(number)
        return header.hash if header else None

    def get_logs(
        self,
        *,
        from_block: int,
        to_block: int,
        address: str | Sequence[str],
        topics: Sequence[Any] | None = None,
    ) -> list[RawLog]:
        params: dict[str, Any] = {
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
            "address": address,
        }
        if topics:
            params["topics"] = list(topics)
        # The raw JSON, not `w3.eth.get_logs`: web3's result formatters (checksums, HexBytes,
        # AttributeDicts per field) were a third of a 100,000-log backfill's time.
        entries = self.request("eth_getLogs", [params])
        if not isinstance(entries, list):
            raise ChainUnavailable(f"eth_getLogs answered {type(entries).__name__}, not a list")
        try:
            logs = [_raw_log_json(e) for e in entries]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            # The node's answer, not a vault log we cannot decode (those are quarantined):
            # retried as any node fault.
            raise ChainUnavailable(f"eth_getLogs answered a malformed log: {exc!r}") from exc
        return sorted(logs, key=lambda r: (r.block_number, r.log_index))

    def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call, its `result` as the node sent it (JSON: hex strings; None for
        the node's null). A JSON-RPC error is classified like any other
        (`chain.node_errors.rpc_error`); an answer with neither `result` nor `error` raises
        ChainUnavailable (as web3's BadResponseFormat did), never passes for a null."""
        response = self._run(self._w3.provider.make_request, method, params)
        if not isinstance(response, dict):
            raise ChainUnavailable(f"{method}: the node answered {type(response).__name__}")
        error = response.get("error")
        if error is not None:
            if isinstance(error, dict):
                code = error.get("code")
                raise node_errors.rpc_error(
                    code if isinstance(code, int) else None, str(error.get("message", ""))
                )
            raise node_errors.rpc_error(None, str(error))
        if "result" not in response:
            raise ChainUnavailable(f"{method}: the node answered neither a result nor an error")
        return response["result"]

    def receipt_event(self, receipt: Receipt, *, address: str, event_type: type[EventT]) -> EventT:
        """The `event_type` log that `address` emitted in `receipt`'s transaction (e.g. the
        Deposit carrying the vault-assigned deposit id). Raises LookupError when absent."""
        logs = self.get_logs(
            from_block=receipt.block_number,
            to_block=receipt.block_number,
            address=address,
            topics=[event_topic(event_type.ABI_NAME)],
        )
        for log in logs:
            if log.tx_hash == receipt.tx_hash:
                event = decode_log(log)
                if isinstance(event, event_type):
                    return event
        raise LookupError(f"no {event_type.ABI_NAME} log in {receipt.tx_hash}")

    def event_arg(self, receipt: Receipt, *, address: str, event: str, arg: str) -> int:
        """ABI argument `arg` of the vault's `event` log in `receipt`'s transaction.
        Kept for tests/fixtures/chain.py only; new code uses `receipt_event` and attributes."""
        cls = event_type("BroncoVault", event)
        if cls is None:
            raise LookupError(f"the vault has no event {event}")
        found = self.receipt_event(receipt, address=address, event_type=cls)
        return int(getattr(found, cls.ABI_ARGS[arg]))

    def code_at(self, address: str) -> bytes:
        return bytes(self._run(self._w3.eth.get_code, to_checksum_address(address)))

    def balance(self, address: str) -> int:
        return int(self._run(self._w3.eth.get_balance, to_checksum_address(address)))

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """A raw JSON-RPC call (anvil's evm_* / anvil_* methods in dev and tests)."""
        response = self._run(self._w3.provider.make_request, method, params or [])
        if "error" in response:
            raise TransactionRejected(str(response["error"]))
        return response.get("result")

    # contracts
    def _contract(self, contract: str, address: str | None) -> Any:
        """The web3 contract object of `contract` at `address` (None: for deploying), built
        once per client: building one parses the whole ABI."""
        key = (contract, address)
        c = self._contracts.get(key)
        if c is None:
            if address is None:
                c = self._w3.eth.contract(
                    abi=contract_abi(contract),
                    bytecode=artifacts()["contracts"][contract]["bytecode"],
                )
            else:
                c = self._w3.eth.contract(
                    address=to_checksum_address(address), abi=contract_abi(contract)
                )
            self._contracts[key] = c
        return c

    def call(self, contract: str, address: str, fn: str, *args: Any) -> Any:
        c = self._contract(contract, address)
        return _jsonable(self._run(getattr(c.functions, fn)(*args).call))

    def prepare(
        self, *, contract: str, address: str | None, fn: str = "", args: tuple = ()
    ) -> Call:
        """The transaction fields (`to`, `data`) calling `contract.fn(*args)` at `address`, or
        deploying `contract` with constructor `args` when `address` is None. Pure: no node
        request, so a sender encodes before it takes its nonce lock. Raises what web3's
        encoder raises for arguments that do not fit the ABI."""
        if address is None:
            data = self._contract(contract, None).constructor(*args).data_in_transaction
            return Call(to=None, data=data)
        to = checksum_address(address)
        data = _encode_call(self._w3.codec, contract, fn, args)
        if data is None:  # an overloaded name, or arguments web3 would normalise first
            data = self._contract(contract, to).encode_abi(fn, args=list(args))
        return Call(to=to, data=data)

    def estimate_gas(
        self, *, contract: str, address: str | None, fn: str, args: tuple, sender: str
    ) -> int:
        """Gas for the call; ContractReverted (with the custom error name) when it would
        revert."""
        call = self.prepare(contract=contract, address=address, fn=fn, args=args)
        return self.estimate_call_gas(call, sender=sender)

    def estimate_call_gas(self, call: Call, *, sender: str) -> int:
        """`estimate_gas` of a prepared call."""
        tx = call.fields() | {"from": to_checksum_address(sender)}
        return int(self._run(self._w3.eth.estimate_gas, tx))

    def fee_quote(self, *, min_priority_fee: int) -> FeeQuote:
        """The latest base fee and a priority fee of at least `min_priority_fee`. A node
        without `eth_maxPriorityFeePerGas` whose `eth_feeHistory` is unusable (`reward` null
        or missing, or empty per block, as some clients answer) gets `min_priority_fee`:
        any failure of the suggestion (web3's fallback raises TypeError, KeyError or
        IndexError there; a node that refuses or cannot answer it) never leaves this
        method. Transport errors of the base fee's block read do."""
        header = self.block("latest")
        try:
            tip = int(self._run(lambda: self._w3.eth.max_priority_fee))
        except TIME_LIMITS:
            raise
        except Exception as exc:  # noqa: BLE001 - a suggestion only: the minimum stands in
            logger.info("no usable priority fee suggestion (%s): using the minimum", exc)
            tip = 0
        return FeeQuote(
            base_fee_per_gas=header.base_fee_per_gas if header else 0,
            max_priority_fee_per_gas=max(tip, min_priority_fee),
        )

    def mined_nonce(self, address: str) -> int:
        """Transactions of `address` mined in the canonical chain (the "latest" count)."""
        return int(
            self._run(self._w3.eth.get_transaction_count, to_checksum_address(address), "latest")
        )

    def pending_nonce(self, address: str) -> int:
        return int(
            self._run(self._w3.eth.get_transaction_count, to_checksum_address(address), "pending")
        )

    def sign(
        self,
        *,
        private_key: str,
        contract: str,
        address: str | None,
        fn: str,
        args: tuple,
        nonce: int,
        gas_limit: int,
        max_fee_per_gas: int,
        max_priority_fee_per_gas: int,
        chain_id: int,
    ) -> SignedTx:
        """An EIP-1559 (type 2) transaction, signed locally; nothing is sent."""
        return self.sign_call(
            private_key=private_key,
            call=self.prepare(contract=contract, address=address, fn=fn, args=args),
            nonce=nonce,
            gas_limit=gas_limit,
            max_fee_per_gas=max_fee_per_gas,
            max_priority_fee_per_gas=max_priority_fee_per_gas,
            chain_id=chain_id,
        )

    def sign_call(
        self,
        *,
        private_key: str,
        call: Call,
        nonce: int,
        gas_limit: int,
        max_fee_per_gas: int,
        max_priority_fee_per_gas: int,
        chain_id: int,
    ) -> SignedTx:
        """`sign` of a prepared call (`prepare`): only the signing, no encoding."""
        tx = call.fields() | {
            "type": 2,
            "chainId": chain_id,
            "nonce": nonce,
            "gas": gas_limit,
            "maxFeePerGas": max_fee_per_gas,
            "maxPriorityFeePerGas": max_priority_fee_per_gas,
            "value": 0,
        }
        signed = Account.sign_transaction(tx, private_key)
        return SignedTx(
            tx_hash=_hex(signed.hash),
            raw=_hex(signed.raw_transaction),
            nonce=nonce,
            gas_limit=gas_limit,
            max_fee_per_gas=max_fee_per_gas,
            max_priority_fee_per_gas=max_priority_fee_per_gas,
        )

    def send_raw(self, raw: str) -> str:
        """Broadcast; a node that already has the transaction is not an error."""
        try:
            return _hex(self._run(self._w3.eth.send_raw_transaction, raw))
        except TransactionRejected as exc:
            if "already known" in str(exc).lower() or "already imported" in str(exc).lower():
                return _hex(keccak(HexBytes(raw)))
            raise

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The mined receipt of `tx_hash`, or None while the node has none (unknown, or
        waiting in its pool). Read raw (`request`): a batch settlement's receipt carries a
        few hundred logs that web3's formatters would turn into AttributeDicts and HexBytes
        (a tenth of the chain worker's time at 200 deposits/s), and none is read."""
        r = self.request("eth_getTransactionReceipt", [tx_hash])
        if r is not None and not isinstance(r, dict):
            raise ChainUnavailable(f"eth_getTransactionReceipt answered {type(r).__name__}")
        return _receipt(r) if r and r.get("blockNumber") is not None else None

    def transaction_known(self, tx_hash: str) -> bool:
        """True when the node has `tx_hash`, mined or in its pool."""
        return self.request("eth_getTransactionByHash", [tx_hash]) is not None

    def wait_receipt(self, tx_hash: str, *, timeout: float = 30.0) -> Receipt:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"no receipt for {tx_hash} after {timeout}s")
            time.sleep(0.02)

    def transact(
        self,
        *,
        private_key: str,
        contract: str,
        address: str | None,
        fn: str = "",
        args: tuple = (),
        timeout: float = 30.0,
    ) -> Receipt:
        """Estimate, sign, send and wait: for deploys, admin calls, and users in dev/tests.
        Raises ContractReverted when the call would revert."""
        sender = address_of_key(private_key)
        call = self.prepare(contract=contract, address=address, fn=fn, args=args)
        gas = self.estimate_call_gas(call, sender=sender)
        fees = self.fee_quote(min_priority_fee=1_000_000_000)
        signed = self.sign_call(
            private_key=private_key,
            call=call,
            nonce=self.pending_nonce(sender),
            gas_limit=gas * 13 // 10,
            max_fee_per_gas=2 * fees.base_fee_per_gas + fees.max_priority_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            chain_id=self.chain_id(),
        )
        self.send_raw(signed.raw)
        try:
            return self.wait_receipt(signed.tx_hash, timeout=timeout)
        except TimeExhausted as exc:
            raise ChainUnavailable(str(exc)) from exc


_local = threading.local()


def chain_client(rpc_url: str | None = None, *, timeout: float | None = None) -> ChainClient:
    """This thread's client for `rpc_url` (default: settings.CHAIN_RPC_URL)."""
    from django.conf import settings

    url = rpc_url or settings.CHAIN_RPC_URL
    cache = getattr(_local, "clients", None)
    if cache is None:
        cache = _local.clients = {}
    client = cache.get(url)
    if client is None:
        client = cache[url] = ChainClient(
            url, timeout=timeout or getattr(settings, "CHAIN_RPC_TIMEOUT_SECONDS", 15.0)
        )
    return client


# --- the asynchronous WebSocket subscription --------------------------------------------------

_WS_ERRORS = (
    websockets.exceptions.WebSocketException,
    OSError,
    asyncio.TimeoutError,
    Web3Exception,
)


class ChainSubscription:
    """`eth_subscribe` to newHeads and to the logs of `address`, over one WebSocket.

    Use as `async with ChainSubscription(url, address) as sub:` then `await sub.next(t)`,
    which returns a NewHead, a RawLog (possibly `removed=True`), or None on timeout.
    Connection problems raise ChainUnavailable; the caller reconnects and backfills.
    """

    def __init__(self, ws_url: str, address: str) -> None:
        self.ws_url = ws_url
        self.address = to_checksum_address(address)
        self._w3: Any = None
        self._iter: Any = None
        self._heads_id = ""
        self._logs_id = ""

    async def __aenter__(self) -> ChainSubscription:
        try:
            # Connect as `async with AsyncWeb3(...)` does: `await AsyncWeb3(...)` would install
            # signal handlers, which only the main thread may, and which are the caller's.
            self._w3 = AsyncWeb3(
                WebSocketProvider(
                    self.ws_url,
                    max_connection_retries=1,
                    request_timeout=10,
                    subscription_response_queue_size=10_000,
                )
            )
            await self._w3.provider.connect()
            self._heads_id = str(await self._w3.eth.subscribe("newHeads"))
            self._logs_id = str(await self._w3.eth.subscribe("logs", {"address": self.address}))
        except _WS_ERRORS as exc:
            await self._close()
            raise ChainUnavailable(f"subscribe failed: {exc}") from exc
        self._iter = self._w3.socket.process_subscriptions().__aiter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._w3 is not None:
            try:
                await self._w3.provider.disconnect()
            except _WS_ERRORS:
                pass  # the socket is already gone; nothing left to release
            self._w3 = None

    async def block_number(self) -> int:
        try:
            return int(await self._w3.eth.block_number)
        except _WS_ERRORS as exc:
            raise ChainUnavailable(str(exc)) from exc

    async def next(self, timeout: float) -> NewHead | RawLog | None:
        try:
            message = await asyncio.wait_for(self._iter.__anext__(), timeout)
        except TimeoutError:
            return None
        except (StopAsyncIteration, *_WS_ERRORS) as exc:
            raise ChainUnavailable(f"subscription lost: {type(exc).__name__}: {exc}") from exc
        result = message["result"]
        if str(message["subscription"]) == self._heads_id:
            return NewHead(number=int(result["number"]), hash=_hex(result["hash"]))
        return _raw_log(result)
