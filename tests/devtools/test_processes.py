"""devtools.processes.spawn(): a child dies with its orchestrator, whatever kills it, and so
does what the child forked; a run killed together with its watchdog is swept by the next."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools import processes
from devtools.processes import MARKER, own_token, spawn, stop_group, sweep_orphans

ROOT = Path(__file__).resolve().parents[2]
# An orchestrator: a shell whose two background sleeps share its process group (no
# PDEATHSIG reaches them), started through spawn(); prints the shell's pid, then waits.
ORCHESTRATOR = """
import time
from devtools.processes import spawn
child = spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"])
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def _group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[2]) == pgid:
                members.append(int(entry.name))
    return members


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def orchestrator():
    """(orchestrator process, its child's pid = the child's process group)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ORCHESTRATOR],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = int(proc.stdout.readline())
    assert _wait(lambda: len(_group(child)) == 3, 5), "the shell and its two sleeps"
    yield proc, child
    proc.kill()
    proc.wait()
    for pid in _group(child):
        os.kill(pid, signal.SIGKILL)


def test_child_and_its_group_die_within_seconds_of_a_sigkilled_orchestrator(orchestrator):
    proc, child = orchestrator
    proc.kill()
    proc.wait()
    assert _wait(lambda: _group(child) == [], 5), f"left: {_group(child)}"


def test_next_run_sweeps_what_a_run_killed_with_its_watchdog_left(orchestrator):
    proc, child = orchestrator
    (watchdog,) = [
        pid
        for pid in _children(proc.pid)
        if b"devtools.watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(watchdog, signal.SIGKILL)
    proc.kill()
    proc.wait()
    # PDEATHSIG ends the shell; its sleeps are nobody's children now and would live on.
    assert _wait(lambda: not _alive(child), 5)
    time.sleep(0.5)
    left = _group(child)
    assert len(left) == 2

    assert set(sweep_orphans()) >= set(left)
    assert _group(child) == []


def test_child_outlives_the_thread_that_started_it():
    """PDEATHSIG follows the forking thread: spawn() forks from one that lasts."""
    started = []
    thread = threading.Thread(target=lambda: started.append(spawn(["sleep", "30"])))
    thread.start()
    thread.join()
    (child,) = started
    try:
        time.sleep(0.5)
        assert child.poll() is None
    finally:
        stop_group(child, timeout=5)
    assert child.returncode == -signal.SIGTERM


def test_child_carries_the_chain_of_orchestrators():
    child = spawn(
        [sys.executable, "-c", f"import os; print(os.environ['{MARKER}'])"],
        env={"PATH": os.environ["PATH"], MARKER: "1.2"},
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=30)
    assert out.decode().split() == ["1.2", own_token()]


def test_free_ports_never_hands_out_one_port_twice(monkeypatch):
    """`free_port` lets its port go before returning it, so it can return the same one
    again (here 20001 twice in a row, as it may by chance): a stack's two children then
    raced for one port and one failed with "Address already in use"."""
    picks = iter([20001, 20001, 20002, 20001, 20003])
    monkeypatch.setattr(processes, "free_port", lambda preferred=0: next(picks))
    assert processes.free_ports(["a", "b", "c"]) == {"a": 20001, "b": 20002, "c": 20003}
