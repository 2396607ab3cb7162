"""The activity stream and notifications: `log.blogpost.add/get`, `im.notify.*`.

`log.blogpost.*` read their parameters by exact UPPER name (srv
`socialnetwork/classes/general/rest.php`); `im.notify.*` upper-case the query first.
Posts are stored as `log.blogpost.get` returns them; who may read a post is kept
beside it, since the answer does not show it.

Files come in `FILES` as `[name, base64 content]` pairs (or a bare base64 string).
Like the portal (srv `socialnetwork/lib/item/helper.php::addBlogPost`,
`rest/classes/general/rest_util.php::saveFile`), each is decoded leniently, saved to
the author's Drive and attached; one whose content is empty or decodes to nothing is
skipped without an error, and a nameless one gets a random name. The post then has
`HAS_PROPS` "Y", the `UF_BLOG_POST_FILE` field with the attached-object ids in
`VALUE`, and `FILES` with the same ids, as `log.blogpost.get` shows them.
`GET /_sandbox/feed/files` lists the stored files and
`GET /_sandbox/feed/files/{id}` answers one file's bytes.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import secrets
import string
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

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
# Drive objects and their attachments to posts; neither is part of a snapshot. The
# bytes stay in the row of the Drive object.
DISK_OBJECTS = "disk_object"
ATTACHED = "disk_attached_object"
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_RANDOM_NAME = string.ascii_letters + string.digits
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
    attached = _attach_files(call.portal, post_id, author, params.get("FILES"))
    if attached:
        table.update(post_id, _file_fields(attached, post_id))
    _rights(call.portal)[post_id] = rights
    call.portal.emit(
        "ONLIVEFEEDPOSTADD", {"FIELDS": {"POST_ID": str(post_id)}}, time.time()
    )
    return MethodResult(post_id)


def _attach_files(portal: Portal, post_id: int, author: int, raw: Any) -> list[int]:
    """Save each file of `FILES` to Drive and attach it; the attached-object ids."""
    if isinstance(raw, dict):
        entries = list(raw.values())
    elif isinstance(raw, list):
        entries = raw
    else:
        return []  # PHP's foreach over a string or nothing runs no iteration
    attached = []
    for entry in entries:
        saved = _saved_file(entry)
        if saved is None:
            continue
        name, content = saved
        objects = portal.table(DISK_OBJECTS)
        object_id = objects.allocate_id()
        objects.insert(
            {
                "ID": str(object_id),
                "NAME": name,
                "SIZE": str(len(content)),
                "CREATED_BY": str(author),
                "CREATE_TIME": iso_now(portal),
                "CONTENT": content,
            },
            object_id,
        )
        links = portal.table(ATTACHED)
        attached_id = links.allocate_id()
        links.insert(
            {
                "ID": str(attached_id),
                "OBJECT_ID": str(object_id),
                "MODULE_ID": "blog",
                "ENTITY_TYPE": "Bitrix\\Disk\\Uf\\BlogPostConnector",
                "ENTITY_ID": str(post_id),
            },
            attached_id,
        )
        attached.append(attached_id)
    return attached


def _saved_file(entry: Any) -> tuple[str, bytes] | None:
    """`CRestUtil::saveFile`: [name, base64] or a bare base64 string; None when the
    content is empty or decodes to nothing."""
    name: Any = ""
    content: Any = entry
    if isinstance(entry, dict):
        entry = list(entry.values())
    if isinstance(entry, list):
        if len(entry) < 2:
            return None
        name, content = entry[0], entry[1]
    if not isinstance(content, str) or content in ("", "false"):
        return None
    decoded = _lenient_base64(content)
    if not decoded:
        return None
    name = name if isinstance(name, str) else ""
    # A name is a file name, not a path; an empty one is made up, 32 characters.
    name = re.split(r"[\\/]", name)[-1].strip()
    if not name:
        name = "".join(secrets.choice(_RANDOM_NAME) for _ in range(32))
    return name, decoded


def _lenient_base64(text: str) -> bytes:
    """PHP's non-strict `base64_decode`: characters outside the alphabet, padding
    included, are skipped, so line breaks and missing padding do no harm."""
    letters = _NOT_BASE64.sub("", text)
    if len(letters) % 4 == 1:
        letters = letters[:-1]  # a lone trailing sextet carries no whole byte
    try:
        return base64.b64decode(letters + "=" * (-len(letters) % 4))
    except binascii.Error:
        return b""


def _file_fields(attached: list[int], post_id: int) -> dict[str, Any]:
    """What `log.blogpost.get` adds to a post with files: the user field (as
    `GetUserFields` describes it) and `FILES`, both with the attached-object ids."""
    return {
        "HAS_PROPS": "Y",
        "UF_BLOG_POST_FILE": {
            "ID": "8",
            "ENTITY_ID": "BLOG_POST",
            "FIELD_NAME": "UF_BLOG_POST_FILE",
            "USER_TYPE_ID": "disk_file",
            "XML_ID": "UF_BLOG_POST_FILE",
            "SORT": "100",
            "MULTIPLE": "Y",
            "MANDATORY": "N",
            "SHOW_FILTER": "N",
            "SHOW_IN_LIST": "N",
            "EDIT_IN_LIST": "Y",
            "IS_SEARCHABLE": "Y",
            "SETTINGS": {
                "IBLOCK_ID": 0,
                "SECTION_ID": 0,
                "UF_TO_SAVE_ALLOW_EDIT": None,
            },
            "EDIT_FORM_LABEL": None,
            "LIST_COLUMN_LABEL": None,
            "LIST_FILTER_LABEL": None,
            "ERROR_MESSAGE": None,
            "HELP_MESSAGE": None,
            "USER_TYPE": {
                "USER_TYPE_ID": "disk_file",
                "CLASS_NAME": "Bitrix\\Disk\\Uf\\FileUserType",
                "DESCRIPTION": "Файл (Диск)",
                "BASE_TYPE": "int",
                "TAG": ["DISK FILE ID", "DOCUMENT ID"],
            },
            "VALUE": list(attached),
            "ENTITY_VALUE_ID": post_id,
        },
        "FILES": list(attached),
    }


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


# -- the stored files, for tests and demos ------------------------------------------


def _file_entry(portal: Portal, link: dict[str, Any]) -> dict[str, Any] | None:
    stored = portal.table(DISK_OBJECTS).get(intval(link.get("OBJECT_ID")))
    if stored is None:
        return None
    return {
        "id": intval(link["ID"]),
        "object_id": intval(stored["ID"]),
        "post_id": intval(link["ENTITY_ID"]),
        "name": stored["NAME"],
        "size": intval(stored["SIZE"]),
    }


def feed_routes(portal: Portal) -> list[BaseRoute]:
    """`/_sandbox/feed/files[/{id}]`: the files attached to feed posts."""

    async def listing(request: Request) -> Response:
        entries = (_file_entry(portal, link) for link in portal.table(ATTACHED))
        return JSONResponse({"files": [entry for entry in entries if entry]})

    async def download(request: Request) -> Response:
        link = portal.table(ATTACHED).get(request.path_params["attached_id"])
        stored = None
        if link is not None:
            stored = portal.table(DISK_OBJECTS).get(intval(link["OBJECT_ID"]))
        if stored is None:
            return JSONResponse({"error": "no such file"}, status_code=404)
        kind = mimetypes.guess_type(stored["NAME"])[0] or "application/octet-stream"
        return Response(stored["CONTENT"], media_type=kind)

    return [
        Route("/_sandbox/feed/files", listing, methods=["GET"]),
        Route("/_sandbox/feed/files/{attached_id:int}", download, methods=["GET"]),
    ]


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
