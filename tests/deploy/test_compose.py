"""deploy/docker-compose.yml: the API, a worker and Redis, as the app expects them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.deploy.conftest import DEPLOY, answers, cli_command, url_path_and_port

COMPOSE = DEPLOY / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose["services"]


def health_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "a health check without a shell: CMD, not CMD-SHELL"
    return " ".join(test[1:])


class TestComposeServices:
    def test_are_the_api_a_worker_and_redis(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        assert sorted(services) == ["api", "redis", "worker"]

    @pytest.mark.parametrize(
        ("service", "command"),
        [("api", ["leadloop", "serve"]), ("worker", ["leadloop", "worker"])],
    )
    def test_api_and_worker_run_real_commands_of_one_image(
        self, services: dict[str, dict[str, Any]], service: str, command: list[str]
    ) -> None:
        assert services[service]["command"] == command
        cli_command(command)
        assert services[service]["build"] == {
            "context": "..",
            "dockerfile": "deploy/Dockerfile",
        }
        assert services[service]["image"] == services["api"]["image"]

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_api_and_worker_start_after_redis_is_healthy(
        self, services: dict[str, dict[str, Any]], service: str
    ) -> None:
        assert services[service]["depends_on"] == {
            "redis": {"condition": "service_healthy"}
        }
        assert services[service]["environment"]["LEADLOOP_REDIS_URL"] == (
            "redis://redis:6379/0"
        )

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_api_and_worker_have_resource_limits_and_no_privileges(
        self, services: dict[str, dict[str, Any]], service: str
    ) -> None:
        limits = services[service]["deploy"]["resources"]["limits"]

        assert set(limits) == {"cpus", "memory"}
        assert services[service]["read_only"] is True
        assert services[service]["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in services[service]["security_opt"]
        assert "user" not in services[service]  # the image's non-root user


class TestComposeHealthChecks:
    def test_the_api_is_checked_on_healthz_at_its_port(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        api = services["api"]
        port, path = url_path_and_port(health_command(api))

        assert path == "/healthz"
        assert answers(path) == 200
        assert port == int(api["environment"]["LEADLOOP_API_PORT"])
        assert api["ports"] == [f"127.0.0.1:{port}:{port}"]

    def test_the_worker_is_checked_on_its_metrics_port(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        worker = services["worker"]
        port, path = url_path_and_port(health_command(worker))

        assert path == "/metrics"
        assert port == int(worker["environment"]["LEADLOOP_WORKER_METRICS_PORT"])
        assert "worker_metrics_port" in Settings.model_fields

    def test_redis_answers_ping(self, services: dict[str, dict[str, Any]]) -> None:
        assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


class TestComposeRedis:
    def test_persists_every_write_to_an_append_only_file_on_a_volume(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        command = services["redis"]["command"]
        options = dict(zip(command[1::2], command[2::2], strict=True))

        assert command[0] == "redis-server"
        assert options["--appendonly"] == "yes"
        assert options["--appendfsync"] == "everysec"
        assert options["--maxmemory-policy"] == "noeviction"
        assert services["redis"]["volumes"] == ["redis-data:/data"]
        compose = yaml.safe_load(COMPOSE.read_text())
        assert "redis-data" in compose["volumes"]

    def test_is_not_published_on_the_host(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        assert "ports" not in services["redis"]


class TestComposeSettings:
    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_secrets_come_from_the_env_file_only(
        self,
        services: dict[str, dict[str, Any]],
        variables: dict[str, bool],
        service: str,
    ) -> None:
        environment = services[service]["environment"]

        assert services[service]["env_file"] == ".env"
        assert set(environment) <= set(variables), "a LEADLOOP_ name has a typo"
        assert [name for name in environment if variables[name]] == []

    @pytest.mark.parametrize("service", ["api", "worker"])
    def test_production_reads_the_mounted_rules(
        self, services: dict[str, dict[str, Any]], service: str
    ) -> None:
        environment = services[service]["environment"]

        assert environment["LEADLOOP_ENV"] == "production"
        assert services[service]["volumes"] == [
            f"./leadloop.toml:{environment['LEADLOOP_CONFIG']}:ro"
        ]

    def test_holds_no_secret_value(self, variables: dict[str, bool]) -> None:
        text = COMPOSE.read_text()

        assert [
            name for name, secret in variables.items() if secret and name in text
        ] == []
