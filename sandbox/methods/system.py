"""Methods without a scope: `server.time`, `profile`, `scope`, `methods`, `app.info`."""

from __future__ import annotations

from datetime import datetime

from sandbox.methods.users import ADMIN_USER_ID, is_active
from sandbox.protocol import MethodResult
from sandbox.registry import REGISTRY, Call, method


@method("server.time", scope=None)
def server_time(call: Call) -> MethodResult:
    return MethodResult(
        datetime.now(call.portal.zone).replace(microsecond=0).isoformat()
    )


@method("batch", scope=None)
def batch_placeholder(call: Call) -> MethodResult:
    # `batch` is run by the server itself (sandbox.batch); registered so it exists.
    raise RuntimeError("batch is dispatched by the server")


@method("scope", scope=None)
def scope(call: Call) -> MethodResult:
    return MethodResult(sorted(call.auth.scopes))


@method("methods", scope=None)
def methods(call: Call) -> MethodResult:
    return MethodResult(sorted(REGISTRY))


# A plan name as `app.info` reports it: region prefix and plan code (`de_pro100`).
LICENSE_FAMILY = "pro"
LICENSE_TYPE = "pro100"
LICENSE = f"en_{LICENSE_TYPE}"


@method("profile", scope=None)
def profile(call: Call) -> MethodResult:
    """The caller in brief (srv `CRestProvider::getProfile`); `[]` when inactive."""
    row = call.portal.table("user").get(call.user_id)
    if row is None or not is_active(row):
        return MethodResult([])
    answer = {
        "ID": str(row.get("ID")),
        "ADMIN": call.user_id == ADMIN_USER_ID,
        "NAME": row.get("NAME") or "",
        "LAST_NAME": row.get("LAST_NAME") or "",
        "PERSONAL_GENDER": row.get("PERSONAL_GENDER") or "",
        "TIME_ZONE": row.get("TIME_ZONE") or "",
    }
    if row.get("PERSONAL_PHOTO"):
        answer["PERSONAL_PHOTO"] = row["PERSONAL_PHOTO"]
    return MethodResult(answer)


@method("app.info", scope=None)
def app_info(call: Call) -> MethodResult:
    """A webhook learns its scopes and the plan; an app its own record as well."""
    if call.auth.kind == "webhook":
        return MethodResult({"SCOPE": sorted(call.auth.scopes), "LICENSE": LICENSE})
    return MethodResult(
        {
            "ID": 1,
            "CODE": call.auth.client_id,
            "VERSION": 1,
            "STATUS": "L",
            "INSTALLED": True,
            "PAYMENT_EXPIRED": "N",
            "DAYS": None,
            "LANGUAGE_ID": "en",
            "LICENSE": LICENSE,
            "LICENSE_TYPE": LICENSE_TYPE,
            "LICENSE_FAMILY": LICENSE_FAMILY,
        }
    )
