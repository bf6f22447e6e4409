"""docker-compose.yml mirrors `make run`'s topology. No Docker engine runs here: the file is
parsed and checked for what compose would need."""

import re
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
LONG_RUNNING = {
    "postgres",
    "redis",
    "anvil",
    "opend-sim",
    "openbao",
    "web",
    "worker-broker",
    "worker-chain",
    "worker-default",
    "beat",
    "listener",
    "flower",
}
ONE_SHOT = {"migrate", "deploy", "vault-seed"}
APP_SERVICES = LONG_RUNNING - {"postgres", "redis", "anvil", "openbao"} | {"migrate", "deploy"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_part_of_the_topology_is_a_service(compose):
    assert set(compose["services"]) == LONG_RUNNING | ONE_SHOT


def test_every_long_running_service_has_a_health_check(compose):
    for name in LONG_RUNNING:
        check = compose["services"][name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name


def test_app_services_share_one_image_anchor(compose):
    anchor = compose["x-bronco-app"]
    assert anchor["build"] == "." and anchor["image"] == "bronco:dev"
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert (service["image"], service["build"]) == (anchor["image"], anchor["build"]), name
        assert service["environment"]["DATABASE_URL"].startswith("postgres://"), name


def test_one_worker_per_queue(compose):
    queues = {q.name for q in settings.CELERY_TASK_QUEUES}
    served = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if "worker" in command and "-Q" in command:
            served[command[command.index("-Q") + 1]] = name
    assert set(served) == queues
    for queue, name in served.items():
        assert compose["services"][name]["environment"]["CELERY_NODE"] == queue


def test_dependencies_name_real_services_and_wait_for_health(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == wanted, (name, dep)


def test_simulator_and_workers_share_the_rate_window(compose):
    env = compose["x-bronco-env"]
    assert re.fullmatch(r"\$\{FUTU_RATE_WINDOW_SECONDS:-30\}", env["FUTU_RATE_WINDOW_SECONDS"])
    for name in ("opend-sim", "worker-broker"):
        assert (
            compose["services"][name]["environment"]["FUTU_RATE_WINDOW_SECONDS"]
            == (env["FUTU_RATE_WINDOW_SECONDS"])
        )


def test_secrets_come_from_openbao(compose):
    env = compose["x-bronco-env"]
    assert env["VAULT_ADDR"].endswith("http://openbao:8200}")
    seed = " ".join(compose["services"]["vault-seed"]["command"])
    for name in ("futu_trade_password", "operator_private_key"):
        assert f"bronco/{name}" in seed


def test_dockerfile_and_dockerignore():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "node_modules", "var", ".git"} <= set(ignored)
