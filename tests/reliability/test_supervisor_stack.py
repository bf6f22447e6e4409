"""`manage.py run_stack` (what `make run` runs) supervises its children, as a user sees it:
kill -9 a child of a running stack and it is back within its backoff, counted in /metrics
and raised as an alert; kill it again past the crash-loop rule and the stack stops with a
message, leaving no process behind."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import requests

from tests.main.test_run_stack import PORTS, ROOT, _our_processes, stack_env  # noqa: F401

pytestmark = pytest.mark.e2e


def _pids_running(marker: str, needle: str) -> list[int]:
    found = []
    for pid in _our_processes(marker):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd:
            found.append(pid)
    return found


def _pids_running_any(needle: str) -> list[int]:
    """OpenBao gets a minimal environment (no marker): found by its command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmd:
                found.append(int(entry.name))
    return found


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen, out: Path):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc.poll() is None, f"run_stack exited before {what}:\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what}:\n{out.read_text()[-3000:]}"
        time.sleep(0.3)
    return value


def _open_alert(database_url: str, key: str) -> tuple[str, int] | None:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT severity, count FROM orders_alert WHERE key = %s AND resolved_at IS NULL",
                [key],
            )
            return cursor.fetchone()
    finally:
        conn.close()


def test_a_killed_child_is_restarted_counted_alerted_and_a_crash_loop_stops_the_stack(
    stack_env,  # noqa: F811 - the imported fixture
    tmp_path,
):
    marker = stack_env["BRONCO_STACK_TEST"]
    out = tmp_path / "run_stack.out"
    argv = [
        *(sys.executable, "manage.py", "run_stack", "--no-scenario", "--fresh"),
        *PORTS,
        *("--var-dir", str(tmp_path / "var")),
        *("--max-restarts", "1", "--restart-window", "300"),
    ]
    log = open(out, "w+")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, env=stack_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "Serving until Ctrl-C" in out.read_text(), 180, "stack up", proc, out)
        text = out.read_text()
        assert "more than 1 restarts of one process within 300 s is a crash loop" in text
        web = re.search(r"admin\s+(http://127\.0\.0\.1:\d+)/admin/", text).group(1)

        (listener,) = _pids_running(marker, "listen_chain")
        os.killpg(os.getpgid(listener), signal.SIGKILL)
        # The killed process may still be listed for a moment (not yet reaped): wait for a
        # listener that is not it.
        restarted = _wait(
            lambda: [p for p in _pids_running(marker, "listen_chain") if p != listener],
            30,
            "listener restart",
            proc,
            out,
        )
        assert restarted and listener not in restarted
        assert re.search(r"listener \(pid \d+\) exited with -9; restarting in 1 s", out.read_text())
        assert "listener restarted" in out.read_text()

        metrics = requests.get(f"{web}/metrics", timeout=10).text
        assert re.search(r'bronco_process_restarts_total\{process="listener"\} 1\.0', metrics)
        assert _open_alert(stack_env["DATABASE_URL"], "stack:restarted:listener") == (
            "warning",
            1,
        )

        # OpenBao (dev mode) killed: restarted, seeded again, a new token in the token file
        # that every process reads at its next login.
        token_file = tmp_path / "var" / "openbao" / "token"
        old_token = token_file.read_text()
        (bao,) = [p for p in _pids_running_any("server -dev") if p in _descendants(proc.pid)]
        os.kill(bao, signal.SIGKILL)
        _wait(lambda: "OpenBao seeded again" in out.read_text(), 60, "re-seed", proc, out)
        assert token_file.read_text() != old_token
        read = subprocess.run(
            [
                *(sys.executable, "manage.py", "shell", "-c"),
                "from core.secrets import get_secret as g; print(len(g('operator_private_key')))",
            ],
            cwd=ROOT,
            env={
                **stack_env,
                "VAULT_ADDR": re.search(r"OpenBao\s+(http://\S+)", text).group(1),
                "VAULT_TOKEN_FILE": str(token_file),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert read.stdout.strip().splitlines()[-1] == "66", read.stderr[-2000:]

        # A second death within the window: past --max-restarts 1, a crash loop.
        os.killpg(os.getpgid(restarted[0]), signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = out.read_text()
    assert re.search(r"listener died 2 times within 300 s .*crash loop, stopping", text), text[
        -3000:
    ]
    assert "Every process stopped." in text
    assert _open_alert(stack_env["DATABASE_URL"], "stack:crash_loop")[0] == "critical"
    assert _our_processes(marker) == []
