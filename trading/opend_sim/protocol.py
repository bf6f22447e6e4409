"""OpenD framing, built from the SDK's own definitions.

A packet is a 44-byte header followed by the body:
    'F' 'T' | proto id (u32) | body format (u8: 0 protobuf, 1 json) | proto version (u8)
    | serial number (u32) | body length (u32) | SHA-1 of the body (20 bytes) | 8 reserved
little-endian (`futu.common.constant.MESSAGE_HEAD_FMT`). The body is the protobuf
`Request`/`Response` of the proto id's module in `futu.common.pb`.
"""

from __future__ import annotations

import hashlib
import importlib
import socket
import struct
from dataclasses import dataclass
from types import ModuleType

from futu.common.constant import API_PROTO_VER, MESSAGE_HEAD_FMT, ProtoId
from google.protobuf import json_format
from google.protobuf.message import Message

import trading.futu_sdk  # noqa: F401  (undoes the SDK's SIGINT handler)

HEADER_LEN = struct.calcsize(MESSAGE_HEAD_FMT)
FMT_PROTOBUF = 0
FMT_JSON = 1
MAX_BODY = 16 * 1024 * 1024

# Proto id -> module name in futu.common.pb, for every proto the simulator speaks.
PROTO_MODULES: dict[int, str] = {
    ProtoId.InitConnect: "InitConnect",
    ProtoId.GetGlobalState: "GetGlobalState",
    ProtoId.KeepAlive: "KeepAlive",
    ProtoId.Trd_GetAccList: "Trd_GetAccList",
    ProtoId.Trd_UnlockTrade: "Trd_UnlockTrade",
    ProtoId.Trd_SubAccPush: "Trd_SubAccPush",
    ProtoId.Trd_GetFunds: "Trd_GetFunds",
    ProtoId.Trd_GetPositionList: "Trd_GetPositionList",
    ProtoId.Trd_GetOrderList: "Trd_GetOrderList",
    ProtoId.Trd_PlaceOrder: "Trd_PlaceOrder",
    ProtoId.Trd_ModifyOrder: "Trd_ModifyOrder",
    ProtoId.Trd_UpdateOrder: "Trd_UpdateOrder",
    ProtoId.Trd_GetOrderFillList: "Trd_GetOrderFillList",
    ProtoId.Trd_UpdateOrderFill: "Trd_UpdateOrderFill",
    ProtoId.Trd_GetHistoryOrderList: "Trd_GetHistoryOrderList",
    ProtoId.Trd_GetHistoryOrderFillList: "Trd_GetHistoryOrderFillList",
    ProtoId.Trd_GetOrderFee: "Trd_GetOrderFee",
    ProtoId.Trd_GetMaxTrdQtys: "Trd_GetMaxTrdQtys",
    ProtoId.Qot_GetSecuritySnapshot: "Qot_GetSecuritySnapshot",
    ProtoId.Qot_GetMarketState: "Qot_GetMarketState",
}


def pb_module(proto_id: int) -> ModuleType:
    return importlib.import_module(f"futu.common.pb.{PROTO_MODULES[proto_id]}_pb2")


class ProtocolError(Exception):
    """A malformed packet: the connection is closed."""


@dataclass(frozen=True)
class Packet:
    proto_id: int
    fmt: int
    serial: int
    body: bytes


def pack(proto_id: int, serial: int, message: Message, fmt: int = FMT_PROTOBUF) -> bytes:
    if fmt == FMT_JSON:
        body = json_format.MessageToJson(message).encode()
    else:
        body = message.SerializeToString()
    sha = hashlib.sha1(body).digest()  # noqa: S324 - the protocol's integrity check
    head = struct.pack(
        MESSAGE_HEAD_FMT,
        b"F",
        b"T",
        proto_id,
        fmt,
        API_PROTO_VER,
        serial,
        len(body),
        sha,
        b"\x00" * 8,
    )
    return head + body


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_packet(sock: socket.socket) -> Packet:
    head = _recv_exact(sock, HEADER_LEN)
    h1, h2, proto_id, fmt, _ver, serial, body_len, sha, _reserved = struct.unpack(
        MESSAGE_HEAD_FMT, head
    )
    if (h1, h2) != (b"F", b"T"):
        raise ProtocolError("bad packet header (expected 'FT')")
    if body_len > MAX_BODY:
        raise ProtocolError(f"body of {body_len} bytes is too large")
    body = _recv_exact(sock, body_len)
    if hashlib.sha1(body).digest() != sha:  # noqa: S324 - the protocol's integrity check
        raise ProtocolError(f"SHA-1 mismatch on proto {proto_id} serial {serial}")
    return Packet(proto_id=proto_id, fmt=fmt, serial=serial, body=body)


def parse_request(packet: Packet) -> Message:
    request = pb_module(packet.proto_id).Request()
    if packet.fmt == FMT_JSON:
        json_format.Parse(packet.body.decode(), request)
    else:
        request.ParseFromString(packet.body)
    return request
