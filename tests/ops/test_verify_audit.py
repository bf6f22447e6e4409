"""verify_audit reports the count, the first broken link, and exits non-zero on a break."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from core.audit import audit_record
from core.models import AuditLog

ROOT = Path(__file__).resolve().parent.parent.parent


def _entries(n: int) -> None:
    # Entries without an order (like alert resolutions): the chain is the same.
    for i in range(n):
        audit_record(actor="test", action=f"step{i}", after={"n": i})


def _tamper(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        # Triggers off for this session, as an attacker with database access could do.
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute("SET session_replication_role = origin")


def _run(*args: str) -> str:
    out = StringIO()
    call_command("verify_audit", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_intact_chain_reports_the_count():
    _entries(5)
    assert "Checked 5 audit entries: chain intact." in _run("--batch-size", "2")


@pytest.mark.django_db
def test_empty_chain_is_intact():
    assert "Checked 0 audit entries" in _run()


@pytest.mark.django_db
def test_altered_row_is_reported_with_its_seq():
    _entries(5)
    victim = AuditLog.objects.get(seq=3)
    _tamper("UPDATE orders_auditlog SET actor = 'mallory' WHERE id = %s", [victim.pk])
    out = StringIO()
    with pytest.raises(CommandError, match=r"broken at seq 3: content does not match"):
        call_command("verify_audit", stdout=out)
    assert "Checked 2 audit entries before the break." in out.getvalue()


@pytest.mark.django_db
def test_deleted_row_is_reported_as_missing():
    _entries(4)
    _tamper("DELETE FROM orders_auditlog WHERE seq = %s", [2])
    with pytest.raises(CommandError, match=r"broken at seq 2: entry 2 is missing"):
        _run()


@pytest.mark.django_db
def test_relinked_row_is_reported():
    _entries(3)
    _tamper("UPDATE orders_auditlog SET prev_hash = %s WHERE seq = 2", ["f" * 64])
    with pytest.raises(CommandError, match=r"broken at seq 2: prev_hash does not match"):
        _run()


def _manage(*args: str) -> subprocess.CompletedProcess:
    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = (
        f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"  # the test database
    )
    env["DJANGO_SETTINGS_MODULE"] = "bronco_project.settings.test"
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.django_db(transaction=True)
def test_exit_status_of_the_real_command():
    _entries(3)
    ok = _manage("verify_audit")
    assert ok.returncode == 0, ok.stderr
    assert "Checked 3 audit entries: chain intact." in ok.stdout

    _tamper("UPDATE orders_auditlog SET after = %s WHERE seq = 2", ['{"n": 99}'])
    broken = _manage("verify_audit")
    assert broken.returncode != 0
    assert "broken at seq 2" in broken.stderr
    assert "Checked 1 audit entries before the break." in broken.stdout
