"""What the deployment tests read: the files under deploy/, parsed, and the app's
own facts (routes, CLI commands, settings) they must agree with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from app.api import create_app
from app.cli import main
from app.settings import Settings
from tests.support import REDIS_URL, isolated_environment, restored_logging

__all__ = ["isolated_environment", "restored_logging"]  # autouse fixtures

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def settings_fields() -> dict[str, bool]:
    """Every LEADLOOP_* variable, and whether it holds a secret."""
    secret_fields = {
        name
        for name, field in Settings.model_fields.items()
        if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    }
    return {
        f"LEADLOOP_{name.upper()}": name in secret_fields
        for name in Settings.model_fields
    }


def answers(path: str) -> int:
    """The status the app (lifespan running, on the test Redis) gives `GET path`."""
    app = create_app(Settings(_env_file=None, redis_url=REDIS_URL))
    with TestClient(app) as client:
        return client.get(path).status_code


def cli_command(argv: list[str]) -> click.Command:
    """The click command `argv` (program name first) runs; fails if none."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert scripts["scripts"] == {"leadloop": "app.cli:main"}
    program, *words = argv
    assert program == "leadloop", f"{argv}: not the leadloop command"
    command: click.Command = main
    for word in words:
        if word.startswith("-"):
            break
        assert isinstance(command, click.Group), f"{argv}: {word} is not a command"
        found = command.get_command(click.Context(command), word)
        assert found is not None, f"{argv}: leadloop has no command {word!r}"
        command = found
    return command


def url_path_and_port(text: str) -> tuple[int, str]:
    """The port and path of the http://127.0.0.1:PORT/PATH in a health check."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", text)
    assert match is not None, f"no local URL in {text!r}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="session")
def variables() -> dict[str, bool]:
    return settings_fields()
