"""`crm.activity.*` over real HTTP: writes, reads, lists and the BINDINGS filter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"
QUIET = frozenset({"operating_reset_at"})


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def call_fields(owner_type: int, owner_id: int, **extra: Any) -> dict[str, Any]:
    fields = {
        "OWNER_TYPE_ID": owner_type,
        "OWNER_ID": owner_id,
        "TYPE_ID": 2,
        "SUBJECT": "Outgoing call Test Contact",
        "START_TIME": "2020-09-27T13:25:00+03:00",
        "END_TIME": "2020-09-27T19:25:00+03:00",
        "COMPLETED": "Y",
        "DIRECTION": 2,
        "RESPONSIBLE_ID": 505,
        "COMMUNICATIONS": [{"VALUE": "+79990000001"}],
    }
    fields.update(extra)
    return fields


@pytest.fixture
def contact_id(sandbox: RunningSandbox) -> int:
    created: int = sandbox.result(
        "crm.contact.add", {"fields": {"NAME": "Test", "LAST_NAME": "Contact"}}
    )
    return created


def add_call(sandbox: RunningSandbox, owner: tuple[int, int], **extra: Any) -> int:
    created: int = sandbox.result(
        "crm.activity.add", {"fields": call_fields(*owner, **extra)}
    )
    return created


class TestAdd:
    def test_answers_the_new_id_and_get_reads_it_back(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        activity_id = add_call(sandbox, (3, contact_id))

        activity = sandbox.result("crm.activity.get", {"id": activity_id})
        assert activity_id == 1
        assert activity["OWNER_ID"] == str(contact_id)
        assert (activity["OWNER_TYPE_ID"], activity["TYPE_ID"]) == ("3", "2")
        assert activity["PROVIDER_ID"] == "VOXIMPLANT_CALL"
        assert activity["PROVIDER_TYPE_ID"] == "CALL"
        assert (activity["COMPLETED"], activity["STATUS"]) == ("Y", "2")
        assert activity["START_TIME"] == "2020-09-27T13:25:00+03:00"
        assert (activity["SETTINGS"], activity["PROVIDER_PARAMS"]) == ([], [])
        assert "COMMUNICATIONS" not in activity

    def test_get_matches_the_recorded_list_row(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        activity_id = add_call(sandbox, (3, contact_id))

        response = sandbox.call("crm.activity.get", {"id": activity_id})

        row = recorded("crm.activity.list.response.json")["result"][0]
        assert shape_differences(response.json()["result"], row) == []
        assert list(response.json()["result"]) == list(row)

    def test_the_owner_responsible_is_the_default(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"ASSIGNED_BY_ID": 7}})

        activity_id = add_call(sandbox, (2, deal_id), RESPONSIBLE_ID=None)

        activity = sandbox.result("crm.activity.get", {"id": activity_id})
        assert activity["RESPONSIBLE_ID"] == "7"

    def test_a_form_encoded_add_reads_bracketed_communications(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        response = sandbox.http.post(
            "/rest/1/sandbox/crm.activity.add",
            data={
                "fields[OWNER_TYPE_ID]": "3",
                "fields[OWNER_ID]": str(contact_id),
                "fields[TYPE_ID]": "2",
                "fields[SUBJECT]": "Call",
                "fields[COMMUNICATIONS][0][VALUE]": "+79990000001",
            },
        )

        assert response.json()["result"] == 1

    @pytest.mark.parametrize(
        ("change", "description"),
        [
            ({"SUBJECT": " "}, "The field SUBJECT is not defined or empty."),
            ({"TYPE_ID": 9}, "The field TYPE_ID is not defined or invalid."),
            (
                {"COMMUNICATIONS": []},
                "The field COMMUNICATIONS is not defined or invalid.",
            ),
            (
                {"COMMUNICATIONS": [{"VALUE": "1"}, {"VALUE": "2"}]},
                "The only one communication is allowed for activity of specified type.",
            ),
            (
                {"COMMUNICATIONS": [{"VALUE": "a@example.com", "TYPE": "EMAIL"}]},
                "The field COMMUNICATIONS is not defined or invalid.",
            ),
            ({"OWNER_ID": 404}, "Could not find 'CONTACT' with ID: 404"),
        ],
    )
    def test_what_the_server_refuses_is_refused_with_its_text(
        self,
        sandbox: RunningSandbox,
        contact_id: int,
        change: dict[str, Any],
        description: str,
    ) -> None:
        response = sandbox.call(
            "crm.activity.add", {"fields": call_fields(3, contact_id, **change)}
        )

        assert response.status_code == 400
        assert response.json() == {"error": "", "error_description": description}

    def test_add_raises_the_activity_event(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        sandbox.result(
            "event.bind",
            {"event": "ONCRMACTIVITYADD", "handler": "http://127.0.0.1:9/h"},
        )

        activity_id = add_call(sandbox, (3, contact_id))

        waited = sandbox.http.post("/_sandbox/events/wait", json={"timeout_s": 5})
        deliveries = waited.json()["deliveries"]
        assert [(d["event"], d["data"]) for d in deliveries] == [
            ("ONCRMACTIVITYADD", {"FIELDS": {"ID": str(activity_id)}})
        ]


class TestList:
    def test_matches_the_recorded_answer(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        add_call(sandbox, (3, contact_id))

        response = sandbox.call("crm.activity.list", {})

        fixture = recorded("crm.activity.list.response.json")
        fixture.pop("next")  # one row: nothing remains
        # The recording prints `operating_reset_at` as a date string (docs quirk).
        fixture["time"].pop("operating_reset_at")
        assert shape_differences(response.json(), fixture, allow_missing=QUIET) == []
        assert response.json()["total"] == 1

    def test_the_default_order_is_start_time_ascending(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        for start in ("2026-05-03 10:00", "2026-05-01 10:00", "2026-05-02 10:00"):
            add_call(sandbox, (3, contact_id), START_TIME=start)

        rows = sandbox.result("crm.activity.list", {"select": ["ID", "START_TIME"]})

        assert [row["ID"] for row in rows] == ["2", "3", "1"]

    def test_communications_and_files_only_when_selected(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        add_call(sandbox, (3, contact_id))

        plain = sandbox.result("crm.activity.list", {"select": ["*"]})[0]
        named = sandbox.result(
            "crm.activity.list", {"select": ["ID", "COMMUNICATIONS", "FILES"]}
        )[0]

        assert "COMMUNICATIONS" not in plain
        assert "FILES" not in plain
        assert named["FILES"] == []
        [communication] = named["COMMUNICATIONS"]
        assert communication["TYPE"] == "PHONE"
        assert communication["VALUE"] == "+79990000001"
        assert (communication["ENTITY_TYPE_ID"], communication["ENTITY_ID"]) == (
            "3",
            str(contact_id),
        )
        assert communication["ENTITY_SETTINGS"]["LAST_NAME"] == "Contact"

    def test_bindings_filter_finds_activities_of_the_listed_owners(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})
        on_deal = add_call(
            sandbox,
            (2, deal_id),
            COMMUNICATIONS=[
                {"VALUE": "+7999", "ENTITY_TYPE_ID": 3, "ENTITY_ID": contact_id}
            ],
        )
        on_contact = add_call(sandbox, (3, contact_id))

        by_deal = sandbox.result(
            "crm.activity.list",
            {"filter": {"BINDINGS": [{"OWNER_TYPE_ID": 2, "OWNER_ID": deal_id}]}},
        )
        by_both = sandbox.call(
            "crm.activity.list",
            {
                "filter": {
                    "BINDINGS": [
                        {"OWNER_TYPE_ID": 2, "OWNER_ID": deal_id},
                        {"OWNER_TYPE_ID": 3, "OWNER_ID": contact_id},
                    ]
                },
                "select": ["ID"],
                "order": {"ID": "ASC"},
            },
        )

        assert [row["ID"] for row in by_deal] == [str(on_deal)]
        # The join lists an activity once per listed owner it is bound to.
        assert [row["ID"] for row in by_both.json()["result"]] == [
            str(on_deal),
            str(on_deal),
            str(on_contact),
        ]
        assert by_both.json()["total"] == 3

    def test_owner_and_type_filters_are_string_fields_read_as_numbers(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        add_call(sandbox, (3, contact_id))
        add_call(sandbox, (3, contact_id), COMPLETED="N")

        rows = sandbox.result(
            "crm.activity.list",
            {"filter": {"OWNER_TYPE_ID": "3", "COMPLETED": "N"}, "select": ["ID"]},
        )

        assert rows == [{"ID": "2"}]

    def test_selecting_description_brings_the_provider(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        add_call(sandbox, (3, contact_id), DESCRIPTION="Called back")

        [row] = sandbox.result("crm.activity.list", {"select": ["DESCRIPTION"]})

        assert row == {
            "DESCRIPTION": "Called back",
            "PROVIDER_ID": "VOXIMPLANT_CALL",
            "PROVIDER_TYPE_ID": "CALL",
            "ID": "1",
        }


class TestUpdateAndDelete:
    def test_update_answers_true_and_completion_sets_the_status(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        activity_id = add_call(sandbox, (3, contact_id), COMPLETED="N")

        result = sandbox.result(
            "crm.activity.update",
            {"id": activity_id, "fields": {"COMPLETED": "Y", "OWNER_ID": 999}},
        )

        activity = sandbox.result("crm.activity.get", {"id": activity_id})
        assert result is True
        assert (activity["COMPLETED"], activity["STATUS"]) == ("Y", "2")
        assert activity["OWNER_ID"] == str(contact_id)

    def test_delete_answers_true_and_the_activity_is_gone(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        activity_id = add_call(sandbox, (3, contact_id))

        assert sandbox.result("crm.activity.delete", {"id": activity_id}) is True
        response = sandbox.call("crm.activity.get", {"id": activity_id})
        assert response.json() == {"error": "", "error_description": "Not found"}

    def test_fields_describes_the_activity(self, sandbox: RunningSandbox) -> None:
        described = sandbox.result("crm.activity.fields")

        assert described["COMMUNICATIONS"]["isRequired"] is True
        assert described["BINDINGS"]["isReadOnly"] is True
        assert described["TYPE_ID"]["type"] == "crm_enum_activitytype"
