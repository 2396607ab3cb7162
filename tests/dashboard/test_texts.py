"""The dashboard's words come from `[dashboard.texts]` in the rules file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from tests.dashboard.conftest import MONTH, RULES, api_settings
from tests.sandbox.conftest import RunningSandbox

RENAMED = """
[dashboard.texts]
title = "Продажи салона"
period_line = "{start}—{end} по {timezone} (на {as_of})"
chart_leads = "Заявки по дням"
back = "Назад к цифрам"

[dashboard.texts.channels]
telegram = "Телеграм"

[dashboard.texts.lists]
leads = "Все заявки"
"""


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "renamed.toml"
    path.write_text(RULES + RENAMED, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def client(portal: RunningSandbox, renamed: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(portal, renamed))) as opened:
        yield opened


class TestRenamedWords:
    def test_the_dashboard_reads_the_rules_words(self, client: TestClient) -> None:
        response = client.get("/dashboard", params=MONTH)

        assert response.status_code == 200
        page = response.text
        assert "<title>Продажи салона" in page
        assert "01.01.2025—31.01.2025 по Europe/Moscow (на 20.02.2025 12:00)" in page
        assert "Заявки по дням" in page
        assert "Телеграм" in page
        assert "Показатели продаж" not in page
        assert "Лиды по дням и каналам" not in page

    def test_a_deal_list_reads_the_rules_words(self, client: TestClient) -> None:
        response = client.get("/dashboard/deals", params={**MONTH, "metric": "leads"})

        assert response.status_code == 200
        assert "Все заявки: все менеджеры" in response.text
        assert "Назад к цифрам" in response.text
        assert "Лиды периода" not in response.text
