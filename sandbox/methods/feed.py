"""The activity stream and notifications: `log.blogpost.add/get`, `im.notify.*`.

`log.blogpost.*` read their parameters by exact UPPER name (srv
`socialnetwork/classes/general/rest.php`); `im.notify.*` upper-case the query first.
Posts are stored as `log.blogpost.get` returns them; who may read a post is kept
beside it, since the answer does not show it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sandbox.methods.users import (
    ADMIN_USER_ID,
    departments_of,
    iso_now,
    legacy_page,
)
from sandbox.phpform import intval
from sandbox.protocol import MethodResult, RestError, core_error
from sandbox.registry import Call, method
from sandbox.state import Portal

POSTS = "blogpost"
NOTIFICATIONS = "notify"
EVERYONE = "UA"  # "all employees", the default destination
_DESTINATION = re.compile(r"^(U|SG|DR)(\d+)$")
_TAGS = re.compile(r"\[[^\]]*\]|<[^>]*>")


def _rights(portal: Portal) -> dict[int, list[str]]:
    """Post id -> destinations; a post loaded from a snapshot is visible to all."""
    rights = portal.extras.get("blogpost_rights")
    if not isinstance(rights, dict):
        rights = {}
        portal.extras["blogpost_rights"] = rights
    return rights


def _valid_destinations(portal: Portal, destinations: list[Any]) -> list[str]:
    """Keep `UA`, existing users `U<n>`, departments `DR<n>` and groups `SG<n>`."""
    kept: list[str] = []
    for raw in destinations:
        code = str(raw).strip().upper()
        match = _DESTINATION.match(code)
        if code == EVERYONE:
            valid = True
        elif match is None:
            valid = False
        elif match.group(1) == "U":
            valid = int(match.group(2)) in portal.table("user")
        elif match.group(1) == "DR":
            valid = int(match.group(2)) in portal.table("department")
        else:
            # No workgroups exist in the sandbox; any positive group id is taken.
            valid = int(match.group(2)) > 0
        if valid and code not in kept:
            kept.append(code)
    return kept


def _micro_title(text: str) -> str:
    """A post without a title is "micro": its text, tags stripped, on one line."""
    return " ".join(_TAGS.sub(" ", text).split())


@method("log.blogpost.add", scope="log")
def blogpost_add(call: Call) -> MethodResult:
    params = call.params
    message = params.get("POST_MESSAGE")
    if not isinstance(message, str) or not message.strip():
        raise core_error("Blog post hasn't been added")
    destinations = params.get("DEST")
    if isinstance(destinations, list) and destinations:
        rights = _valid_destinations(call.portal, destinations)
        if not rights:
            raise core_error("Wrong destinations")
    else:
        rights = [EVERYONE]

    author = call.user_id
    requested_author = intval(params.get("USER_ID"))
    if requested_author > 0 and call.user_id == ADMIN_USER_ID:  # admins only
        author = requested_author
    title = params.get("POST_TITLE")
    title = title.strip() if isinstance(title, str) else ""
    table = call.portal.table(POSTS)
    post_id = table.allocate_id()
    row = {
        "ID": str(post_id),
        "BLOG_ID": str(author),
        "PUBLISH_STATUS": "P",
        "TITLE": title or _micro_title(message),
        "AUTHOR_ID": str(author),
        "ENABLE_COMMENTS": "Y",
        "NUM_COMMENTS": "0",
        "CODE": None,
        "MICRO": "N" if title else "Y",
        "DETAIL_TEXT": message,
        "DATE_PUBLISH": iso_now(call.portal),
        "CATEGORY_ID": "",
        "HAS_SOCNET_ALL": "Y" if EVERYONE in rights else "N",
        "HAS_TAGS": "N",
        "HAS_IMAGES": "N",
        "HAS_PROPS": "N",
        "HAS_COMMENT_IMAGES": None,
    }
    table.insert(row, post_id)
    _rights(call.portal)[post_id] = rights
    call.portal.emit(
        "ONLIVEFEEDPOSTADD", {"FIELDS": {"POST_ID": str(post_id)}}, time.time()
    )
    return MethodResult(post_id)


def _visible(portal: Portal, post: dict[str, Any], user_id: int) -> bool:
    rights = _rights(portal).get(intval(post.get("ID")))
    if rights is None or EVERYONE in rights or post.get("AUTHOR_ID") == str(user_id):
        return True
    user = portal.table("user").get(user_id) or {}
    mine = {f"U{user_id}", *(f"DR{dept}" for dept in departments_of(user))}
    return bool(mine & set(rights))


@method("log.blogpost.get", scope="log")
def blogpost_get(call: Call) -> MethodResult:
    """Posts the caller may read, newest first; `POST_ID` picks one."""
    portal = call.portal
    posts = [
        post
        for post in portal.table(POSTS)
        if post.get("PUBLISH_STATUS", "P") == "P"
        and _visible(portal, post, call.user_id)
    ]
    post_id = intval(call.params.get("POST_ID"))
    log_rights = call.params.get("LOG_RIGHTS")
    if post_id > 0:
        posts = [post for post in posts if intval(post.get("ID")) == post_id]
    elif isinstance(log_rights, list):
        wanted = {str(code).upper() for code in log_rights}
        posts = [
            post
            for post in posts
            if wanted & set(_rights(portal).get(intval(post.get("ID")), [EVERYONE]))
        ]
    posts.sort(key=lambda post: intval(post.get("ID")), reverse=True)
    page, total, following = legacy_page(posts, call.start)
    return MethodResult([dict(post) for post in page], total=total, next=following)


# -- notifications ------------------------------------------------------------------


def user_id_empty() -> RestError:
    return RestError("USER_ID_EMPTY", "User ID can't be empty", 400)


def message_empty() -> RestError:
    return RestError("MESSAGE_EMPTY", "Message can't be empty", 400)


def _notify(call: Call, kind: str) -> MethodResult:
    params = call.params
    user_id = intval(params.get("USER_ID"))
    if user_id <= 0:
        raise user_id_empty()
    message = params.get("MESSAGE")
    message = message.strip() if isinstance(message, str) else ""
    if not message:
        raise message_empty()
    if user_id not in call.portal.table("user"):
        return MethodResult(False)

    table = call.portal.table(NOTIFICATIONS)
    tag = params.get("TAG")
    if isinstance(tag, str) and tag:
        # A TAG reused for the same user replaces the earlier notification.
        for old in [row for row in table if row["TAG"] == tag]:
            if old["USER_ID"] == str(user_id):
                table.delete(intval(old["ID"]))
    notify_id = table.allocate_id()
    out = params.get("MESSAGE_OUT")
    table.insert(
        {
            "ID": str(notify_id),
            "USER_ID": str(user_id),
            "FROM_USER_ID": "0" if kind == "SYSTEM" else str(call.user_id),
            "NOTIFY_TYPE": kind,
            "MESSAGE": message,
            "MESSAGE_OUT": out if isinstance(out, str) else "",
            "TAG": tag if isinstance(tag, str) else "",
            "ATTACH": params.get("ATTACH"),
            "DATE_CREATE": iso_now(call.portal),
        },
        notify_id,
    )
    return MethodResult(notify_id)


@method("im.notify.system.add", scope="im", upper_query=True)
def notify_system_add(call: Call) -> MethodResult:
    return _notify(call, "SYSTEM")


@method("im.notify.personal.add", scope="im", upper_query=True)
def notify_personal_add(call: Call) -> MethodResult:
    return _notify(call, "PERSONAL")
