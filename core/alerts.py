"""Raising, resolving and notifying operator alerts.

One open alert per key (the partial unique constraint `alert_one_open_per_key`): raising a
key that is already open bumps its count and last-seen time instead of adding a row. The
raise is one `INSERT ... ON CONFLICT DO UPDATE` on that constraint, so concurrent raisers
never fail and never make a second open row.

Notifications (`mail_admins` and the optional JSON webhook `ALERT_WEBHOOK_URL`) go out after
the surrounding transaction commits, once per alert when it opens, again when its severity
rises, and again every `ALERT_RENOTIFY_SECONDS` while it stays open. Exactly one raiser
claims each notification (a conditional UPDATE of `notified_at` on the locked row). A failing
notifier is logged, never raised: an alert must never break the code that raised it. Text
sent out passes through the secret redaction.
"""

import json
import logging
import smtplib
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import mail_admins
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit_record
from core.models import Alert, AlertSeverity
from core.secrets import redact

logger = logging.getLogger(__name__)

_RANK = {AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}

_UPSERT = f"""
INSERT INTO {Alert._meta.db_table}
    (key, severity, source, message, details, count, created_at, last_seen_at)
VALUES (%s, %s, %s, %s, %s, 1, %s, %s)
ON CONFLICT (key) WHERE resolved_at IS NULL DO UPDATE SET
    severity = EXCLUDED.severity,
    source = EXCLUDED.source,
    message = EXCLUDED.message,
    details = EXCLUDED.details,
    count = {Alert._meta.db_table}.count + 1,
    last_seen_at = EXCLUDED.last_seen_at
RETURNING id
"""


def alert_raise(
    *,
    key: str,
    message: str,
    severity: str = AlertSeverity.WARNING,
    source: str,
    details: dict[str, Any] | None = None,
) -> Alert:
    """Open alert `key`, or bump it when already open (message, severity and details take
    the latest values). Safe under concurrency; notifies after commit when due."""
    if severity not in _RANK:
        raise ValueError(f"unknown alert severity {severity!r}")
    details_json = json.dumps(details or {}, cls=DjangoJSONEncoder)
    now = timezone.now()
    with transaction.atomic():
        previous = (
            Alert.objects.select_for_update()
            .filter(key=key, resolved_at__isnull=True)
            .values("severity")
            .first()
        )
        with connection.cursor() as cursor:
            cursor.execute(_UPSERT, [key, severity, source, message, details_json, now, now])
            (alert_id,) = cursor.fetchone()
        alert = Alert.objects.get(pk=alert_id)
        escalated = previous is not None and _RANK[severity] > _RANK[previous["severity"]]
        if _notification_due(alert, now=now, escalated=escalated):
            claimed = Alert.objects.filter(pk=alert.pk, notified_at=alert.notified_at).update(
                notified_at=now
            )
            if claimed:
                alert.notified_at = now
                transaction.on_commit(
                    lambda: alert_notify(alert=alert, event="raised"), robust=True
                )
    log = logger.warning if severity != AlertSeverity.CRITICAL else logger.error
    log("alert %s (%s, count %d): %s", key, severity, alert.count, message)
    return alert


def _notification_due(alert: Alert, *, now: datetime, escalated: bool) -> bool:
    if alert.notified_at is None or escalated:
        return True
    renotify = settings.ALERT_RENOTIFY_SECONDS
    return bool(renotify) and now - alert.notified_at >= timedelta(seconds=renotify)


def alert_resolve(*, key: str, actor: str | None = None) -> Alert | None:
    """Close the open alert `key` (None when none is open). With an `actor` (an operator in
    admin) the resolution is audited. Sends a "resolved" notification when the alert had
    been notified."""
    now = timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(key=key, resolved_at__isnull=True).first()
        if alert is None:
            return None
        alert.resolved_at = now
        alert.save(update_fields=["resolved_at"])
        if actor:
            audit_record(
                actor=actor,
                action="alert.resolve",
                after={"alert_id": alert.pk, "key": key, "count": alert.count},
            )
        if alert.notified_at is not None:
            transaction.on_commit(lambda: alert_notify(alert=alert, event="resolved"), robust=True)
    logger.info("alert %s resolved%s", key, f" by {actor}" if actor else "")
    return alert


def alert_notify(*, alert: Alert, event: str) -> None:
    """Send `alert` to the admins and the webhook. Never raises."""
    subject = redact(f"[{alert.severity.upper()}] {alert.key} {event}")
    body = redact(
        f"{alert.message}\n\nkey: {alert.key}\nsource: {alert.source}\ncount: {alert.count}\n"
        f"first seen: {alert.created_at:%Y-%m-%d %H:%M:%S %Z}\n"
        f"details: {json.dumps(alert.details, indent=2, sort_keys=True, cls=DjangoJSONEncoder)}"
    )
    try:
        mail_admins(subject, body)
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("alert %s: mail to admins failed: %s", alert.key, type(exc).__name__)
    if settings.ALERT_WEBHOOK_URL:
        _post_webhook(alert=alert, event=event, subject=subject, body=body)


def _post_webhook(*, alert: Alert, event: str, subject: str, body: str) -> None:
    url = settings.ALERT_WEBHOOK_URL
    if urlsplit(url).scheme not in ("http", "https"):
        logger.warning("alert %s: ALERT_WEBHOOK_URL is not an http(s) URL; not sent", alert.key)
        return
    payload = {
        "event": event,
        "key": alert.key,
        "severity": alert.severity,
        "source": alert.source,
        "message": redact(alert.message),
        "details": json.loads(redact(json.dumps(alert.details, cls=DjangoJSONEncoder))),
        "count": alert.count,
        "created_at": alert.created_at,
        "last_seen_at": alert.last_seen_at,
        "resolved_at": alert.resolved_at,
        "text": f"{subject}\n{body}",
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, cls=DjangoJSONEncoder).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "bronco-alerts"},
        method="POST",
    )
    # Incoming-webhook URLs often carry a token in their path: log the host only.
    host = urlsplit(url).netloc
    try:
        with urllib.request.urlopen(
            request, timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECONDS
        ) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        logger.warning("alert %s: webhook at %s answered HTTP %s", alert.key, host, exc.code)
    except (urllib.error.URLError, OSError) as exc:
        logger.warning("alert %s: webhook at %s failed: %s", alert.key, host, type(exc).__name__)
