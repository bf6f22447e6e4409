"""Production refuses anvil's public dev keys."""

import os
import subprocess
import sys

from tests.fixtures.chain import OPERATOR_KEY, REPO


def import_chain_settings(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import bronco_project.settings.chain as s; print(s.CHAIN_ID)"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHAIN_")} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_the_anvil_operator_key():
    result = import_chain_settings(BRONCO_ENV="production", CHAIN_OPERATOR_PRIVATE_KEY=OPERATOR_KEY)
    assert result.returncode != 0
    assert "public anvil dev key" in result.stderr


def test_production_has_no_dev_key_by_default_and_dev_does():
    assert import_chain_settings(BRONCO_ENV="production").returncode == 0
    code = "import bronco_project.settings.chain as s; print(s.CHAIN_OPERATOR_PRIVATE_KEY)"
    prod = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, BRONCO_ENV="production"),
        timeout=60,
    )
    assert prod.stdout.strip() == ""
    dev = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, BRONCO_ENV="local"),
        timeout=60,
    )
    assert dev.stdout.strip() == OPERATOR_KEY
