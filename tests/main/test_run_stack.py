"""`manage.py run_stack` as a user runs it (`make run ARGS=--once`), in a subprocess on free
ports with a small scenario: everything starts, the scenario settles, reconciliation
passes, the exit code says so; and Ctrl-C stops every child it started."""

import json
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
import requests
from django.conf import settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PORTS = [
    *("--web-port", "0", "--flower-port", "0", "--anvil-port", "0"),
    *("--opend-port", "0", "--vault-port", "0"),
]


@pytest.fixture
def stack_env(tmp_path):
    """A database of its own (dropped after), the test Redis db, local settings."""
    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bronco"))
    name = f"{base.path.lstrip('/') or 'bronco'}_stack"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        {
            "BRONCO_ENV": "local",
            "DATABASE_URL": base._replace(path=f"/{name}").geturl(),
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            "BRONCO_STACK_TEST": uuid.uuid4().hex,
        }
    )
    yield env
    conn = psycopg2.connect(
        dbname="postgres", user=base.username, host=base.hostname, port=base.port or 5432
    )
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _our_processes(marker: str) -> list[int]:
    """Pids whose environment carries this test's marker (every child but OpenBao, which
    gets a minimal environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"BRONCO_STACK_TEST={marker}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_run_stack_once_runs_the_scenario_and_reconciles(stack_env, tmp_path):
    result_path = tmp_path / "result.json"
    argv = [
        *(sys.executable, "manage.py", "run_stack", "--once", "--fresh"),
        *PORTS,
        *("--var-dir", str(tmp_path / "var"), "--deadline", "12"),
        *("--users", "3", "--deposits", "10", "--redeems", "2", "--cancels", "2", "--seed", "3"),
        *("--json", str(result_path)),
    ]
    done = subprocess.run(
        argv, cwd=ROOT, env=stack_env, capture_output=True, text=True, timeout=360
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    result = json.loads(result_path.read_text())
    assert result["ok"] and result["finished"]
    assert result["reconciliation"]["ok"], result["reconciliation"]
    # The plan's 10 deposits and the three of the sessions-and-terms cases.
    assert result["sent"] == {"deposit": 13, "redeem": 2, "cancel": 2}
    totals: dict[str, int] = {}
    for counts in result["report"]["outcomes"].values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    assert sum(totals.values()) == 15 and "open" not in totals
    assert totals.get("EXECUTED")
    stages = {row["stage"] for row in result["report"]["latency_seconds"]}
    assert {"validate (book)", "trade (book -> done)", "settle", "log -> settled"} <= stages
    assert result["report"]["cycles"]  # netting cycles, their crossing and inventory

    assert "reconciliation: OK" in out
    assert "FUTU_RATE_WINDOW_SECONDS=30" in out  # Futu's own window: no demo shortcut
    assert "Netting cycles" in out
    assert re.search(r"closed market: deposit \d+ waits for the market", out)
    assert "after Monday's open: EXECUTED" in out
    assert re.search(r"limit \d+ USDT units/share: deposit \d+ waits for the price", out)
    assert "after the price came down: EXECUTED" in out
    assert re.search(r"limit never reached, expiry 20 s: deposit \d+ FAILED", out)
    assert re.search(r"login admin / \S+", out)
    assert re.search(r"basic auth flower:\S+", out)
    assert "Every process stopped." in out
    for name in ("anvil", "openbao", "opend-sim", "web", "worker-broker", "worker-chain"):
        assert (tmp_path / "var" / "log" / f"{name}.log").exists()
    assert _our_processes(stack_env["BRONCO_STACK_TEST"]) == []


def test_ctrl_c_stops_every_child(stack_env, tmp_path):
    argv = [
        *(sys.executable, "manage.py", "run_stack", "--no-scenario", "--fresh"),
        *PORTS,
        *("--var-dir", str(tmp_path / "var")),
    ]
    log = open(tmp_path / "run_stack.out", "w+")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, env=stack_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Serving until Ctrl-C" not in (tmp_path / "run_stack.out").read_text():
            assert proc.poll() is None, (tmp_path / "run_stack.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.5)
        out = (tmp_path / "run_stack.out").read_text()
        web = re.search(r"admin\s+(http://127\.0\.0\.1:\d+)/admin/", out).group(1)
        flower = re.search(r"flower\s+(http://127\.0\.0\.1:\d+)/\s+basic auth (\S+)", out)
        vault = re.search(r"OpenBao (http://127\.0\.0\.1:(\d+))", out)
        assert requests.get(f"{web}/health", timeout=5).status_code == 200
        api = re.search(r"api\s+(http://\S+/api/v1/)\s+docs (\S+)\s+status page (\S+)", out)
        assert requests.get(f"{api.group(1)}symbols", timeout=10).json()["symbols"]
        assert requests.get(api.group(2), timeout=5).status_code == 200
        assert "Track a deposit" in requests.get(api.group(3), timeout=5).text
        user, password = flower.group(2).split(":", 1)
        assert requests.get(flower.group(1), timeout=5).status_code == 401
        assert requests.get(flower.group(1), auth=(user, password), timeout=5).ok
        children = _our_processes(stack_env["BRONCO_STACK_TEST"])
        assert len(children) >= 9  # anvil, sim, web, 3 workers (+ pool), beat, listener, flower

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert _our_processes(stack_env["BRONCO_STACK_TEST"]) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(vault.group(2))), timeout=1).close()
    assert "Every process stopped." in (tmp_path / "run_stack.out").read_text()
