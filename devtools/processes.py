"""Child processes of the dev stack, the tests and the benchmarks: started so that they die
with the process that started them, however it dies; watched; stopped in reverse order.

`spawn()` is the one way to start a long-lived child. Three layers, each enough on its own
for the common case:

- Process group: each child leads a new session, so a Ctrl-C in the terminal reaches only
  the orchestrator, which stops its children in order, and `stop_group()` stops a child
  together with what it forked (a Celery worker's prefork pool).
- PR_SET_PDEATHSIG: the kernel sends the child SIGTERM when the orchestrator dies, even by
  SIGKILL, so it shuts down cleanly (anvil dumps its state, a Celery worker stops its pool,
  whose children Celery itself gives PDEATHSIG=SIGKILL). The signal fires when the *thread*
  that forked exits, so children are forked from the main thread or from one spawner
  thread that lives as long as the process.
- A watchdog process per orchestrator (`devtools.watchdog`), in its own session, holding
  the read end of a pipe only the orchestrator writes to. End of file means the
  orchestrator is gone (exit or SIGKILL): the watchdog sends SIGTERM to every process group
  this orchestrator started, SIGKILL to whatever is left `GRACE` seconds later, and exits.
  This catches grandchildren that no PDEATHSIG reaches.

Which processes are "ours" is written in their environment: every child gets
BRONCO_SPAWNED_BY, the chain of orchestrators above it (`<pid>.<start time>` each), and
the orchestrator puts its own token in os.environ too, so even a child started with plain
`subprocess` carries it. On its first start an orchestrator also ends the leftovers of
killed runs whose watchdog died with them (`sweep_orphans()`): processes whose chain names
an orchestrator that no longer exists.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "BRONCO_SPAWNED_BY"
GRACE = 3.0  # seconds between the watchdog's SIGTERM and its SIGKILL
REPO = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1

try:  # resolved here: after fork, the child only makes the call
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None  # not Linux: the watchdog and the sweep still apply


def _die_with_parent(parent: int, death_signal: int) -> None:
    """Runs in the child between fork and exec."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, death_signal)
    if os.getppid() != parent:  # the parent died before the prctl: no signal will come
        os._exit(1)


_lock = threading.Lock()
_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_watched_pid = 0
_watchdog_pipe = -1


def spawn(
    argv: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = None,
    stderr: Any = None,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen:
    """Start `argv` as a long-lived child that dies with this process (see the module doc);
    stop it with `stop_group()`. `env` defaults to this process's environment."""
    watch_children()
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER] = _chain_with(child_env.get(MARKER, ""), own_token())
    setup = functools.partial(_die_with_parent, os.getpid(), death_signal)

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=setup,  # noqa: PLW1509 - only a prctl call and a getppid
        )

    if threading.current_thread() is threading.main_thread():
        return start()
    return _lasting_thread().submit(start).result()


def _lasting_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One thread that lives as long as the process: PDEATHSIG of the children it forks
    fires with the process, not with the (maybe short-lived) thread that asked."""
    global _spawner
    with _lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spawner")
        return _spawner


def stop_group(proc: subprocess.Popen, *, timeout: float = 15.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after `timeout`; wait for the child."""
    if proc.poll() is not None:
        return
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # exited already, or not ours


# --- who is ours ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time) of a live process; None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[2]), int(fields[19])


def own_token() -> str:
    """This process as an orchestrator: pid and start time (a reused pid is another one)."""
    stat = _stat(os.getpid())
    return f"{os.getpid()}.{stat[1] if stat else 0}"


def _token_alive(token: str) -> bool:
    pid, _, start = token.partition(".")
    if not pid.isdigit():
        return True  # not ours to judge
    stat = _stat(int(pid))
    return stat is not None and str(stat[1]) == start


def _chain_with(chain: str, token: str) -> str:
    tokens = chain.split()
    return " ".join(tokens if token in tokens else [*tokens, token])


def _marked() -> dict[int, tuple[int, list[str]]]:
    """pid -> (process group, orchestrator chain) of every process carrying the marker."""
    found = {}
    prefix = f"{MARKER}=".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        for var in environ.split(b"\0"):
            if var.startswith(prefix):
                stat = _stat(int(entry.name))
                if stat is not None:
                    found[int(entry.name)] = (stat[0], var[len(prefix) :].decode().split())
                break
    return found


def end_processes(belongs: Callable[[list[str]], bool], *, grace: float = GRACE) -> list[int]:
    """Stop every process whose orchestrator chain `belongs`: SIGTERM its process group
    (only a group a marked process leads: never the shell's job around an orchestrator),
    SIGKILL what is left after `grace` seconds. Returns the pids it found."""
    seen: set[int] = set()
    termed: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        ours = {pid: pgid for pid, (pgid, chain) in _marked().items() if belongs(chain)}
        if not ours:
            return sorted(seen)
        seen |= set(ours)
        late = time.monotonic() >= deadline
        for pid, pgid in ours.items():
            target, kill = (pgid, _killpg) if pgid in ours else (pid, _kill)
            if late:
                kill(target, signal.SIGKILL)
            elif target not in termed:
                kill(target, signal.SIGTERM)
                termed.add(target)
        if time.monotonic() > deadline + 2:
            return sorted(seen)  # unkillable (uninterruptible sleep): nothing more to do
        time.sleep(0.1)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep_orphans() -> list[int]:
    """End the leftovers of runs killed together with their watchdog: marked processes one
    of whose orchestrators is gone. A live run's processes are never touched."""
    return end_processes(lambda chain: not all(_token_alive(t) for t in chain), grace=1.0)


def watch_children() -> None:
    """Make this process an orchestrator whose children die with it: sweep the leftovers
    of killed runs, start its watchdog, mark its environment. Idempotent; `spawn()` calls
    it, and so should a process that starts children some other way (call it early)."""
    global _watched_pid, _watchdog_pipe
    with _lock:
        if _watched_pid == os.getpid():
            return
        sweep_orphans()
        token = own_token()
        read, write = os.pipe()  # both ends close-on-exec: only the watchdog gets `read`
        try:
            os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "devtools.watchdog", token],
                {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
                file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)],
                setsid=True,
            )
        finally:
            os.close(read)
        _watchdog_pipe = write  # open until this process ends: then the watchdog acts
        os.environ[MARKER] = _chain_with(os.environ.get(MARKER, ""), token)
        _watched_pid = os.getpid()


# Ports handed to a child that binds them later are drawn below Linux's ephemeral range
# (32768-60999 by default): a port the kernel picks for `bind(0)` is also what it hands to
# outgoing connections (to PostgreSQL, Redis, ...), so between our check and the child's bind
# one of those could take it. Below the range only another listener can.
_CHILD_PORTS = range(20000, 32000)
_random = random.Random()


def bench_database_environment(*, default_db: str, default_redis_db: str = "13") -> str:
    """For a benchmark run in this process (no stack of its own): its database (BENCH_DB, else
    `default_db`) dropped and created empty, and its Redis db (BENCH_REDIS_DB) for Django's
    cache, Celery's broker and results, set in the environment before Django reads its
    settings; BENCH_DB / BENCH_REDIS_DB keep two runs on one machine apart. Returns the
    database's name."""
    import psycopg2

    db_name = os.environ.get("BENCH_DB", default_db)
    redis_url = f"redis://127.0.0.1:6379/{os.environ.get('BENCH_REDIS_DB', default_redis_db)}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bronco_project.settings.local")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db_name}"
    os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = redis_url
    os.environ["CELERY_RESULT_BACKEND"] = redis_url
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    conn = psycopg2.connect("postgres://postgres@127.0.0.1:5432/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {db_name}")
    conn.close()
    return db_name


STACK_PORT_NAMES = ("web", "flower", "anvil", "opend", "control", "vault")


def stack_environment(*, db_name: str, redis_url: str, extra: dict[str, str] | None = None):
    """Free ports for a whole stack (one per name in STACK_PORT_NAMES) and the environment
    a benchmark's own stack needs, set in this process before Django reads its settings:
    its own database `db_name` (beside DATABASE_URL's), `redis_url`, the chain and OpenD on
    those ports, `extra` on top. Returns {name: port}."""
    ports = free_ports(STACK_PORT_NAMES)
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bronco")
    os.environ.update(
        {
            "BRONCO_ENV": "local",
            "DJANGO_SETTINGS_MODULE": "bronco_project.settings.local",
            "DATABASE_URL": base.rsplit("/", 1)[0] + f"/{db_name}",
            "REDIS_URL": redis_url,
            "CHAIN_RPC_URL": f"http://127.0.0.1:{ports['anvil']}",
            "CHAIN_WS_URL": f"ws://127.0.0.1:{ports['anvil']}",
            "FUTU_OPEND_PORT": str(ports["opend"]),
            "LOG_LEVEL": "WARNING",
            **(extra or {}),
        }
    )
    return ports


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


def free_ports(names: Iterable[str]) -> dict[str, int]:
    """A free port for each of `names`, no two the same (`free_port` lets its port go
    before returning it, so two calls can return one port: two children then race for it,
    and one fails with "Address already in use")."""
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


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
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = False  # a service the supervisor restarts when it dies
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts
    started_at: float = field(default_factory=time.monotonic)
    restart_due: float | None = None  # when a dead service is started again
    backoff: float = 0.0  # the last delay used (seconds); 0 after a stable run

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class RestartPolicy:
    """How `Supervisor.check()` treats a service that died.

    A dead service is started again after a backoff: `initial_backoff` seconds, doubled for
    each restart that follows a run shorter than `stable_after` seconds, at most
    `max_backoff`; a run of `stable_after` seconds or more resets it. **Crash loop**: a
    service that would be restarted for the `max_restarts + 1`-th time within `window`
    seconds is not; `check()` raises CrashLoop and the stack stops (default: 5 restarts in
    60 s)."""

    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    stable_after: float = 30.0
    max_restarts: int = 5
    window: float = 60.0

    def describe(self) -> str:
        return (
            f"a dead process is restarted after {self.initial_backoff:g} s, doubling up to "
            f"{self.max_backoff:g} s while it keeps dying within {self.stable_after:g} s; "
            f"more than {self.max_restarts} restarts of one process within {self.window:g} s "
            "is a crash loop and stops the stack"
        )


class CrashLoop(ChildFailed):
    """A service kept dying: more restarts within the policy's window than it allows."""


@dataclass
class Supervisor:
    log_dir: Path
    cwd: Path
    children: list[Child] = field(default_factory=list)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    # Called after a dead service was started again: (child, its exit code, restarts in
    # the window). Called when a service died, before its backoff: (child, exit code).
    on_restart: Callable[[Child, int, int], None] | None = None
    on_death: Callable[[Child, int], None] | None = None
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        # Before the caller builds its children's environment from os.environ: a child it
        # starts without `start()` (a one-off step, the scenario) carries the marker too.
        watch_children()

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, restart: bool = False
    ) -> Child:
        """Start `name`; with `restart`, a service that `check()` starts again when it dies."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        proc = self._spawn(argv, env, log_path, mode="wb")
        child = Child(
            name=name, argv=argv, log_path=log_path, proc=proc, env=dict(env), restart=restart
        )
        self.children.append(child)
        return child

    def _spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path, *, mode: str
    ) -> subprocess.Popen:
        with open(log_path, mode) as log:
            return spawn(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def check(self, now: float | None = None) -> list[Child]:
        """One supervision pass: schedule a restart for each service found dead, start
        those whose backoff has passed. Returns the services started again in this pass.
        Raises ChildFailed when a child that is not a service exited, CrashLoop when a
        service exceeded the policy (see RestartPolicy)."""
        now = time.monotonic() if now is None else now
        restarted = []
        for child in list(self.children):
            if child.alive:
                continue
            code = child.proc.returncode
            if not child.restart:
                raise ChildFailed(
                    f"{child.name} exited with {code}; see {child.log_path}:\n{child.log_tail()}"
                )
            if child.restart_due is None:
                self._schedule(child, code, now)
            elif now >= child.restart_due:
                self._restart(child, code, now)
                restarted.append(child)
        return restarted

    def _schedule(self, child: Child, code: int, now: float) -> None:
        p = self.policy
        recent = [t for t in child.restarts if now - t < p.window]
        if len(recent) >= p.max_restarts:
            raise CrashLoop(
                f"{child.name} died {len(recent) + 1} times within {p.window:g} s (last exit "
                f"{code}): crash loop, stopping; see {child.log_path}:\n{child.log_tail()}"
            )
        stable = now - child.started_at >= p.stable_after
        child.backoff = (
            p.initial_backoff
            if stable or not child.backoff
            else min(p.max_backoff, child.backoff * 2)
        )
        child.restart_due = now + child.backoff
        self.log(
            f"supervisor: {child.name} (pid {child.proc.pid}) exited with {code}; restarting "
            f"in {child.backoff:g} s"
        )
        if self.on_death is not None:
            self.on_death(child, code)

    def _restart(self, child: Child, code: int, now: float) -> None:
        stop_group(child.proc, timeout=5)  # what it forked (a pool) goes with it
        with open(child.log_path, "ab") as log:
            log.write(f"\n--- supervisor: restarted after exit {code} ---\n".encode())
        child.proc = self._spawn(child.argv, child.env, child.log_path, mode="ab")
        child.started_at = now
        child.restart_due = None
        child.restarts = [t for t in child.restarts if now - t < self.policy.window] + [now]
        self.log(
            f"supervisor: {child.name} restarted (pid {child.proc.pid}, "
            f"{len(child.restarts)} restart(s) in {self.policy.window:g} s)"
        )
        if self.on_restart is not None:
            self.on_restart(child, code, len(child.restarts))

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

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def exited(self) -> list[Child]:
        return [c for c in self.children if not c.alive and not c.restart]

    def stop_all(self, *, timeout: float = 15.0) -> None:
        """SIGTERM each child's process group, newest first; SIGKILL what lingers."""
        for child in reversed(self.children):
            stop_group(child.proc, timeout=timeout)
        self.children.clear()
