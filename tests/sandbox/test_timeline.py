"""Timeline writes over HTTP: comments and universal to-do activities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def a_deal(deal_id: int = 7, assigned_by: int = 3) -> dict[str, Any]:
    return {
        "ID": str(deal_id),
        "TITLE": "Site request",
        "CATEGORY_ID": "0",
        "STAGE_ID": "NEW",
        "ASSIGNED_BY_ID": str(assigned_by),
    }


def stored_activities(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    snapshot = sandbox.http.get("/_sandbox/snapshot").json()
    rows: list[dict[str, Any]] = snapshot["activities"]
    return rows


class TestCommentAdd:
    def test_returns_an_int_id(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.timeline.comment.add",
            {"fields": {"ENTITY_ID": 7, "ENTITY_TYPE": "deal", "COMMENT": "Called"}},
        )

        assert response.status_code == 200
        assert isinstance(response.json()["result"], int)

    def test_upper_case_fields_is_not_bound(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.timeline.comment.add",
            {"FIELDS": {"ENTITY_ID": 7, "ENTITY_TYPE": "deal", "COMMENT": "x"}},
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "100",
            "error_description": "Could not find value for parameter {fields}",
        }

    def test_blank_comment_is_invalid(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.timeline.comment.add",
            {"fields": {"ENTITY_ID": 7, "ENTITY_TYPE": "lead", "COMMENT": "   "}},
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "INVALID_ARG_VALUE",
            "error_description": "Empty comment message",
        }

    def test_unknown_owner_type_is_owner_not_found(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call(
            "crm.timeline.comment.add",
            {"fields": {"ENTITY_ID": 7, "ENTITY_TYPE": "ship", "COMMENT": "x"}},
        )

        assert response.status_code == 400
        assert response.json()["error"] == "OWNER_NOT_FOUND"

    def test_form_encoded_comment_is_listed(self, sandbox: RunningSandbox) -> None:
        sandbox.http.post(
            "/rest/1/sandbox/crm.timeline.comment.add",
            data={
                "fields[ENTITY_ID]": "7",
                "fields[ENTITY_TYPE]": "DEAL",
                "fields[COMMENT]": "Form comment",
            },
        ).raise_for_status()

        body = sandbox.call(
            "crm.timeline.comment.list",
            {"filter": {"ENTITY_ID": 7, "ENTITY_TYPE": "deal"}},
        ).json()

        assert body["total"] == 1
        comment = body["result"][0]
        assert comment["COMMENT"] == "Form comment"
        assert comment["ENTITY_TYPE"] == "deal"
        assert comment["AUTHOR_ID"] == "1"
        assert comment["CREATED"].endswith("+03:00")
        assert comment["FILES"] == {}


class TestCommentList:
    def test_lists_only_the_named_owner(self, sandbox: RunningSandbox) -> None:
        for owner in (7, 7, 8):
            sandbox.result(
                "crm.timeline.comment.add",
                {"fields": {"ENTITY_ID": owner, "ENTITY_TYPE": "deal", "COMMENT": "c"}},
            )

        body = sandbox.call(
            "crm.timeline.comment.list",
            {
                "filter": {"ENTITY_ID": 7, "ENTITY_TYPE": "deal"},
                "order": {"ID": "DESC"},
            },
        ).json()

        assert [row["ID"] for row in body["result"]] == ["2", "1"]
        assert body["total"] == 2

    def test_without_an_owner_access_is_denied(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.timeline.comment.list", {"filter": {}})

        assert response.status_code == 400
        assert response.json() == {"error": "", "error_description": "Access denied."}


class TestTodoAdd:
    def test_returns_the_activity_id_object(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"deals": [a_deal()]})

        response = sandbox.call(
            "crm.activity.todo.add",
            {
                "ownerTypeId": 2,
                "ownerId": 7,
                "deadline": "2025-02-03T15:00:00",
                "title": "Call back",
            },
        )

        assert response.status_code == 200
        result = response.json()["result"]
        assert list(result) == ["id"]
        assert isinstance(result["id"], int)

    def test_stores_a_crm_todo_activity_in_list_shape(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"deals": [a_deal(assigned_by=3)]})
        sandbox.result(
            "crm.activity.todo.add",
            {
                "ownerTypeId": 2,
                "ownerId": 7,
                "deadline": "2025-02-03T15:00:00",
                "title": "Call back",
                "description": "Ask about the quote",
            },
        )

        activity = stored_activities(sandbox)[0]
        recording = json.loads(
            (FIXTURES / "crm.activity.list.response.json").read_text("utf-8")
        )["result"][0]

        assert shape_differences(activity, recording) == []
        assert activity["TYPE_ID"] == "6"
        assert activity["PROVIDER_ID"] == "CRM_TODO"
        assert activity["COMPLETED"] == "N"
        assert activity["DEADLINE"] == "2025-02-03T15:00:00+03:00"
        assert activity["OWNER_TYPE_ID"] == "2"
        assert activity["OWNER_ID"] == "7"
        assert activity["RESPONSIBLE_ID"] == "3"
        assert activity["SUBJECT"] == "Call back"
        assert activity["SETTINGS"] == []

    def test_ping_offsets_land_in_settings(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"deals": [a_deal()]})
        sandbox.result(
            "crm.activity.todo.add",
            {
                "ownerTypeId": 2,
                "ownerId": 7,
                "deadline": "2025-02-03 15:00",
                "pingOffsets": [15, 0, 15],
            },
        )

        assert stored_activities(sandbox)[0]["SETTINGS"] == {"PING_OFFSETS": [0, 15]}

    def test_crm_activity_list_shows_the_todo(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Lead in"}})
        todo = sandbox.result(
            "crm.activity.todo.add",
            {
                "ownerTypeId": 2,
                "ownerId": deal_id,
                "deadline": "2025-02-03T15:00:00",
                "title": "Call back",
            },
        )

        body = sandbox.call(
            "crm.activity.list",
            {"filter": {"OWNER_TYPE_ID": 2, "OWNER_ID": deal_id}},
        ).json()

        assert body["total"] == 1
        listed = body["result"][0]
        assert listed["ID"] == str(todo["id"])
        assert listed["PROVIDER_ID"] == "CRM_TODO"
        assert listed["SUBJECT"] == "Call back"

    def test_explicit_offset_is_converted_to_the_portal_zone(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"deals": [a_deal()]})
        sandbox.result(
            "crm.activity.todo.add",
            {
                "ownerTypeId": 2,
                "ownerId": 7,
                "deadline": "2025-02-03T12:00:00Z",
                "responsibleId": 5,
            },
        )

        activity = stored_activities(sandbox)[0]
        assert activity["DEADLINE"] == "2025-02-03T15:00:00+03:00"
        assert activity["RESPONSIBLE_ID"] == "5"

    def test_unreadable_deadline_is_wrong_datetime_format(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"deals": [a_deal()]})

        response = sandbox.call(
            "crm.activity.todo.add",
            {"ownerTypeId": 2, "ownerId": 7, "deadline": "next tuesday-ish"},
        )

        assert response.status_code == 400
        assert response.json()["error"] == "WRONG_DATETIME_FORMAT"

    def test_missing_required_parameter_is_error_100(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call(
            "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 7}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "100",
            "error_description": "Could not find value for parameter {deadline}",
        }

    def test_parameter_names_are_case_sensitive(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.activity.todo.add",
            {"OWNERTYPEID": 2, "ownerId": 7, "deadline": "2025-02-03T15:00:00"},
        )

        assert response.status_code == 400
        assert response.json()["error_description"] == (
            "Could not find value for parameter {ownerTypeId}"
        )

    def test_missing_owner_is_owner_not_found(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.activity.todo.add",
            {"ownerTypeId": 2, "ownerId": 404, "deadline": "2025-02-03T15:00:00"},
        )

        assert response.status_code == 400
        assert response.json()["error"] == "OWNER_NOT_FOUND"

    def test_runs_inside_a_batch_with_form_values(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"deals": [a_deal()]})

        body = sandbox.call(
            "batch",
            {
                "halt": 0,
                "cmd": {
                    "todo": "crm.activity.todo.add?ownerTypeId=2&ownerId=7"
                    "&deadline=2025-02-03%2015:00:00&title=Batch"
                },
            },
        ).json()

        assert body["result"]["result_error"] == []
        assert isinstance(body["result"]["result"]["todo"]["id"], int)
