"""OAuth access to `/rest/{method}` and the rotating-refresh token endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def mint(sandbox: RunningSandbox, **body: Any) -> dict[str, Any]:
    body.setdefault("user_id", 1)
    response = sandbox.http.post("/_sandbox/oauth/tokens", json=body)
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def refresh(sandbox: RunningSandbox, pair: dict[str, Any]) -> httpx.Response:
    return sandbox.http.get(
        "/oauth/token/",
        params={
            "grant_type": "refresh_token",
            "client_id": pair["client_id"],
            "client_secret": pair["client_secret"],
            "refresh_token": pair["refresh_token"],
        },
    )


def current_user(sandbox: RunningSandbox, access_token: str) -> httpx.Response:
    return sandbox.http.get("/rest/user.current", params={"auth": access_token})


class TestMintedTokens:
    def test_a_minted_pair_has_the_recorded_shape(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["crm", "task"])

        fixture = recorded("oauth.token.refresh.response.json")
        assert shape_differences(pair, fixture) == []
        assert pair["scope"] == "crm,task"
        assert pair["expires_in"] == 3600
        assert pair["user_id"] == 1
        assert pair["client_endpoint"] == f"{sandbox.base_url}/rest/"

    @pytest.mark.parametrize("carrier", ["query", "body", "access_token", "bearer"])
    def test_the_token_is_taken_from_any_carrier(
        self, sandbox: RunningSandbox, carrier: str
    ) -> None:
        token = mint(sandbox, scopes=["user"])["access_token"]

        if carrier == "query":
            response = sandbox.http.get("/rest/user.current", params={"auth": token})
        elif carrier == "body":
            response = sandbox.http.post("/rest/user.current", json={"auth": token})
        elif carrier == "access_token":
            response = sandbox.http.post(
                "/rest/user.current.json",
                content=f"access_token={token}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            response = sandbox.http.get(
                "/rest/user.current", headers={"Authorization": f"Bearer {token}"}
            )

        assert response.status_code == 200
        assert response.json()["result"]["ID"] == "1"

    def test_the_token_acts_for_its_user(self, sandbox: RunningSandbox) -> None:
        sandbox.load(
            {"users": [{"ID": "1", "ACTIVE": True}, {"ID": "5", "ACTIVE": True}]}
        )
        token = mint(sandbox, user_id=5, scopes=["user"])["access_token"]

        response = current_user(sandbox, token)

        assert response.json()["result"]["ID"] == "5"

    def test_an_expired_token_answers_expired_token(
        self, sandbox: RunningSandbox
    ) -> None:
        token = mint(sandbox, scopes=["user"], expires_in=0)["access_token"]

        response = current_user(sandbox, token)

        assert response.status_code == 401
        assert response.json() == {
            "error": "expired_token",
            "error_description": "The access token provided has expired",
        }

    def test_the_expire_control_ends_a_live_token(
        self, sandbox: RunningSandbox
    ) -> None:
        token = mint(sandbox, scopes=["user"])["access_token"]
        assert current_user(sandbox, token).status_code == 200

        expired = sandbox.http.post(
            "/_sandbox/oauth/expire", json={"access_token": token}
        )

        assert expired.json() == {"expired": 1}
        assert current_user(sandbox, token).json()["error"] == "expired_token"

    def test_an_unknown_token_is_invalid(self, sandbox: RunningSandbox) -> None:
        response = current_user(sandbox, "no-such-token")

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"

    def test_a_reset_forgets_every_token(self, sandbox: RunningSandbox) -> None:
        token = mint(sandbox, scopes=["user"])["access_token"]

        sandbox.reset()

        assert current_user(sandbox, token).json()["error"] == "invalid_token"

    def test_an_unknown_user_cannot_be_minted(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post("/_sandbox/oauth/tokens", json={"user_id": 404})

        assert response.status_code == 400


class TestRefresh:
    def test_refresh_answers_a_new_pair(self, sandbox: RunningSandbox) -> None:
        pair = mint(sandbox, scopes=["crm", "user"])

        response = refresh(sandbox, pair)

        fresh = response.json()
        assert response.status_code == 200
        assert (
            shape_differences(fresh, recorded("oauth.token.refresh.response.json"))
            == []
        )
        assert fresh["access_token"] != pair["access_token"]
        assert fresh["refresh_token"] != pair["refresh_token"]
        assert fresh["scope"] == "crm,user"
        assert current_user(sandbox, fresh["access_token"]).status_code == 200

    def test_refresh_also_works_as_a_form_post(self, sandbox: RunningSandbox) -> None:
        pair = mint(sandbox, scopes=["user"])

        response = sandbox.http.post(
            "/oauth/token/",
            data={
                "grant_type": "refresh_token",
                "client_id": pair["client_id"],
                "client_secret": pair["client_secret"],
                "refresh_token": pair["refresh_token"],
            },
        )

        assert response.status_code == 200
        assert response.json()["user_id"] == 1

    def test_an_expired_access_token_is_renewed_by_refresh(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["user"], expires_in=0)
        assert current_user(sandbox, pair["access_token"]).status_code == 401

        fresh = refresh(sandbox, pair).json()

        assert current_user(sandbox, fresh["access_token"]).status_code == 200

    def test_a_used_refresh_token_is_an_invalid_grant(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["user"])
        assert refresh(sandbox, pair).status_code == 200

        replay = refresh(sandbox, pair)

        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_grant"
        assert replay.json()["error_description"]

    def test_a_wrong_client_secret_is_an_invalid_client(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["user"])

        response = refresh(sandbox, {**pair, "client_secret": "guess"})

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"

    def test_another_apps_refresh_token_is_an_invalid_grant(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["user"])
        other = mint(sandbox, scopes=["user"], client_id="local.other")

        response = refresh(sandbox, {**other, "refresh_token": pair["refresh_token"]})

        assert response.json()["error"] == "invalid_grant"

    def test_an_unknown_grant_type_is_an_invalid_request(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/oauth/token/", params={"grant_type": "password"})

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"

    def test_the_configured_lifetime_applies_to_new_tokens(
        self, sandbox: RunningSandbox
    ) -> None:
        pair = mint(sandbox, scopes=["user"])
        sandbox.http.post(
            "/_sandbox/oauth/settings", json={"access_token_lifetime_s": 0}
        )

        fresh = refresh(sandbox, pair).json()

        assert fresh["expires_in"] == 0
        assert current_user(sandbox, fresh["access_token"]).status_code == 401


class TestAuthorizationCode:
    def test_a_code_is_exchanged_once_for_a_pair(self, sandbox: RunningSandbox) -> None:
        grant = sandbox.http.post(
            "/_sandbox/oauth/codes", json={"user_id": 1, "scopes": ["user"]}
        ).json()
        params = {
            "grant_type": "authorization_code",
            "client_id": grant["client_id"],
            "client_secret": grant["client_secret"],
            "code": grant["code"],
        }

        first = sandbox.http.get("/oauth/token/", params=params)
        second = sandbox.http.get("/oauth/token/", params=params)

        assert first.status_code == 200
        assert current_user(sandbox, first.json()["access_token"]).status_code == 200
        assert second.json()["error"] == "invalid_grant"
