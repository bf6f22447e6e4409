"""A test run killed from outside (SIGKILL: no teardown, no atexit) leaves no process behind,
and the next run starts as if nothing had happened.

The run under test is a pytest subprocess of tests/devtools/run_until_killed.py, which starts
anvil, an OpenBao dev server, a Celery worker (with its prefork pool), beat and the listener.
Its processes are found two ways, so neither can hide one: as descendants of the pytest
process (by pid and start time, read from /proc before the kill; their process groups too),
and by a marker variable in the environment that only this run has.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest

from tests.main.test_run_stack import stack_env  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests/devtools/run_until_killed.py"
GONE_WITHIN = 5.0  # seconds after the SIGKILL


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time) of a live process; None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # dead, waiting for its (new) parent to reap it
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
            starts[pid] = stat[3]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _left(recorded: dict[int, int], groups: set[int], marker: bytes) -> dict[int, str]:
    """Processes of the killed run still alive: recorded ones (same pid and start time),
    members of its process groups, and anything carrying its marker."""
    left = {}
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        ours = recorded.get(pid) == stat[3] or stat[2] in groups
        if not ours:
            try:
                ours = marker in Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
        if ours:
            left[pid] = _cmdline(pid)
    return left


def _listening_ports(pids) -> set[int]:
    """TCP ports on which any of `pids` listens (from /proc: socket inodes of their fds)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kill(pids: dict[int, str]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _database_url() -> str:
    """This run's database under another name: the killed run must not drop our test db."""
    return os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bronco") + "_killed"


def _drop_test_database(url: str) -> None:
    parts = urlparse(url)
    conn = psycopg2.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres",
        password=parts.password, dbname="postgres",
    )  # fmt: skip
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "test_{parts.path.lstrip("/")}" WITH (FORCE)')
    conn.close()


def _run_and_kill(tmp: Path, env: dict[str, str], marker: bytes) -> None:
    ready = tmp / "ready"
    log = open(tmp / "pytest.log", "wb")  # noqa: SIM115
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TARGET]
    run = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**env, "BRONCO_READY_FILE": str(ready)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    recorded: dict[int, int] = {}
    groups: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert run.poll() is None, (tmp / "pytest.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the run did not come up"
            time.sleep(0.2)
        time.sleep(1.0)  # the listener connects
        recorded = _descendants(run.pid)
        groups = {_stat(pid)[2] for pid in recorded if _stat(pid)} - {os.getpgrp()}
        commands = " | ".join(_cmdline(pid) for pid in recorded)
        for part in ("anvil", "server -dev", "celery", "beat", "listen_chain"):
            assert part in commands, f"{part} not among the run's processes: {commands}"
        pool = [p for p in recorded if "worker" in _cmdline(p) and "celery" in _cmdline(p)]
        assert len(pool) >= 3, "a worker and its two prefork children"
        ports = _listening_ports([run.pid, *recorded])
        assert len(ports) >= 3, f"anvil, OpenBao, the OpenD simulator listen: {ports}"

        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        gone_by = time.monotonic() + GONE_WITHIN
        while (left := _left(recorded, groups, marker)) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert left == {}, f"left running {GONE_WITHIN:g} s after the SIGKILL: {left}"
        held = {port for port in ports if not _bindable(port)}
        assert held == set(), f"ports still held after the SIGKILL: {held}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
        _kill(_left(recorded, groups, marker))  # so a failure here leaks nothing either


def test_killed_test_run_leaves_no_process_and_does_not_block_the_next(tmp_path):
    """Twice: the second run starts on what the first, killed, left behind (its test
    database, its Redis keys, its ports' recent use) and must come up all the same."""
    run_id = f"orphan-check-{uuid.uuid4().hex}"
    marker = f"BRONCO_ORPHAN_CHECK={run_id}".encode()
    database = _database_url()
    env = {**os.environ, "BRONCO_ORPHAN_CHECK": run_id, "DATABASE_URL": database}
    try:
        for attempt in (1, 2):
            tmp = tmp_path / f"run-{attempt}"
            tmp.mkdir()
            _run_and_kill(tmp, env, marker)
    finally:
        _drop_test_database(database)


def test_killed_make_run_leaves_nothing_and_the_next_starts_on_the_same_ports(
    stack_env,  # noqa: F811 - the imported fixture
    tmp_path,
):
    """`make run` (run_stack) SIGKILLed: its children end, its ports are free again, and a
    second run_stack on the same fixed ports and the same var/ (token file, beat schedule,
    chain and broker state of the killed one) comes up and stops cleanly."""
    from devtools.processes import free_ports

    names = ("web", "flower", "anvil", "opend", "opend-control", "vault")
    ports = free_ports(names)
    marker = f"BRONCO_STACK_TEST={stack_env['BRONCO_STACK_TEST']}".encode()
    argv = [
        *(sys.executable, "manage.py", "run_stack", "--no-scenario"),
        *(arg for name in names for arg in (f"--{name}-port", str(ports[name]))),
        *("--var-dir", str(tmp_path / "var")),
    ]
    for attempt in (1, 2):
        out = tmp_path / f"run-{attempt}.out"
        with open(out, "w") as log:
            proc = subprocess.Popen(
                [*argv, *(["--fresh"] if attempt == 1 else [])],
                cwd=ROOT,
                env=stack_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        recorded: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 180
            while "Serving until Ctrl-C" not in out.read_text():
                assert proc.poll() is None, f"run {attempt}:\n{out.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"run {attempt} did not come up"
                time.sleep(0.5)
            recorded = _descendants(proc.pid)
            assert set(ports.values()) <= _listening_ports(recorded), out.read_text()[-2000:]
            if attempt == 1:
                proc.kill()
                proc.wait(timeout=10)
                gone_by = time.monotonic() + GONE_WITHIN + 5
                while (left := _left(recorded, set(), marker)) and time.monotonic() < gone_by:
                    time.sleep(0.1)
                assert left == {}, f"left running after the SIGKILL: {left}"
                held = {port for port in ports.values() if not _bindable(port)}
                assert held == set(), f"ports still held after the SIGKILL: {held}"
            else:
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
                assert re.search(r"Every process stopped", out.read_text())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _kill(_left(recorded, set(), marker))
