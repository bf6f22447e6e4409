"""Child processes of the dev stack: started with their output in one log file each,
watched, and stopped in reverse order.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the
orchestrator, which then stops the children in order (listener and workers before the
chain and the broker they talk to). Each child also gets PR_SET_PDEATHSIG: if the
orchestrator dies without cleaning up (SIGKILL), the kernel sends its children SIGTERM,
so no orphan keeps a port.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: children then outlive a SIGKILLed parent, nothing worse


# Ports handed to a child that binds them later are drawn below Linux's ephemeral range
# (32768-60999 by default): a port the kernel picks for `bind(0)` is also what it hands to
# outgoing connections (to PostgreSQL, Redis, ...), so between our check and the child's bind
# one of those could take it. Below the range only another listener can.
_CHILD_PORTS = range(20000, 32000)
_random = random.Random()


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free (or, when it is 0, a free port for a child to bind);
    raises PortTaken when it is taken."""
    candidates = [preferred] if preferred else _random.sample(_CHILD_PORTS, 64)
    for port in candidates:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise PortTaken(preferred)


class PortTaken(Exception):
    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is already in use")
        self.port = port


class ChildFailed(Exception):
    """A child exited or did not become ready; the message names its log."""


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    log_dir: Path
    cwd: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call
            )
        child = Child(name=name, argv=argv, log_path=log_path, proc=proc)
        self.children.append(child)
        return child

    def wait_ready(
        self,
        child: Child,
        ready: Callable[[], Any],
        *,
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> Any:
        """Poll `ready()` until truthy; fail at once when the child exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not child.alive:
                raise ChildFailed(
                    f"{child.name} exited with {child.proc.returncode} before {what}; "
                    f"see {child.log_path}:\n{child.log_tail()}"
                )
            try:
                value = ready()
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{child.name}: no {what} within {timeout:.0f}s; see {child.log_path}:\n"
                    f"{child.log_tail()}"
                )
            time.sleep(interval)

    def exited(self) -> list[Child]:
        return [c for c in self.children if not c.alive]

    def stop_all(self, *, timeout: float = 15.0) -> None:
        """SIGTERM each child's process group, newest first; SIGKILL what lingers."""
        for child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.proc.wait(timeout=timeout)
        self.children.clear()


def _signal_group(child: Child, sig: int) -> None:
    if child.proc.poll() is not None:
        return
    try:
        os.killpg(child.proc.pid, sig)
    except ProcessLookupError:
        pass  # exited between the poll and the signal
