"""`user.admin`: a JSON boolean, true only for the portal's administrator."""

from __future__ import annotations

from tests.sandbox.conftest import RunningSandbox

MANAGER = {
    "ID": "2",
    "ACTIVE": True,
    "NAME": "Ольга",
    "LAST_NAME": "Смирнова",
    "UF_DEPARTMENT": [1],
}


class TestUserAdmin:
    def test_the_administrators_webhook_is_told_true(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("user.admin")

        assert response.status_code == 200
        assert response.json()["result"] is True

    def test_a_managers_webhook_is_told_false(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"users": [MANAGER]})
        sandbox.app.portal.add_webhook(2, "manager", frozenset({"crm"}))

        response = sandbox.http.post("/rest/2/manager/user.admin.json")

        assert response.json()["result"] is False

    def test_no_scope_is_needed(self, sandbox: RunningSandbox) -> None:
        sandbox.app.portal.add_webhook(1, "bare", frozenset())

        response = sandbox.http.get("/rest/1/bare/USER.ADMIN")

        assert (response.status_code, response.json()["result"]) == (200, True)

    def test_an_app_asks_with_its_token(self, sandbox: RunningSandbox) -> None:
        minted = sandbox.http.post("/_sandbox/oauth/tokens", json={"user_id": 1})
        token = minted.json()["access_token"]

        response = sandbox.http.get("/rest/user.admin", params={"auth": token})

        assert response.json()["result"] is True

    def test_a_wrong_webhook_code_is_refused_before_the_method(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.post("/rest/1/wrong/user.admin")

        assert response.status_code == 401
        assert response.json()["error"] == "INVALID_CREDENTIALS"
