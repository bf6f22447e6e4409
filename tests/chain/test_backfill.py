"""Backfill against a node that limits eth_getLogs ranges (as hosted nodes do): the listener
halves its chunk until the node accepts it, and still misses nothing."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chain.models import ChainEvent
from tests.fixtures.chain import free_port, listener_config, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

MAX_RANGE = 3


def range_limited_node(upstream: str) -> ThreadingHTTPServer:
    """A JSON-RPC pass-through to anvil that refuses eth_getLogs over more than MAX_RANGE
    blocks with the error hosted nodes give."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = json.loads(body)
            if request.get("method") == "eth_getLogs":
                params = request["params"][0]
                span = int(params["toBlock"], 16) - int(params["fromBlock"], 16) + 1
                if span > MAX_RANGE:
                    answer = {
                        "jsonrpc": "2.0",
                        "id": request["id"],
                        "error": {"code": -32005, "message": f"block range exceeds {MAX_RANGE}"},
                    }
                    return self._reply(json.dumps(answer).encode())
            forward = urllib.request.Request(
                upstream, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(forward, timeout=10) as response:
                self._reply(response.read())

        def _reply(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_backfill_halves_its_chunk_when_the_node_refuses_a_range(
    anvil, deployed_contracts, chain_user, run_listener
):
    user = chain_user(9)
    user.approve()
    start = anvil.client().block_number() + 1
    txs = [user.deposit("AAPL", 10**6 + i).tx_hash for i in range(12)]
    proxy = range_limited_node(anvil.rpc_url)
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        config = listener_config(
            anvil, deployed_contracts, rpc_url=url, start_block=start, chunk_blocks=64
        )
        with run_listener(config, mode="poll") as listener:
            wait_for(lambda: ChainEvent.objects.filter(tx_hash__in=txs).count() == 12)
            assert listener.stats.chunk_halvings >= 4  # 64 -> 32 -> 16 -> 8 -> 4 -> 2
    finally:
        proxy.shutdown()
