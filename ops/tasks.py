"""Operations tasks run by celery-beat (CELERY_BEAT_SCHEDULE). Thin doors in front of one
service each; safe to run twice or concurrently."""

from core.tasks import QUEUE_DEFAULT, bronco_task
from ops.alert_rules import evaluate_alert_rules as _evaluate_alert_rules


@bronco_task(
    name="ops.tasks.evaluate_alert_rules",
    queue=QUEUE_DEFAULT,
    soft_time_limit=45,
    time_limit=60,
    # A late run is worthless once the next one is due.
    expires=120,
    ignore_result=True,
)
def evaluate_alert_rules() -> dict[str, str]:
    return _evaluate_alert_rules()
