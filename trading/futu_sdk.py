"""Importing the futu-api SDK, with one side effect undone.

The SDK's package `__init__` replaces the main thread's SIGINT handler with one that calls
`os._exit(0)`: Ctrl-C would kill a Bronco process (a Celery worker, the listener, the
simulator) on the spot, with no graceful stop, no cleanup and no acked-late redelivery.
Every Bronco module that needs the SDK imports it through here first.
"""

import signal
import threading

import futu


def restore_sigint() -> None:
    """Put Python's own Ctrl-C handler back if the SDK's is installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is futu.quit_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


restore_sigint()
