"""`log.blogpost.add/get` and `im.notify.*` over HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"

TEAM = {
    "users": [
        {"ID": "1", "ACTIVE": True, "NAME": "Admin", "UF_DEPARTMENT": [1]},
        {"ID": "2", "ACTIVE": True, "NAME": "Anna", "UF_DEPARTMENT": [3]},
        {"ID": "3", "ACTIVE": True, "NAME": "Boris", "UF_DEPARTMENT": [1]},
    ],
    "departments": [
        {"ID": "1", "NAME": "Company", "SORT": 500},
        {"ID": "3", "NAME": "Sales", "SORT": 500, "PARENT": "1"},
    ],
}


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def as_user(sandbox: RunningSandbox, user_id: int) -> str:
    response = sandbox.http.post(
        "/_sandbox/oauth/tokens", json={"user_id": user_id, "scopes": ["log", "im"]}
    )
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
def team(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.load(TEAM)
    return sandbox


class TestBlogPostAdd:
    def test_answers_the_new_post_id_as_an_integer(self, team: RunningSandbox) -> None:
        answer = team.call("log.blogpost.add", {"POST_MESSAGE": "Hello team"}).json()

        fixture = recorded("log.blogpost.add.response.json")
        # operating_reset_at appears once a method has spent time on the limit.
        quiet = frozenset({"operating_reset_at"})
        assert shape_differences(answer, fixture, allow_missing=quiet) == []
        assert answer["result"] == 1

    def test_without_a_title_the_post_is_micro(self, team: RunningSandbox) -> None:
        post_id = team.result(
            "log.blogpost.add", {"POST_MESSAGE": "[B]Quarter[/B] closed\nwell"}
        )

        post = team.result("log.blogpost.get", {"POST_ID": post_id})[0]

        assert post["MICRO"] == "Y"
        assert post["TITLE"] == "Quarter closed well"
        assert post["DETAIL_TEXT"] == "[B]Quarter[/B] closed\nwell"

    def test_a_title_is_kept(self, team: RunningSandbox) -> None:
        post_id = team.result(
            "log.blogpost.add", {"POST_TITLE": "Results", "POST_MESSAGE": "Fine"}
        )

        post = team.result("log.blogpost.get", {"POST_ID": post_id})[0]

        assert (post["TITLE"], post["MICRO"]) == ("Results", "N")

    def test_nothing_valid_in_dest_is_refused(self, team: RunningSandbox) -> None:
        response = team.call(
            "log.blogpost.add", {"POST_MESSAGE": "x", "DEST": ["U999", "XX1"]}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "ERROR_CORE",
            "error_description": "Wrong destinations",
        }

    def test_an_empty_message_is_refused(self, team: RunningSandbox) -> None:
        response = team.call("log.blogpost.add", {"POST_MESSAGE": ""})

        assert response.status_code == 400
        assert response.json()["error"] == "ERROR_CORE"

    def test_form_encoded_destinations_are_read(self, team: RunningSandbox) -> None:
        response = team.http.post(
            "/rest/1/sandbox/log.blogpost.add",
            content="POST_MESSAGE=Hi&DEST%5B%5D=U2&DEST%5B%5D=DR3",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert response.status_code == 200
        assert isinstance(response.json()["result"], int)


class TestBlogPostGet:
    def test_rows_are_strings_with_iso_dates(self, team: RunningSandbox) -> None:
        team.result("log.blogpost.add", {"POST_MESSAGE": "Hello"})

        answer = team.call("log.blogpost.get").json()

        post = answer["result"][0]
        assert post["ID"] == "1"
        assert post["AUTHOR_ID"] == "1"
        assert post["PUBLISH_STATUS"] == "P"
        assert post["HAS_SOCNET_ALL"] == "Y"
        assert post["DATE_PUBLISH"].endswith("+03:00")
        assert answer["total"] == 1

    def test_newest_posts_come_first(self, team: RunningSandbox) -> None:
        for text in ("first", "second", "third"):
            team.result("log.blogpost.add", {"POST_MESSAGE": text})

        posts = team.result("log.blogpost.get")

        assert [post["DETAIL_TEXT"] for post in posts] == ["third", "second", "first"]

    def test_an_unknown_post_id_answers_an_empty_list(
        self, team: RunningSandbox
    ) -> None:
        answer = team.call("log.blogpost.get", {"POST_ID": 77}).json()

        assert answer["result"] == []
        assert answer["total"] == 0

    def test_a_post_for_one_user_is_hidden_from_others(
        self, team: RunningSandbox
    ) -> None:
        post_id = team.result(
            "log.blogpost.add", {"POST_MESSAGE": "Private", "DEST": ["U2"]}
        )

        anna = team.http.get(
            "/rest/log.blogpost.get",
            params={"auth": as_user(team, 2), "POST_ID": post_id},
        )
        boris = team.http.get(
            "/rest/log.blogpost.get",
            params={"auth": as_user(team, 3), "POST_ID": post_id},
        )

        assert len(anna.json()["result"]) == 1
        assert boris.json()["result"] == []

    def test_a_department_post_reaches_its_members(self, team: RunningSandbox) -> None:
        team.result("log.blogpost.add", {"POST_MESSAGE": "Sales only", "DEST": ["DR3"]})

        anna = team.http.get(
            "/rest/log.blogpost.get", params={"auth": as_user(team, 2)}
        )

        assert [post["DETAIL_TEXT"] for post in anna.json()["result"]] == ["Sales only"]


class TestNotify:
    def test_a_system_notification_answers_its_id(self, team: RunningSandbox) -> None:
        answer = team.call(
            "im.notify.system.add", {"USER_ID": 2, "MESSAGE": "New lead assigned"}
        ).json()

        assert answer["result"] == 1
        stored = team.app.portal.table("notify").get(1)
        assert stored is not None
        assert (stored["USER_ID"], stored["NOTIFY_TYPE"]) == ("2", "SYSTEM")

    def test_parameters_are_read_in_any_case(self, team: RunningSandbox) -> None:
        answer = team.call(
            "im.notify.system.add", {"user_id": 2, "message": "lower case"}
        ).json()

        assert isinstance(answer["result"], int)

    def test_a_missing_user_is_refused(self, team: RunningSandbox) -> None:
        response = team.call("im.notify.system.add", {"MESSAGE": "x"})

        assert response.status_code == 400
        assert response.json() == {
            "error": "USER_ID_EMPTY",
            "error_description": "User ID can't be empty",
        }

    def test_a_blank_message_is_refused(self, team: RunningSandbox) -> None:
        response = team.call("im.notify.system.add", {"USER_ID": 2, "MESSAGE": "  "})

        assert response.status_code == 400
        assert response.json()["error"] == "MESSAGE_EMPTY"

    def test_an_unknown_user_answers_false(self, team: RunningSandbox) -> None:
        answer = team.call("im.notify.system.add", {"USER_ID": 42, "MESSAGE": "x"})

        assert answer.json()["result"] is False

    def test_a_reused_tag_replaces_the_earlier_notification(
        self, team: RunningSandbox
    ) -> None:
        params = {"USER_ID": 2, "MESSAGE": "first", "TAG": "lead|7"}
        team.result("im.notify.system.add", params)

        second = team.result("im.notify.system.add", {**params, "MESSAGE": "second"})

        rows = list(team.app.portal.table("notify"))
        assert [row["MESSAGE"] for row in rows] == ["second"]
        assert second == 2

    def test_a_personal_notification_names_its_sender(
        self, team: RunningSandbox
    ) -> None:
        notify_id = team.result(
            "im.notify.personal.add", {"USER_ID": 2, "MESSAGE": "Please call"}
        )

        stored = team.app.portal.table("notify").get(notify_id)
        assert stored is not None
        assert stored["FROM_USER_ID"] == "1"


PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e5273fcb0000000049454e44ae426082"
)


def encoded(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def stored_files(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = sandbox.http.get("/_sandbox/feed/files").json()[
        "files"
    ]
    return files


def download(sandbox: RunningSandbox, attached_id: int) -> httpx.Response:
    return sandbox.http.get(f"/_sandbox/feed/files/{attached_id}")


class TestBlogPostFiles:
    def test_a_file_is_saved_and_the_post_lists_it(self, team: RunningSandbox) -> None:
        post_id = team.result(
            "log.blogpost.add",
            {"POST_MESSAGE": "Chart", "FILES": [["chart.png", encoded(PIXEL)]]},
        )

        [post] = team.result("log.blogpost.get", {"POST_ID": post_id})

        assert post["HAS_PROPS"] == "Y"
        assert post["FILES"] == [1]
        field = post["UF_BLOG_POST_FILE"]
        assert (field["USER_TYPE_ID"], field["MULTIPLE"]) == ("disk_file", "Y")
        assert field["VALUE"] == [1]
        assert field["ENTITY_VALUE_ID"] == post_id
        # The keys and types of the field as docs `log/log-blogpost-get.md` shows it.
        assert (field["ID"], field["ENTITY_ID"], field["FIELD_NAME"]) == (
            "8",
            "BLOG_POST",
            "UF_BLOG_POST_FILE",
        )
        assert field["USER_TYPE"]["CLASS_NAME"] == "Bitrix\\Disk\\Uf\\FileUserType"
        assert field["USER_TYPE"]["BASE_TYPE"] == "int"

    def test_the_stored_bytes_are_the_decoded_content(
        self, team: RunningSandbox
    ) -> None:
        post_id = team.result(
            "log.blogpost.add",
            {"POST_MESSAGE": "Chart", "FILES": [["chart.png", encoded(PIXEL)]]},
        )

        response = download(team, 1)

        assert response.content == PIXEL
        assert response.headers["content-type"] == "image/png"
        assert stored_files(team) == [
            {
                "id": 1,
                "object_id": 1,
                "post_id": post_id,
                "name": "chart.png",
                "size": len(PIXEL),
            }
        ]

    def test_several_files_keep_their_order(self, team: RunningSandbox) -> None:
        post_id = team.result(
            "log.blogpost.add",
            {
                "POST_MESSAGE": "Two",
                "FILES": [["a.txt", encoded(b"first")], ["b.txt", encoded(b"second")]],
            },
        )

        [post] = team.result("log.blogpost.get", {"POST_ID": post_id})

        assert post["FILES"] == [1, 2]
        assert [download(team, n).content for n in post["FILES"]] == [
            b"first",
            b"second",
        ]

    def test_form_encoded_files_are_read(self, team: RunningSandbox) -> None:
        body = "&".join(
            [
                "POST_MESSAGE=Hi",
                "FILES%5B0%5D%5B0%5D=chart.png",
                "FILES%5B0%5D%5B1%5D=" + quote(encoded(PIXEL), safe=""),
            ]
        )
        response = team.http.post(
            "/rest/1/sandbox/log.blogpost.add",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert response.status_code == 200
        assert download(team, 1).content == PIXEL

    def test_base64_is_read_as_php_reads_it(self, team: RunningSandbox) -> None:
        # Line breaks and missing padding, as some encoders write it.
        text = encoded(b"leadloop chart!").rstrip("=")
        wrapped = text[:8] + "\r\n" + text[8:]

        team.result(
            "log.blogpost.add", {"POST_MESSAGE": "x", "FILES": [["a.bin", wrapped]]}
        )

        assert download(team, 1).content == b"leadloop chart!"

    @pytest.mark.parametrize(
        "files",
        [[["empty.png", ""]], [["no-content.png"]], [["false.png", "false"]], "abc"],
    )
    def test_a_file_without_content_is_skipped_and_the_post_added(
        self, team: RunningSandbox, files: Any
    ) -> None:
        post_id = team.result("log.blogpost.add", {"POST_MESSAGE": "x", "FILES": files})

        [post] = team.result("log.blogpost.get", {"POST_ID": post_id})

        assert post["HAS_PROPS"] == "N"
        assert "FILES" not in post
        assert stored_files(team) == []

    def test_a_nameless_file_gets_a_made_up_name(self, team: RunningSandbox) -> None:
        team.result(
            "log.blogpost.add", {"POST_MESSAGE": "x", "FILES": [encoded(b"bare")]}
        )

        [stored] = stored_files(team)

        assert len(stored["name"]) == 32
        assert stored["name"].isalnum()
        assert download(team, 1).content == b"bare"

    def test_a_path_in_the_name_is_dropped(self, team: RunningSandbox) -> None:
        team.result(
            "log.blogpost.add",
            {"POST_MESSAGE": "x", "FILES": [["../../etc/chart.png", encoded(PIXEL)]]},
        )

        assert [file["name"] for file in stored_files(team)] == ["chart.png"]

    def test_an_unknown_file_is_not_found(self, team: RunningSandbox) -> None:
        assert download(team, 5).status_code == 404

    def test_a_reset_forgets_the_files(self, team: RunningSandbox) -> None:
        team.result(
            "log.blogpost.add",
            {"POST_MESSAGE": "x", "FILES": [["a.png", encoded(PIXEL)]]},
        )

        team.reset()

        assert stored_files(team) == []
        assert download(team, 1).status_code == 404
