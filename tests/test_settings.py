"""Production refuses development defaults and names each one."""

import os
import subprocess
import sys
from pathlib import Path

from bronco_project.settings.checks import production_problems

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "debug": False,
    "secret_key": "k" * 50,
    "dev_secret_key": "dev",
    "database_url": "postgres://bronco:pw@db/bronco",
    "dev_database_url": "postgres://postgres@127.0.0.1:5432/bronco",
    "vault_addr": "https://vault.internal:8200",
    "vault_token": "s.token",
}


def test_good_production_config_has_no_problems():
    assert production_problems(**GOOD) == []


def test_each_dev_default_is_named():
    assert "DJANGO_DEBUG" in production_problems(**{**GOOD, "debug": True})[0]
    assert "DJANGO_SECRET_KEY" in production_problems(**{**GOOD, "secret_key": "dev"})[0]
    bad_db = {**GOOD, "database_url": GOOD["dev_database_url"]}
    assert "DATABASE_URL" in production_problems(**bad_db)[0]
    assert "VAULT_ADDR" in production_problems(**{**GOOD, "vault_addr": ""})[0]
    no_creds = {**GOOD, "vault_token": ""}
    assert "Vault credentials" in production_problems(**no_creds)[0]
    approle = {**no_creds, "vault_role_id": "r", "vault_secret_id": "s"}
    assert production_problems(**approle) == []


def test_manage_py_refuses_to_start_in_production_with_dev_defaults():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    env["BRONCO_ENV"] = "production"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "refuses to start" in proc.stderr
    assert "DJANGO_DEBUG" in proc.stderr
    assert "DJANGO_SECRET_KEY" in proc.stderr
