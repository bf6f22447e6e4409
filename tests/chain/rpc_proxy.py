"""A misbehaving JSON-RPC node for the tests: a small threaded HTTP server that forwards to a
real node (anvil) and misbehaves by rule, the way hosted nodes and load balancers do.

A rule is `rule(request, forward) -> Reply | None`: `request` is the decoded JSON-RPC object,
`forward()` sends it upstream and returns the decoded answer (a rule may rewrite it); None
forwards unchanged. The proxy counts requests per method (`calls`).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fixtures.chain import free_port


@dataclass
class Reply:
    """What the proxy answers instead of (or after) forwarding."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Rule = Callable[[dict, Callable[[], dict]], "Reply | None"]


def rpc_error(request: dict, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": request.get("id"), "error": {"code": code, "message": message}}


def rpc_result(request: dict, result: Any) -> dict:
    return {"jsonrpc": "2.0", "id": request.get("id"), "result": result}


def log_span(request: dict) -> int:
    """Blocks an eth_getLogs request asks for (0 for other methods)."""
    if request.get("method") != "eth_getLogs":
        return 0
    params = request["params"][0]
    return int(params["toBlock"], 16) - int(params["fromBlock"], 16) + 1


class MisbehavingNode:
    def __init__(self, upstream: str, rule: Rule | None = None) -> None:
        self.upstream = upstream
        self.rule: Rule = rule or (lambda request, forward: None)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                if isinstance(request, list):
                    return self._send(Reply(body=node._forward(body)))
                with node._lock:
                    node.calls[request.get("method", "")] += 1
                reply = node.rule(request, lambda: node._forward(body))
                if reply is None:
                    reply = Reply(body=node._forward(body))
                elif reply.body is None:
                    reply.body = node._forward(body)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.delay:
                    time.sleep(reply.delay)
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its read timeout): what the test wanted

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _forward(self, body: bytes) -> Any:
        forward = urllib.request.Request(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(forward, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MisbehavingNode:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
