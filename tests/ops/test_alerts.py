"""alert_raise / alert_resolve: one open alert per key under concurrency, notifications by
mail and by a real local webhook, never raising when a notifier fails."""

import logging
import threading
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.models import Alert, AuditLog
from core.secrets import register_secret_value
from tests.ops.webhook import webhook_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _admins(settings):
    settings.ADMINS = [("ops", "ops@example.test")]
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_RENOTIFY_SECONDS = 3600


def _raise(key="listener_lag", severity="warning", message="behind", **kw):
    return alert_raise(key=key, message=message, severity=severity, source="test", **kw)


def test_raise_opens_then_bumps_the_same_alert():
    first = _raise(details={"lag": 60})
    second = _raise(message="still behind", details={"lag": 80})
    assert second.pk == first.pk
    assert second.count == 2
    assert second.message == "still behind"
    assert second.details == {"lag": 80}
    assert second.last_seen_at >= first.last_seen_at
    assert Alert.objects.filter(key="listener_lag").count() == 1


def test_resolved_alert_is_closed_and_a_new_raise_opens_a_new_one():
    first = _raise()
    resolved = alert_resolve(key="listener_lag")
    assert resolved.pk == first.pk and resolved.resolved_at is not None
    assert alert_resolve(key="listener_lag") is None
    again = _raise()
    assert again.pk != first.pk and again.count == 1
    assert Alert.objects.filter(key="listener_lag", resolved_at__isnull=True).count() == 1


def test_unknown_severity_is_refused():
    with pytest.raises(ValueError):
        _raise(severity="apocalyptic")


def test_resolve_by_an_operator_is_audited():
    _raise()
    alert_resolve(key="listener_lag", actor="admin:alice")
    entry = AuditLog.objects.get(action="alert.resolve")
    assert entry.actor == "admin:alice"
    assert entry.after["key"] == "listener_lag"


@pytest.mark.django_db(transaction=True)
def test_concurrent_raises_make_one_open_alert_with_every_count():
    workers = 8
    barrier = threading.Barrier(workers)
    errors = []

    def raise_once():
        try:
            barrier.wait()
            _raise(key="race")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=raise_once) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (alert,) = Alert.objects.filter(key="race")
    assert alert.count == workers
    assert len(mail.outbox) == 1  # exactly one raiser claimed the notification


def test_mail_once_when_opened_again_on_escalation_and_after_the_renotify_interval(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        _raise()
    assert len(mail.outbox) == 1
    assert "[WARNING] listener_lag raised" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["ops@example.test"]

    with django_capture_on_commit_callbacks(execute=True):
        _raise()
    assert len(mail.outbox) == 1  # still open, same severity: no noise

    with django_capture_on_commit_callbacks(execute=True):
        _raise(severity="critical")
    assert len(mail.outbox) == 2
    assert "[CRITICAL]" in mail.outbox[1].subject

    Alert.objects.update(notified_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        _raise(severity="critical")
    assert len(mail.outbox) == 3

    with django_capture_on_commit_callbacks(execute=True):
        alert_resolve(key="listener_lag")
    assert "resolved" in mail.outbox[3].subject


def test_no_notification_when_the_raising_transaction_rolls_back(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            _raise()
            raise RuntimeError("the caller failed after raising")
    assert callbacks == []
    assert mail.outbox == []
    assert not Alert.objects.exists()


def test_webhook_receives_the_alert_as_json(settings, django_capture_on_commit_callbacks):
    with webhook_receiver() as hook:
        settings.ALERT_WEBHOOK_URL = hook.url
        with django_capture_on_commit_callbacks(execute=True):
            _raise(key="reserve_below_floor", severity="critical", details={"floor": 5})
    (call,) = hook.received
    assert call["path"] == "/hook/secret-token"
    assert call["headers"]["Content-Type"] == "application/json"
    body = call["json"]
    assert body["event"] == "raised"
    assert body["key"] == "reserve_below_floor"
    assert body["severity"] == "critical"
    assert body["details"] == {"floor": 5}
    assert body["count"] == 1


@pytest.mark.parametrize("failure", ["http_500", "timeout", "refused", "not_http"])
def test_a_failing_webhook_is_logged_never_raised(
    settings, caplog, django_capture_on_commit_callbacks, failure
):
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.5
    with webhook_receiver() as hook:
        if failure == "http_500":
            hook.status = 500
            settings.ALERT_WEBHOOK_URL = hook.url
        elif failure == "timeout":
            hook.delay = 2
            settings.ALERT_WEBHOOK_URL = hook.url
        elif failure == "refused":
            with socket_closed_port() as port:
                settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{port}/hook"
        else:
            settings.ALERT_WEBHOOK_URL = "file:///etc/passwd"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="core.alerts"):
            with django_capture_on_commit_callbacks(execute=True):
                alert = _raise()
        assert time.monotonic() - started < 1.5
    assert alert.pk
    assert len(mail.outbox) == 1  # mail still went out
    warning = [r for r in caplog.records if "webhook" in r.getMessage() or "URL" in r.getMessage()]
    assert warning, caplog.text
    assert "secret-token" not in caplog.text  # the hook's path (its token) is never logged


def test_notifications_never_carry_a_secret(settings, django_capture_on_commit_callbacks):
    register_secret_value("hunter2-very-secret")
    with webhook_receiver() as hook:
        settings.ALERT_WEBHOOK_URL = hook.url
        with django_capture_on_commit_callbacks(execute=True):
            _raise(
                message="login failed with password hunter2-very-secret",
                details={"password": "hunter2-very-secret"},
            )
    assert "hunter2-very-secret" not in mail.outbox[0].body
    assert "[REDACTED]" in mail.outbox[0].body
    assert "hunter2-very-secret" not in str(hook.received[0]["json"])


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        pass
