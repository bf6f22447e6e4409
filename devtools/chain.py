"""A dev chain for tests and benchmarks: anvil nodes on free ports, the reference contract set
deployed on one, and the listener run in a thread against it.

- `start_anvil(*extra_args)`: an `AnvilNode` (anvil from npm) on a free port, a child that
  dies with this process; `restart()` keeps its chain state, `stop()` ends it.
- `deploy_contract_set(node)`: the contracts with settings.BRONCO_SYMBOLS, users #2-#9
  funded, the vault's reserve.
- `listener_config(node, contracts, **overrides)` and `listener_running(config)`.
- `ALL_KEYS`: anvil's ten dev accounts (#0 deployer, #1 operator, #2-#9 users).
"""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bronco_project.settings.chain import ANVIL_DEV_KEYS
from devtools.processes import free_port, spawn, stop_group

REPO = Path(__file__).resolve().parents[1]
ANVIL_BIN = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
DEPLOYER_KEY = ANVIL_DEV_KEYS[0]
OPERATOR_KEY = ANVIL_DEV_KEYS[1]
USER_KEYS = ANVIL_DEV_KEYS[2:]
# Accounts #5-#9 of anvil's mnemonic, for tests that need more users.
EXTRA_KEYS = (
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
ALL_KEYS = ANVIL_DEV_KEYS + EXTRA_KEYS


@dataclass
class AnvilNode:
    """One anvil process. `restart()` keeps the chain's state (dump, stop, load)."""

    port: int
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="anvil-")))

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def client(self):  # type: ignore[no-untyped-def]
        from chain.client import ChainClient

        return ChainClient(self.rpc_url)

    def rpc(self, method: str, params: list | None = None) -> Any:
        return self.client().rpc(method, params or [])

    def start(self, *, load_state: Path | None = None) -> AnvilNode:
        argv = [str(ANVIL_BIN), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        argv += list(self.extra_args)
        if load_state is not None:
            argv += ["--load-state", str(load_state)]
        with open(self.workdir / "anvil.log", "ab") as log:
            self.process = spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode}: {argv}")
            try:
                self.client().chain_id()
                return self
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("anvil did not become ready within 15s")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process, timeout=5)
        self.process = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop and start again on the same port with the same chain state."""
        state = self.rpc("anvil_dumpState")  # 0x-hex of gzipped JSON
        path = self.workdir / "state.json"
        path.write_bytes(gzip.decompress(bytes.fromhex(state[2:])))
        self.stop()
        time.sleep(down_for)
        self.start(load_state=path)


def start_anvil(*extra_args: str) -> AnvilNode:
    last: Exception | None = None
    for _ in range(5):
        try:
            return AnvilNode(port=free_port(), extra_args=extra_args).start()
        except RuntimeError as exc:  # port taken between free_port and bind: try another
            last = exc
    raise RuntimeError(f"could not start anvil: {last}")


def point_settings_at(settings: Any, node: AnvilNode, contracts: Any) -> None:
    """Django `settings` (the module or pytest-django's fixture) pointed at `node` and its
    contract set, with anvil's operator and deployer keys and one confirmation."""
    from chain.selectors import vault_params_forget

    vault_params_forget()  # another test's vault may have had the same address
    settings.CHAIN_ID = contracts.chain_id
    settings.CHAIN_RPC_URL = node.rpc_url
    settings.CHAIN_WS_URL = node.ws_url
    settings.CHAIN_VAULT_ADDRESS = contracts.vault
    settings.CHAIN_USDT_ADDRESS = contracts.usdt
    settings.CHAIN_START_BLOCK = contracts.deploy_block
    settings.CHAIN_OPERATOR_PRIVATE_KEY = OPERATOR_KEY
    settings.CHAIN_DEPLOYER_PRIVATE_KEY = DEPLOYER_KEY
    settings.CHAIN_CONFIRMATIONS = 1
    settings.CHAIN_SETTLEMENT_CONFIRMATIONS = 1


def deploy_contract_set(node: AnvilNode):  # type: ignore[no-untyped-def]
    """The reference set on `node`: symbols from settings, users #2-#9 funded, reserve."""
    from django.conf import settings

    from chain.client import address_of_key
    from chain.deployment import contracts_deploy

    return contracts_deploy(
        client=node.client(),
        deployer_key=DEPLOYER_KEY,
        operator_address=address_of_key(OPERATOR_KEY),
        symbols=list(settings.BRONCO_SYMBOLS),
        demo_users=[address_of_key(k) for k in ALL_KEYS[2:]],
        demo_usdt_units=1_000_000 * 10**6,
        reserve_usdt_units=10_000_000 * 10**6,
    )


@contextlib.contextmanager
def listener_running(config: Any, *, mode: str = "ws") -> Iterator[Any]:
    """Run a ChainListener in a thread for the duration of the block."""
    from chain.listener import ChainListener

    stop = threading.Event()
    listener = ChainListener(config, stop_event=stop)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            listener.run(mode=mode)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"listener-{mode}", daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=15)
        if thread.is_alive():
            raise RuntimeError("listener did not stop within 15s")
        if errors:
            raise errors[0]


def listener_config(node: AnvilNode, contracts: Any, **overrides: Any):  # type: ignore[no-untyped-def]
    from chain.listener import ListenerConfig

    values = {
        "chain_id": contracts.chain_id,
        "vault": contracts.vault,
        "rpc_url": node.rpc_url,
        "ws_url": node.ws_url,
        "confirmations": 1,
        "chunk_blocks": 500,
        "poll_interval": 0.1,
        "reconnect_max_delay": 1.0,
        "start_block": node.client().block_number() + 1,
    }
    values.update(overrides)
    return ListenerConfig(**values)
