"""Errors of what every app shares."""

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

# A Celery task's time limits: never to be caught by a broad `except Exception`
# (SoftTimeLimitExceeded is an Exception, raised by a signal handler wherever the task's
# thread is), or a timed-out task would end as a success. Re-raise them first:
#     except TIME_LIMITS: raise
TIME_LIMITS: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded, TimeLimitExceeded)


class AuditImmutable(Exception):
    """Audit entries are append-only: an existing one cannot be changed or deleted."""
