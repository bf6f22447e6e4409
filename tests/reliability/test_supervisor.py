"""devtools.processes.Supervisor with real child processes: a service killed with SIGKILL is
started again after its backoff and reported; one that keeps dying is a crash loop; a
one-off child that exits is a failure, not restarted."""

import os
import signal
import sys
import time

import pytest

from devtools.processes import ChildFailed, CrashLoop, RestartPolicy, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _supervisor(tmp_path, **policy) -> tuple[Supervisor, list]:
    events: list = []
    sup = Supervisor(
        log_dir=tmp_path,
        cwd=tmp_path,
        policy=RestartPolicy(**policy),
        on_restart=lambda child, code, n: events.append(("restart", child.name, code, n)),
        on_death=lambda child, code: events.append(("death", child.name, code)),
        log=lambda line: events.append(("log", line)),
    )
    return sup, events


def _supervise_until(sup: Supervisor, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        sup.check()
        time.sleep(0.02)


def test_a_killed_service_is_restarted_after_its_backoff_and_reported(tmp_path):
    sup, events = _supervisor(tmp_path, initial_backoff=0.5)
    try:
        child = sup.start("svc", SLEEPER, dict(os.environ), restart=True)
        first = child.proc.pid
        os.kill(first, signal.SIGKILL)
        child.proc.wait()
        killed_at = time.monotonic()
        _supervise_until(sup, lambda: child.alive)
        assert time.monotonic() - killed_at >= 0.5  # waited for the backoff
        assert child.proc.pid != first
        assert ("death", "svc", -9) in events
        assert ("restart", "svc", -9, 1) in events
        logged = [e[1] for e in events if e[0] == "log"]
        assert any("svc (pid" in line and "restarting in 0.5 s" in line for line in logged)
        assert "restarted after exit -9" in child.log_path.read_text()
    finally:
        sup.stop_all(timeout=5)


def test_backoff_doubles_while_the_service_keeps_dying(tmp_path):
    sup, _ = _supervisor(tmp_path, initial_backoff=0.05, max_backoff=0.2, max_restarts=10)
    try:
        child = sup.start("svc", CRASHER, dict(os.environ), restart=True)
        delays = []
        for restarts in range(1, 5):
            _supervise_until(sup, lambda n=restarts: len(child.restarts) == n)
            delays.append(child.backoff)
        assert delays == [0.05, 0.1, 0.2, 0.2]
    finally:
        sup.stop_all(timeout=5)


def test_a_crash_loop_stops_supervision_with_a_message(tmp_path):
    sup, events = _supervisor(tmp_path, initial_backoff=0.01, max_restarts=3, window=60)
    try:
        sup.start("svc", CRASHER, dict(os.environ), restart=True)
        with pytest.raises(CrashLoop, match=r"svc died 4 times within 60 s .*crash loop"):
            _supervise_until(sup, lambda: False)
        assert [e for e in events if e[0] == "restart"] == [
            ("restart", "svc", 3, n) for n in (1, 2, 3)
        ]
    finally:
        sup.stop_all(timeout=5)


def test_restarts_outside_the_window_are_no_crash_loop(tmp_path):
    sup, _ = _supervisor(tmp_path, initial_backoff=0.0, max_restarts=2, window=0.3)
    try:
        child = sup.start("svc", SLEEPER, dict(os.environ), restart=True)
        for _ in range(4):  # each death after the window has passed: never a loop
            os.kill(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
            time.sleep(0.35)
            _supervise_until(sup, lambda: child.alive)
        assert len(child.restarts) == 1  # the older ones aged out of the window
    finally:
        sup.stop_all(timeout=5)


def test_a_one_off_child_that_exits_is_a_failure_not_restarted(tmp_path):
    sup, events = _supervisor(tmp_path)
    try:
        child = sup.start("step", CRASHER, dict(os.environ))
        child.proc.wait()
        with pytest.raises(ChildFailed, match="step exited with 3"):
            sup.check()
        assert not [e for e in events if e[0] == "restart"]
    finally:
        sup.stop_all(timeout=5)


def test_compose_and_procfile_document_their_restart_policy():
    """Compose restarts every long-running service and never a one-shot step; the Procfile
    says that honcho restarts nothing and where supervision lives instead."""
    import yaml

    from tests.main.test_compose import LONG_RUNNING, ONE_SHOT, ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in LONG_RUNNING:
        assert compose["services"][name].get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert compose["services"][name].get("restart") == "no", name
    header = (ROOT / "docker-compose.yml").read_text().split("x-bronco-env")[0]
    assert "Restart policy" in header
    procfile = (ROOT / "Procfile").read_text()
    assert "Restart policy: none" in procfile and "make run" in procfile
