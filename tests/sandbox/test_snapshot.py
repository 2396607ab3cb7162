"""State snapshots: load over HTTP or at start, dump, and refuse bad ones clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.server import SandboxApp, SandboxOptions
from sandbox.snapshot import dump_snapshot
from sandbox.state import SNAPSHOT_SECTIONS
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox


def deal(deal_id: int, **fields: str) -> dict[str, Any]:
    """A deal row as `crm.deal.list` returns it, with fields REST cannot write."""
    return {
        "ID": str(deal_id),
        "TITLE": f"Deal {deal_id}",
        "CATEGORY_ID": "0",
        "STAGE_ID": "NEW",
        "OPPORTUNITY": "1500.00",
        "CURRENCY_ID": "RUB",
        "ASSIGNED_BY_ID": "1",
        "DATE_CREATE": "2026-11-02T10:00:00+03:00",
        "DATE_MODIFY": "2026-11-03T12:30:00+03:00",
        **fields,
    }


def user(user_id: int, name: str) -> dict[str, Any]:
    return {
        "ID": str(user_id),
        "ACTIVE": True,
        "NAME": name,
        "LAST_NAME": "Snapshot",
        "EMAIL": f"user{user_id}@example.com",
        "UF_DEPARTMENT": [1],
        "IS_ONLINE": "N",
    }


def stage(status_id: int, code: str, name: str) -> dict[str, Any]:
    return {
        "ID": str(status_id),
        "ENTITY_ID": "DEAL_STAGE",
        "STATUS_ID": code,
        "NAME": name,
        "NAME_INIT": "",
        "SORT": "15",
        "SYSTEM": "N",
        "CATEGORY_ID": "0",
        "COLOR": "#39A8EF",
        "SEMANTICS": None,
        "EXTRA": {"SEMANTICS": "process", "COLOR": "#39A8EF"},
    }


def dump(sandbox: RunningSandbox) -> dict[str, Any]:
    response = sandbox.http.get("/_sandbox/snapshot")
    assert response.status_code == 200
    snapshot = response.json()
    assert isinstance(snapshot, dict)
    return snapshot


def post(sandbox: RunningSandbox, body: Any) -> httpx.Response:
    return sandbox.http.post("/_sandbox/snapshot", json=body)


class TestDump:
    def test_every_section_and_the_settings_are_dumped(
        self, sandbox: RunningSandbox
    ) -> None:
        snapshot = dump(sandbox)

        assert set(snapshot) == {"settings", *SNAPSHOT_SECTIONS}
        assert snapshot["settings"] == {"crm_mode": "classic"}
        assert all(isinstance(snapshot[name], list) for name in SNAPSHOT_SECTIONS)

    def test_a_fresh_portal_has_its_administrator_and_directories(
        self, sandbox: RunningSandbox
    ) -> None:
        snapshot = dump(sandbox)

        assert [row["ID"] for row in snapshot["users"]] == ["1"]
        assert snapshot["statuses"]
        assert snapshot["deals"] == []


class TestLoad:
    def test_loaded_rows_come_back_exactly(self, sandbox: RunningSandbox) -> None:
        deals = [deal(1), deal(2, TITLE="Второй")]

        response = post(sandbox, {"deals": deals})

        assert response.status_code == 200
        assert response.json() == {"loaded": {"deals": 2}}
        assert dump(sandbox)["deals"] == deals

    def test_a_dump_loads_back_to_the_same_dump(self, sandbox: RunningSandbox) -> None:
        post(
            sandbox,
            {
                "deals": [deal(5), deal(9)],
                "users": [user(1, "Anna"), user(7, "Boris")],
                "settings": {"crm_mode": "simple"},
            },
        )
        first = dump(sandbox)

        reloaded = post(sandbox, first)

        assert reloaded.status_code == 200
        assert dump(sandbox) == first

    def test_sections_not_named_keep_a_fresh_portals_rows(
        self, sandbox: RunningSandbox
    ) -> None:
        fresh = dump(sandbox)

        post(sandbox, {"deals": [deal(1)]})

        loaded = dump(sandbox)
        assert loaded["statuses"] == fresh["statuses"]
        assert loaded["users"] == fresh["users"]

    def test_a_load_replaces_everything_loaded_before(
        self, sandbox: RunningSandbox
    ) -> None:
        post(sandbox, {"deals": [deal(1), deal(2)], "users": [user(1, "Anna")]})

        post(sandbox, {"deals": [deal(3)]})

        snapshot = dump(sandbox)
        assert [row["ID"] for row in snapshot["deals"]] == ["3"]
        assert snapshot["users"][0]["NAME"] == "Admin"

    def test_an_empty_section_empties_the_table(self, sandbox: RunningSandbox) -> None:
        response = post(sandbox, {"statuses": []})

        assert response.json() == {"loaded": {"statuses": 0}}
        assert dump(sandbox)["statuses"] == []

    def test_loaded_rows_are_what_list_methods_answer(
        self, sandbox: RunningSandbox
    ) -> None:
        post(sandbox, {"statuses": [stage(900, "LOADED", "From snapshot")]})

        rows = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}
        )

        assert rows == [stage(900, "LOADED", "From snapshot")]

    def test_loaded_users_answer_as_the_webhook_user(
        self, sandbox: RunningSandbox
    ) -> None:
        post(sandbox, {"users": [user(1, "Anna")]})

        assert sandbox.result("user.current")["NAME"] == "Anna"

    def test_the_default_webhook_survives_a_load(self, sandbox: RunningSandbox) -> None:
        post(sandbox, {"users": [user(7, "Boris")]})

        assert sandbox.call("server.time").status_code == 200

    def test_the_crm_mode_setting_is_loaded(self, sandbox: RunningSandbox) -> None:
        post(sandbox, {"settings": {"crm_mode": "simple"}})

        assert sandbox.result("crm.settings.mode.get") == 2
        assert dump(sandbox)["settings"] == {"crm_mode": "simple"}

    def test_ids_may_be_json_numbers(self, sandbox: RunningSandbox) -> None:
        response = post(sandbox, {"deals": [{**deal(1), "ID": 1}]})

        assert response.status_code == 200


class TestBadSnapshots:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ([], "a snapshot must be a JSON object of sections"),
            ({"deal": []}, "unknown snapshot sections: deal"),
            ({"deals": {"1": {}}}, "deals: must be a list of rows"),
            ({"deals": ["1"]}, "deals[0]: a row must be a JSON object"),
            ({"deals": [deal(1), {"TITLE": "x"}]}, "deals[1]: ID must be a number"),
            ({"deals": [{**deal(1), "ID": "abc"}]}, "deals[0]: ID must be a number"),
            ({"deals": [{**deal(1), "ID": True}]}, "deals[0]: ID must be a number"),
            ({"deals": [deal(1), deal(1)]}, "deals[1]: duplicate ID 1"),
            ({"categories": [{"ID": 3}]}, "categories[0]: id must be a number"),
            ({"settings": []}, "settings: must be a JSON object"),
            ({"settings": {"mode": "x"}}, "settings: unknown keys: mode"),
            (
                {"settings": {"crm_mode": "full"}},
                "settings.crm_mode must be 'classic' or 'simple'",
            ),
        ],
    )
    def test_a_bad_snapshot_is_a_400_with_a_clear_message(
        self, sandbox: RunningSandbox, body: Any, message: str
    ) -> None:
        response = post(sandbox, body)

        assert response.status_code == 400
        assert response.json()["error"].startswith(message)

    def test_an_unknown_section_names_the_known_ones(
        self, sandbox: RunningSandbox
    ) -> None:
        response = post(sandbox, {"deals": [], "Leads": []})

        error = response.json()["error"]
        assert "unknown snapshot sections: Leads" in error
        assert "leads" in error
        assert "stagehistory" in error

    def test_a_body_that_is_not_json_is_a_400(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post("/_sandbox/snapshot", content=b'{"deals": [')

        assert response.status_code == 400
        assert response.json()["error"].startswith("snapshot is not JSON")

    def test_a_bad_snapshot_leaves_the_portal_as_it_was(
        self, sandbox: RunningSandbox
    ) -> None:
        post(sandbox, {"deals": [deal(1)]})
        before = dump(sandbox)

        post(sandbox, {"deals": [deal(2)], "users": [{"NAME": "no id"}]})

        assert dump(sandbox) == before


class TestSnapshotAtStart:
    def test_the_snapshot_option_loads_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "portal.json"
        path.write_text(json.dumps({"deals": [deal(4)]}), "utf-8")

        app = SandboxApp(SandboxOptions(snapshot=path))

        assert dump_snapshot(app.portal)["deals"] == [deal(4)]

    def test_a_sandbox_started_with_a_snapshot_serves_it(self, tmp_path: Path) -> None:
        path = tmp_path / "portal.json"
        path.write_text(json.dumps({"users": [user(1, "Anna")]}), "utf-8")
        options = SandboxOptions(port=free_port(), rate_limit="off", snapshot=path)
        with running_sandbox(options) as running:
            snapshot = running.http.get("/_sandbox/snapshot").json()
            current = running.http.get("/rest/1/sandbox/user.current").json()

        assert snapshot["users"] == [user(1, "Anna")]
        assert current["result"]["NAME"] == "Anna"

    def test_reset_returns_to_the_snapshot_the_sandbox_started_with(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "portal.json"
        path.write_text(json.dumps({"deals": [deal(4)]}), "utf-8")
        options = SandboxOptions(port=free_port(), rate_limit="off", snapshot=path)
        with running_sandbox(options) as running:
            running.call("crm.deal.add", {"fields": {}})
            running.reset()
            deals = running.http.get("/_sandbox/snapshot").json()["deals"]

        assert deals == [deal(4)]

    def test_a_bad_snapshot_file_stops_the_start_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "portal.json"
        path.write_text(json.dumps({"dealz": []}), "utf-8")

        with pytest.raises(ValueError, match="unknown snapshot sections: dealz"):
            SandboxApp(SandboxOptions(snapshot=path))


class TestWhatALoadKeeps:
    def test_tokens_and_bound_handlers_survive_a_load(
        self, sandbox: RunningSandbox
    ) -> None:
        minted = sandbox.http.post("/_sandbox/oauth/tokens", json={"user_id": 1})
        access_token = minted.json()["access_token"]
        sandbox.call(
            "event.bind", {"event": "ONCRMDEALADD", "handler": "https://h.test/in"}
        )

        sandbox.load({"deals": [deal(4)]})

        answer = sandbox.http.get("/rest/user.current", params={"auth": access_token})
        assert answer.status_code == 200
        bound = sandbox.result("event.get")
        assert [row["handler"] for row in bound] == ["https://h.test/in"]
