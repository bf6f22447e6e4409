"""Operations tasks run by celery-beat (scheduled by a data migration). Thin doors in front
of one service each; safe to run twice or concurrently."""

from celery import shared_task

from ops.alert_rules import evaluate_alert_rules as _evaluate_alert_rules


@shared_task(
    name="ops.tasks.evaluate_alert_rules",
    acks_late=True,
    soft_time_limit=45,
    time_limit=60,
    # A late run is worthless once the next one is due.
    expires=120,
    ignore_result=True,
)
def evaluate_alert_rules() -> dict[str, str]:
    return _evaluate_alert_rules()
