"""deploy/Dockerfile: two stages, a non-root runtime, commands and ports that exist."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from app.settings import Settings
from tests.deploy.conftest import DEPLOY, REPO, answers, cli_command

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            current = found.setdefault(rest.split()[-1], [])
        current.append((word, rest))
    return found


def runtime(word: str) -> list[str]:
    return [rest for found, rest in stages()["runtime"] if found == word]


def runtime_env() -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(runtime("ENV"))))


def wheel_packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages: list[str] = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"
    ]
    return packages


class TestStages:
    def test_builds_in_one_stage_and_runs_from_another(self) -> None:
        assert list(stages()) == ["build", "runtime"]
        assert "--from=build /opt/leadloop /opt/leadloop" in runtime("COPY")

    def test_both_stages_start_from_the_same_slim_python(self) -> None:
        bases = [rest.split()[0] for rest in runtime("FROM")]
        bases += [rest.split()[0] for word, rest in stages()["build"] if word == "FROM"]
        argument = re.search(
            r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE
        )

        assert bases == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
        assert argument is not None
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", argument.group(1))

    def test_the_runtime_gets_the_environment_and_nothing_of_the_sources(
        self,
    ) -> None:
        assert runtime("COPY") == ["--from=build /opt/leadloop /opt/leadloop"]

    def test_copies_what_the_wheel_packages_and_no_more(self) -> None:
        copied = [
            rest.split()[0]
            for word, rest in stages()["build"]
            if word == "COPY" and not rest.startswith("pyproject")
        ]

        assert copied == wheel_packages()


class TestRuntimeUser:
    def test_is_numeric_and_not_root(self) -> None:
        (user,) = runtime("USER")
        uid, _, gid = user.partition(":")

        assert int(uid) != 0
        assert int(gid) != 0

    def test_is_created_with_that_id_before_it_is_used(self) -> None:
        (user,) = runtime("USER")
        uid, _, gid = user.partition(":")
        setup = " ".join(runtime("RUN"))

        assert f"--uid {uid}" in setup
        assert f"--gid {gid}" in setup
        words = [word for word, _ in stages()["runtime"]]
        assert words.index("USER") > words.index("RUN")


class TestRuntimeCommand:
    def test_runs_a_real_leadloop_command(self) -> None:
        (command,) = runtime("CMD")

        cli_command(json.loads(command))

    def test_listens_where_the_settings_say_and_exposes_it(self) -> None:
        env = runtime_env()

        assert runtime("EXPOSE") == [env["LEADLOOP_API_PORT"]]
        assert (
            int(env["LEADLOOP_API_PORT"]) == Settings.model_fields["api_port"].default
        )
        assert env["LEADLOOP_API_HOST"] == "0.0.0.0"

    def test_is_production(self) -> None:
        assert runtime_env()["LEADLOOP_ENV"] == "production"

    def test_health_check_asks_healthz_on_the_api_port(self) -> None:
        (check,) = runtime("HEALTHCHECK")
        command = json.loads(check[check.index("CMD") + 3 :])

        assert command[:2] == ["python", "-c"]
        assert "http://127.0.0.1:%s/healthz" in command[2]
        assert "os.environ.get('LEADLOOP_API_PORT', '8000')" in command[2]
        assert answers("/healthz") == 200


class TestBuildContext:
    def test_the_dockerfile_lives_in_deploy_only(self) -> None:
        assert not (REPO / "Dockerfile").exists()

    def test_dockerignore_lets_in_only_what_the_build_copies(self) -> None:
        lines = [
            line
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line and not line.startswith("#")
        ]
        allowed = [line[1:] for line in lines if line.startswith("!")]

        assert lines[0] == "*"
        assert allowed == ["pyproject.toml", "README.md", *wheel_packages()]
        assert "**/.env" in lines

    @pytest.mark.parametrize("name", ["README.md", "pyproject.toml"])
    def test_the_build_copies_the_project_files_it_needs(self, name: str) -> None:
        copies = [rest for word, rest in stages()["build"] if word == "COPY"]

        assert any(name in rest.split()[:-1] for rest in copies)
