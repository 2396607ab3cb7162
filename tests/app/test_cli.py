from __future__ import annotations

import asyncio
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from click.testing import CliRunner
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import cli
from app.config import BusinessRules
from app.local import Listening, LocalRunError, local_settings, run_local
from app.settings import get_settings
from tests.app.conftest import DEAD_URL_PORT, MakeSettings


@dataclass(frozen=True)
class FakeSandboxOptions:
    host: str = "127.0.0.1"
    port: int = 8801
    snapshot: Path | None = None
    rate_limit: str = "standard"
    application_token: str | None = None
    timezone: str = "Europe/Moscow"


@pytest.fixture
def sandbox_calls(monkeypatch: pytest.MonkeyPatch) -> list[FakeSandboxOptions]:
    """Stand in for `sandbox.server`, recording the options each call receives."""
    calls: list[FakeSandboxOptions] = []

    def create_app(options: FakeSandboxOptions) -> Starlette:
        calls.append(options)
        return portal_stand_in()

    module = types.ModuleType("sandbox.server")
    vars(module).update(
        SandboxOptions=FakeSandboxOptions, serve=calls.append, create_app=create_app
    )
    monkeypatch.setitem(sys.modules, "sandbox.server", module)
    return calls


def portal_stand_in() -> Starlette:
    """Just enough of a Bitrix24 portal for /readyz: `server.time`."""

    async def server_time(request: Request) -> JSONResponse:
        return JSONResponse({"result": "2026-05-11T21:06:22+03:00"})

    return Starlette(routes=[Route("/rest/1/sandbox/server.time", server_time)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestHelp:
    @pytest.mark.parametrize(
        ("command", "mentions"),
        [
            ([], ["serve", "worker", "sandbox", "run"]),
            (["serve"], ["--host", "--port"]),
            (["worker"], ["arq worker"]),
            (
                ["sandbox"],
                [
                    "--host",
                    "--port",
                    "--snapshot FILE",
                    "--rate-limit [standard|enterprise|off]",
                    "--application-token TOKEN",
                    "--timezone",
                    "Europe/Moscow",
                ],
            ),
            (["run"], ["sandbox", "API", "worker", "Ctrl-C"]),
        ],
    )
    def test_every_command_explains_itself(
        self, command: list[str], mentions: list[str]
    ) -> None:
        result = CliRunner().invoke(cli.main, [*command, "--help"])

        assert result.exit_code == 0, result.output
        assert result.output.startswith("Usage: leadloop")
        for mention in mentions:
            assert mention in result.output


class TestUnsafeProductionSettings:
    def test_a_command_in_production_without_secrets_says_why_and_exits_1(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_ENV", "production")
        monkeypatch.delenv("LEADLOOP_ADMIN_TOKEN", raising=False)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(
                cli.main, ["kpi", "--from", "2026-11-01", "--to", "2026-12-01"]
            )
        finally:
            get_settings.cache_clear()

        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert result.output.startswith("Error: refusing to start in production")
        assert "LEADLOOP_ADMIN_TOKEN" in result.output


class TestServe:
    def test_runs_uvicorn_on_the_chosen_address(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served: dict[str, Any] = {}
        monkeypatch.setattr(
            uvicorn, "run", lambda app, **options: served.update(options)
        )

        result = CliRunner().invoke(cli.main, ["serve", "--host", "0.0.0.0"])

        assert result.exit_code == 0, result.output
        assert served == {"host": "0.0.0.0", "port": 8000, "log_config": None}

    def test_stops_at_once_on_a_missing_rules_file(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("LEADLOOP_CONFIG", str(tmp_path / "absent.toml"))

        result = CliRunner().invoke(cli.main, ["serve"])

        assert result.exit_code == 1
        assert "absent.toml" in result.stderr
        assert "does not exist" in result.stderr


class TestSandbox:
    def test_passes_every_option_to_the_sandbox(
        self, sandbox_calls: list[FakeSandboxOptions], tmp_path: Path
    ) -> None:
        snapshot = tmp_path / "month.json"
        snapshot.write_text("{}")

        result = CliRunner().invoke(
            cli.main,
            [
                "sandbox", "--host", "0.0.0.0", "--port", "8802",
                "--snapshot", str(snapshot), "--rate-limit", "enterprise",
                "--application-token", "fake_app_token_123",
                "--timezone", "Asia/Yekaterinburg",
            ],
        )  # fmt: skip

        assert result.exit_code == 0, result.output
        assert sandbox_calls == [
            FakeSandboxOptions(
                host="0.0.0.0",
                port=8802,
                snapshot=snapshot,
                rate_limit="enterprise",
                application_token="fake_app_token_123",
                timezone="Asia/Yekaterinburg",
            )
        ]

    def test_defaults_match_the_documented_ones(
        self, sandbox_calls: list[FakeSandboxOptions]
    ) -> None:
        result = CliRunner().invoke(cli.main, ["sandbox"])

        assert result.exit_code == 0, result.output
        assert sandbox_calls == [FakeSandboxOptions()]

    def test_application_token_defaults_to_the_setting(
        self, sandbox_calls: list[FakeSandboxOptions], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_BITRIX24_APPLICATION_TOKEN", "fake_app_token_123")

        CliRunner().invoke(cli.main, ["sandbox"])

        assert sandbox_calls[0].application_token == "fake_app_token_123"

    @pytest.mark.parametrize(
        "arguments",
        [["--timezone", "Mars/Olympus"], ["--rate-limit", "turbo"], ["--port", "0"]],
    )
    def test_rejects_bad_options(
        self, sandbox_calls: list[FakeSandboxOptions], arguments: list[str]
    ) -> None:
        result = CliRunner().invoke(cli.main, ["sandbox", *arguments])

        assert result.exit_code == 2
        assert arguments[0] in result.output
        assert sandbox_calls == []


class TestRun:
    def test_a_redis_that_refuses_the_password_is_not_called_down(
        self, sandbox_calls: list[FakeSandboxOptions], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The test Redis has no password: AUTH with one is refused.
        monkeypatch.setenv(
            "LEADLOOP_REDIS_URL", "redis://:not-the-password@127.0.0.1:6379/15"
        )

        result = CliRunner().invoke(cli.main, ["run"])

        assert result.exit_code == 1
        assert (
            "Redis at redis://:***@127.0.0.1:6379/15 answers, but it refused the user "
            "or password"
        ) in result.stderr
        assert "To fix, correct the user and password in LEADLOOP_REDIS_URL" in (
            result.stderr
        )
        assert "redis-server" not in result.stderr
        assert "not-the-password" not in result.output

    def test_exits_non_zero_with_a_fix_when_redis_does_not_answer(
        self, sandbox_calls: list[FakeSandboxOptions], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_REDIS_URL", f"redis://127.0.0.1:{DEAD_URL_PORT}/0")

        result = CliRunner().invoke(cli.main, ["run"])

        assert result.exit_code == 1
        assert f"Redis does not answer at redis://127.0.0.1:{DEAD_URL_PORT}/0" in (
            result.stderr
        )
        assert (
            f"redis-server --daemonize yes --bind 127.0.0.1 --port {DEAD_URL_PORT}"
            in (result.stderr)
        )
        assert "LEADLOOP_REDIS_URL" in result.stderr

    def test_gives_the_sandbox_its_address_and_an_application_token(
        self, sandbox_calls: list[FakeSandboxOptions], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_REDIS_URL", f"redis://127.0.0.1:{DEAD_URL_PORT}/0")

        CliRunner().invoke(cli.main, ["run"])

        [options] = sandbox_calls
        assert (options.host, options.port) == ("127.0.0.1", 8801)
        assert options.application_token


class TestLocalSettings:
    def test_point_bitrix24_at_the_sandbox_when_unset(
        self, make_settings: MakeSettings
    ) -> None:
        settings, token = local_settings(make_settings(sandbox_port=8802))

        assert settings.bitrix24_webhook_url == SecretStr(
            "http://127.0.0.1:8802/rest/1/sandbox/"
        )
        assert settings.bitrix24_application_token == SecretStr(token)
        assert len(token) >= 16

    def test_keep_what_is_configured(self, make_settings: MakeSettings) -> None:
        configured = make_settings(
            bitrix24_webhook_url=SecretStr("https://example.bitrix24.ru/rest/1/c0de/"),
            bitrix24_application_token=SecretStr("fake_app_token_123"),
        )

        settings, token = local_settings(configured)

        assert settings.bitrix24_webhook_url == configured.bitrix24_webhook_url
        assert token == "fake_app_token_123"


class TestRunLocal:
    async def test_serves_sandbox_api_and_worker_until_stopped(
        self, make_settings: MakeSettings, redis: ArqRedis
    ) -> None:
        sandbox_port, api_port = free_port(), free_port()
        settings, _ = local_settings(
            make_settings(sandbox_port=sandbox_port, api_port=api_port)
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        listening: list[Listening] = []

        def on_ready(where: Listening) -> None:
            listening.append(where)
            ready.set()

        running = asyncio.create_task(
            run_local(
                settings,
                BusinessRules(),
                portal_stand_in(),
                on_ready=on_ready,
                stop=stop,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=10)
        async with httpx.AsyncClient(timeout=5) as http:
            readyz = await http.get(f"{listening[0].api}/readyz")
        job = await redis.enqueue_job("ping")
        assert job is not None
        result = await job.result(timeout=10, poll_delay=0.05)
        stop.set()
        await asyncio.wait_for(running, timeout=15)

        assert readyz.status_code == 200, readyz.text
        assert result == "pong"
        assert listening == [
            Listening(
                sandbox=f"http://127.0.0.1:{sandbox_port}",
                webhook=f"http://127.0.0.1:{sandbox_port}/rest/1/sandbox/",
                api=f"http://127.0.0.1:{api_port}",
                docs=f"http://127.0.0.1:{api_port}/docs",
                redis="redis://127.0.0.1:6379/15",
            )
        ]
        await redis.delete(job_key_prefix + job.job_id, result_key_prefix + job.job_id)

    async def test_names_the_port_that_is_taken(
        self, make_settings: MakeSettings, redis: ArqRedis
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings = make_settings(
                sandbox_port=free_port(), api_port=taken.getsockname()[1]
            )

            with pytest.raises(LocalRunError, match="LEADLOOP_API_PORT"):
                await run_local(
                    settings, BusinessRules(), portal_stand_in(), on_ready=print
                )


class TestInvalidSettings:
    """A mistyped variable names itself and what it needs, never its value."""

    @pytest.mark.parametrize(
        ("variable", "value", "says"),
        [
            ("LEADLOOP_WORKER_MAX_JOBS", "0", "greater than or equal to 1"),
            ("LEADLOOP_WORKER_MAX_JOBS", "lots", "a valid integer"),
            ("LEADLOOP_ENV", "live", "'development' or 'production'"),
            ("LEADLOOP_API_PORT", "99999", "less than or equal to 65535"),
            (
                "LEADLOOP_BITRIX24_WEBHOOK_URL",
                "htps://salon.bitrix24.ru/rest/1/k3y5ecretc0de/",
                "must be an http(s) URL",
            ),
            (
                "LEADLOOP_REDIS_URL",
                "http://:s3cr3tpw@127.0.0.1:6379/0",
                "must be a URL like redis://host:6379/0",
            ),
            ("LEADLOOP_REDIS_URL", "redis://127.0.0.1:6379/abc", "redis://host"),
            ("LEADLOOP_PUBLIC_URL", "leadloop.salon.ru", "an address like https://"),
        ],
    )
    def test_every_command_says_which_variable_and_exits_1(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
    ) -> None:
        monkeypatch.setenv(variable, value)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli.main, ["doctor"])
        finally:
            get_settings.cache_clear()

        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert result.output.startswith(
            "Error: invalid settings (environment or .env):"
        )
        assert f"\n  - {variable}: " in result.output
        assert says in result.output
        assert value not in result.output
