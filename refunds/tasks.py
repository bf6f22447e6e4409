"""Celery doors into the refund services. Each takes an id (or nothing, for beat), loads fresh
state, and is safe to run twice: the services act only when a refund is still where they
expect it, and the chain sender keeps one transaction per refund id."""

import logging

from chain.exceptions import ChainUnavailable
from core.tasks import QUEUE_CHAIN, TRANSIENT_ERRORS, bronco_task
from refunds import services
from refunds.models import Refund, RefundStatus

logger = logging.getLogger(__name__)

# Refund tasks send and confirm chain transactions: they wait on the chain.
_OPTIONS = {
    "queue": QUEUE_CHAIN,
    "autoretry_for": (ChainUnavailable, *TRANSIENT_ERRORS),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
}


@bronco_task(name="refunds.tasks.refund_execute", **_OPTIONS)
def refund_execute(refund_id: int) -> str | None:
    if not Refund.objects.filter(pk=refund_id).exists():
        logger.warning("refund %s does not exist", refund_id)
        return None
    return services.refund_execute(refund_id=refund_id, actor="task:refunds.execute").status


@bronco_task(name="refunds.tasks.refund_check", bind=True, **_OPTIONS)
def refund_check(self, refund_id: int) -> str | None:  # type: ignore[no-untyped-def]
    """Check a sent refund; while it is pending, check again after REFUND_CHECK_SECONDS."""
    from django.conf import settings

    if not Refund.objects.filter(pk=refund_id).exists():
        logger.warning("refund %s does not exist", refund_id)
        return None
    refund = services.refund_check(refund_id=refund_id, actor="task:refunds.check")
    if refund.status == RefundStatus.SENT:
        refund_check.apply_async(args=[refund_id], countdown=settings.REFUND_CHECK_SECONDS)
    return refund.status


@bronco_task(name="refunds.tasks.refunds_retry_waiting", **_OPTIONS)
def refunds_retry_waiting() -> int:
    """Beat: send refunds that waited for the reserve, or that a crash left approved."""
    return services.refunds_retry_waiting(actor="task:refunds.retry_waiting")


@bronco_task(name="refunds.tasks.refunds_check_sent", **_OPTIONS)
def refunds_check_sent() -> int:
    """Beat: check sent refunds whose own check task was lost."""
    return services.refunds_check_sent(actor="task:refunds.check_sent")
