"""`python -m devtools.watchdog TOKEN`: started by devtools.processes.watch_children() in its
own session, with standard input the read end of a pipe that only the orchestrator TOKEN
holds open. Reading reaches end of file when the orchestrator is gone, whether it exited or
was SIGKILLed; the watchdog then ends every process that orchestrator started (their whole
process groups: a Celery worker's pool too) and exits. Standard library only."""

import os
import signal
import sys

from devtools.processes import end_processes


def main() -> None:
    token = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.read(0, 4096):
        pass
    end_processes(lambda chain: token in chain)


if __name__ == "__main__":
    main()
