"""`tasks.task.add/get/list/update`: an engine controller with legacy manners.

Fields go in UPPER (`TITLE`, `RESPONSIBLE_ID`, `UF_CRM_TASK`) and come out camelCase
with numbers as strings (`"id": "3711"`, `"status": "2"`), wrapped in `{"task": …}`
or `{"tasks": […]}` (srv `tasks/lib/rest/controllers/task.php`; fixtures
tasks.task.add.response.json and tasks.task.list.response.json).

Rows are stored as `tasks.task.list` returns them without a `select`, minus what is
derived on the way out (`creator`, `responsible`, `action`, `subStatus`, …).

Dates: the portal renders task dates in the *requesting user's* offset. Sandbox users
have no zone of their own, so task dates use the portal zone, like CRM dates, and
naive input is read in the portal zone as the server reads it in its own.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from sandbox.fields import parse_datetime
from sandbox.methods.users import ADMIN_USER_ID, full_name, iso_now
from sandbox.phpform import intval
from sandbox.protocol import MethodResult, RestError
from sandbox.registry import Call, method
from sandbox.state import Portal, Table

TABLE = "task"
PAGE_SIZE = 50
DEFAULT_AVATAR = "/bitrix/images/tasks/default_avatar.png"

STATUS_PENDING, STATUS_IN_PROGRESS, STATUS_AWAITING_CONTROL = 2, 3, 4
STATUS_COMPLETED, STATUS_DEFERRED = 5, 6
VALID_STATUSES = frozenset({1, 2, 3, 4, 5, 6})  # 1 "new" is stored as 2
OVERDUE = -1

# A fresh task as the add fixture shows it; None where the portal answers null.
TASK_DEFAULTS: dict[str, Any] = {
    "id": None, "parentId": None, "title": "", "description": "", "mark": None,
    "priority": "1", "multitask": "N", "notViewed": "N", "replicate": "N",
    "stageId": "0", "createdBy": None, "createdDate": None, "responsibleId": None,
    "changedBy": None, "changedDate": None, "statusChangedBy": None,
    "closedBy": None, "closedDate": None, "activityDate": None, "dateStart": None,
    "deadline": None, "startDatePlan": None, "endDatePlan": None, "guid": None,
    "xmlId": None, "commentsCount": None, "serviceCommentsCount": None,
    "allowChangeDeadline": "N", "allowTimeTracking": "N", "taskControl": "N",
    "addInReport": "N", "forkedByTemplateId": None, "timeEstimate": "0",
    "timeSpentInLogs": None, "matchWorkTime": "N", "forumTopicId": None,
    "forumId": None, "siteId": "s1", "subordinate": "Y", "exchangeModified": None,
    "exchangeId": None, "outlookVersion": "1", "viewedDate": None, "sorting": None,
    "durationFact": None, "isMuted": "N", "isPinned": "N", "isPinnedInGroup": "N",
    "flowId": None, "descriptionInBbcode": "Y", "status": "2",
    "statusChangedDate": None, "durationPlan": None, "durationType": "days",
    "favorite": "N", "groupId": "0", "auditors": [], "accomplices": [],
    "ufCrmTask": [],
}  # fmt: skip
# Shown only when selected by name (user fields and tags).
ON_REQUEST = frozenset({"ufCrmTask", "tags"})

DATE_KEYS = frozenset(
    {"createdDate", "changedDate", "closedDate", "activityDate", "dateStart",
     "deadline", "startDatePlan", "endDatePlan", "statusChangedDate",
     "viewedDate", "exchangeModified"}
)  # fmt: skip
INT_KEYS = frozenset(
    {"id", "parentId", "priority", "stageId", "createdBy", "responsibleId",
     "changedBy", "statusChangedBy", "closedBy", "groupId", "timeEstimate",
     "timeSpentInLogs", "commentsCount", "forumTopicId", "forumId",
     "durationPlan", "durationFact", "flowId", "status"}
)  # fmt: skip
FLAG_INPUTS = {
    "ALLOW_CHANGE_DEADLINE": "allowChangeDeadline",
    "ALLOW_TIME_TRACKING": "allowTimeTracking",
    "TASK_CONTROL": "taskControl",
    "MATCH_WORK_TIME": "matchWorkTime",
    "ADD_IN_REPORT": "addInReport",
    "MULTITASK": "multitask",
    "REPLICATE": "replicate",
}
# `CTasks::getAvailableOrderFields()`: any other key fails the whole list.
ORDER_FIELDS = frozenset(
    {"ID", "TITLE", "TIME_SPENT_IN_LOGS", "DATE_START", "CREATED_DATE",
     "CHANGED_DATE", "CLOSED_DATE", "ACTIVITY_DATE", "START_DATE_PLAN",
     "END_DATE_PLAN", "DEADLINE", "REAL_STATUS", "STATUS_COMPLETE", "PRIORITY",
     "MARK", "CREATED_BY_LAST_NAME", "RESPONSIBLE_LAST_NAME", "GROUP_ID",
     "TIME_ESTIMATE", "ALLOW_CHANGE_DEADLINE", "ALLOW_TIME_TRACKING",
     "MATCH_WORK_TIME", "FAVORITE", "SORTING", "IS_PINNED", "IS_PINNED_IN_GROUP"}
)  # fmt: skip


# -- errors -------------------------------------------------------------------------


def task_error(text: str) -> RestError:
    """Field errors: `ERROR_CORE` with the server's trailing `<br>`."""
    return RestError("ERROR_CORE", f"{text}<br>", 400)


def engine_missing(name: str) -> RestError:
    return RestError(
        "100", f"Could not find value for parameter {{{name}}} (internal error)", 400
    )


def bad_sorting_key() -> RestError:
    return RestError("0", "Invalid sorting key (internal error)", 400)


# -- conversions --------------------------------------------------------------------


def camel(name: str) -> str:
    """`RESPONSIBLE_ID` -> `responsibleId`, `UF_CRM_TASK` -> `ufCrmTask`."""
    head, *rest = name.lower().split("_")
    return head + "".join(part.capitalize() for part in rest)


def _stored_date(value: Any, portal: Portal) -> str | None:
    if value in (None, ""):
        return None
    moment = parse_datetime(str(value), portal.zone)
    return moment.isoformat() if moment else None


def _timestamp(table: Table, row_id: int, key: str, portal: Portal) -> float | None:
    def parse(value: Any) -> float | None:
        if not value:
            return None
        moment = parse_datetime(str(value), portal.zone)
        return moment.timestamp() if moment else None

    result = table.typed(row_id, key, parse)
    return result if isinstance(result, float) else None


def _user_ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(intval(item)) for item in items if intval(item) > 0]


def _crm_bindings(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if isinstance(item, str) and "_" in item]


def _tags(value: Any, portal: Portal) -> dict[str, dict[str, Any]]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    tags: dict[str, dict[str, Any]] = {}
    for title in (str(item).strip() for item in items):
        if title:
            tag_id = portal.extras.get("task_tag_next", 1)
            portal.extras["task_tag_next"] = tag_id + 1
            tags[str(tag_id)] = {"id": tag_id, "title": title}
    return tags


def _apply_fields(
    row: dict[str, Any], fields: dict[str, Any], portal: Portal
) -> dict[str, Any]:
    """Write the known UPPER fields into a stored row; unknown keys are dropped."""
    for key, value in fields.items():
        name = str(key)
        if name == "TITLE":
            row["title"] = str(value or "").strip()[:250]
        elif name == "DESCRIPTION":
            row["description"] = str(value or "")
        elif name in ("RESPONSIBLE_ID", "CREATED_BY", "GROUP_ID", "PARENT_ID"):
            number = intval(value)
            row[camel(name)] = str(number) if number or name == "GROUP_ID" else None
        elif name == "PRIORITY":
            row["priority"] = str(intval(value)) if intval(value) in (0, 1, 2) else "1"
        elif name == "STATUS":
            row["status"] = str(intval(value))
        elif name in ("DEADLINE", "START_DATE_PLAN", "END_DATE_PLAN", "DATE_START"):
            if value in (None, "") or _stored_date(value, portal):
                row[camel(name)] = _stored_date(value, portal)
        elif name in ("AUDITORS", "ACCOMPLICES"):
            row[camel(name)] = _user_ids(value)
        elif name == "UF_CRM_TASK":
            row["ufCrmTask"] = _crm_bindings(value)
        elif name == "TAGS":
            row["tags"] = _tags(value, portal)
        elif name in FLAG_INPUTS:
            row[FLAG_INPUTS[name]] = "Y" if value in ("Y", True, 1, "1") else "N"
        elif name == "MARK":
            row["mark"] = value if value in ("P", "N") else None
        elif name == "TIME_ESTIMATE":
            row["timeEstimate"] = str(max(0, intval(value)))
        elif name == "XML_ID":
            row["xmlId"] = str(value) if value not in (None, "") else None
    return row


def _check(row: dict[str, Any], portal: Portal) -> None:
    """`CTasks::CheckFields`, in the order the texts appear in the docs."""
    if not row.get("title"):
        raise task_error("Task title is not specified")
    if not row.get("responsibleId"):
        raise task_error("Assignee is not specified")
    if intval(row["responsibleId"]) not in portal.table("user"):
        raise task_error('User specified in the "Assignee" field not found')
    status = intval(row.get("status"))
    if status not in VALID_STATUSES:
        raise task_error("Invalid status")
    if status == 1:
        row["status"] = str(STATUS_PENDING)
    parent = row.get("parentId")
    if parent and intval(parent) not in portal.table(TABLE):
        raise task_error('Task specified in the "Parent Task" field not found')
    plan_start, plan_end = row.get("startDatePlan"), row.get("endDatePlan")
    if plan_start and plan_end:
        start = parse_datetime(plan_start, portal.zone)
        end = parse_datetime(plan_end, portal.zone)
        if start and end and end < start:
            raise task_error("End date specified earlier than start date in scheduling")


# -- the answer ---------------------------------------------------------------------


def _person(portal: Portal, user_id: Any) -> dict[str, Any] | None:
    row = portal.table("user").get(intval(user_id))
    if row is None:
        return None
    photo = row.get("PERSONAL_PHOTO")
    return {
        "id": str(row.get("ID")),
        "name": full_name(row),
        "link": f"/company/personal/user/{row.get('ID')}/",
        "icon": photo if isinstance(photo, str) and photo else DEFAULT_AVATAR,
        "workPosition": row.get("WORK_POSITION") or "",
    }


def _people(portal: Portal, ids: list[str]) -> dict[str, Any] | list[Any]:
    """Members keyed by id; PHP prints an empty array as `[]`."""
    found = {user_id: _person(portal, user_id) for user_id in ids}
    return {key: value for key, value in found.items() if value} or []


def sub_status(row: dict[str, Any], portal: Portal) -> int:
    """`STATUS` as the list shows it: `-1` for an overdue open task, else the status."""
    status = intval(row.get("status"))
    if status in (STATUS_PENDING, STATUS_IN_PROGRESS) and row.get("deadline"):
        deadline = parse_datetime(str(row["deadline"]), portal.zone)
        if deadline is not None and deadline < datetime.now(portal.zone):
            return OVERDUE
    return status


def allowed_actions(row: dict[str, Any], user_id: int) -> dict[str, bool]:
    """`getAllowedActionsArray`, simplified: creators and the admin edit, any member
    moves the task through its statuses."""
    status = intval(row.get("status"))
    editor = row.get("createdBy") == str(user_id) or user_id == ADMIN_USER_ID
    responsible = row.get("responsibleId") == str(user_id)
    finished = status == STATUS_COMPLETED
    favorite = row.get("favorite") == "Y"
    plan = editor or (responsible and row.get("allowChangeDeadline") == "Y")
    controlled = status == STATUS_AWAITING_CONTROL and editor
    return {
        "accept": False,
        "decline": False,
        "complete": status in (STATUS_PENDING, STATUS_IN_PROGRESS, STATUS_DEFERRED),
        "approve": controlled,
        "disapprove": controlled,
        "start": status in (STATUS_PENDING, STATUS_DEFERRED),
        "pause": status == STATUS_IN_PROGRESS,
        "delegate": not finished and (editor or responsible),
        "remove": editor,
        "edit": editor,
        "defer": status in (STATUS_PENDING, STATUS_IN_PROGRESS),
        "renew": status in (STATUS_COMPLETED, STATUS_DEFERRED),
        "create": True,
        "changeDeadline": plan,
        "checklistAddItems": True,
        "addFavorite": not favorite,
        "deleteFavorite": favorite,
        "rate": editor,
        "edit.originator": False,
        "checklist.reorder": True,
        "elapsedtime.add": True,
        "dayplan.timer.toggle": row.get("allowTimeTracking") == "Y",
        "edit.plan": plan,
        "checklist.add": True,
        "favorite.add": not favorite,
        "favorite.delete": favorite,
    }


def _checklist_tree(user_id: int) -> dict[str, Any]:
    return {
        "nodeId": 0,
        "fields": {
            "id": None, "copiedId": None, "entityId": None, "userId": user_id,
            "createdBy": None, "parentId": None, "title": "", "sortIndex": None,
            "displaySortIndex": "", "isComplete": False, "isImportant": False,
            "completedCount": 0, "members": [], "attachments": [],
        },
        "action": [],
        "descendants": [],
    }  # fmt: skip


def _with_members(
    answer: dict[str, Any], row: dict[str, Any], portal: Portal
) -> dict[str, Any]:
    """`fillGroupInfo` and `fillUserInfo`: group, creator, responsible, members."""
    answer["group"] = []
    if "createdBy" in answer and (creator := _person(portal, row.get("createdBy"))):
        answer["creator"] = creator
    if "responsibleId" in answer and (
        responsible := _person(portal, row.get("responsibleId"))
    ):
        answer["responsible"] = responsible
    if "accomplices" in answer:
        answer["accomplicesData"] = _people(portal, row.get("accomplices") or [])
    if "auditors" in answer:
        answer["auditorsData"] = _people(portal, row.get("auditors") or [])
    return answer


def _selected_keys(select: Any) -> list[str] | None:
    """The stored keys a `select` names (UPPER), or None for everything."""
    if not isinstance(select, list) or not select or "*" in select:
        return None
    keys = []
    for item in select:
        name = "status" if str(item) == "REAL_STATUS" else camel(str(item))
        if name in TASK_DEFAULTS or name == "tags":
            keys.append(name)
    return keys


def task_answer(
    row: dict[str, Any], portal: Portal, user_id: int, select: Any = None
) -> dict[str, Any]:
    """`tasks.task.get`'s task: fields, members, `action` and the checklist tree."""
    chosen = _selected_keys(select)
    if chosen is None:
        keys = [key for key in TASK_DEFAULTS if key not in ON_REQUEST]
    else:
        keys = [key for key in TASK_DEFAULTS if key in chosen or key == "favorite"]
        keys += [key for key in chosen if key == "tags"]
    answer: dict[str, Any] = {key: row.get(key, TASK_DEFAULTS.get(key)) for key in keys}
    if "tags" in answer:
        answer["tags"] = answer["tags"] or []
    if chosen is None:
        answer["checklist"] = []
    _with_members(answer, row, portal)
    if chosen is None:
        answer["newCommentsCount"] = 0
    answer["action"] = allowed_actions(row, user_id)
    if chosen is None:
        answer["checkListTree"] = _checklist_tree(user_id)
        answer["checkListCanAdd"] = True
    return answer


def list_answer(
    row: dict[str, Any], portal: Portal, chosen: list[str] | None
) -> dict[str, Any]:
    """A `tasks.task.list` row: `status` is the real one, `subStatus` the shown one."""
    if chosen is None:
        keys = [key for key in TASK_DEFAULTS if key not in ON_REQUEST]
    else:
        # The description travels with its format flag, as the recording shows.
        if "description" in chosen:
            chosen = [*chosen, "descriptionInBbcode"]
        keys = [key for key in TASK_DEFAULTS if key in chosen]
        keys += [key for key in chosen if key == "tags"]
    answer: dict[str, Any] = {key: row.get(key, TASK_DEFAULTS.get(key)) for key in keys}
    if "tags" in answer:
        answer["tags"] = answer["tags"] or []
    if "mark" in answer and answer["mark"] is None:
        answer["mark"] = ""  # the list prints an unset mark as "", `get` as null
    _with_members(answer, row, portal)
    if "status" in answer:
        answer["subStatus"] = str(sub_status(row, portal))
    return answer


# -- tasks.task.getFields ---------------------------------------------------------

_YES_NO = {"Y": "Yes", "N": "No"}
# (name, title, type, extras) in the order the docs' recorded answer lists them
# (apidocs tasks-task-get-fields.md); `values` and `default` as printed there.
_TASK_FIELDS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("ID", "ID", "integer", {"primary": True}),
    ("PARENT_ID", "Base task ID", "integer", {"default": 0}),
    ("TITLE", "Title", "string", {"required": True}),
    ("DESCRIPTION", "Description", "string", {}),
    ("MARK", "Rating", "enum",
     {"values": {"N": "Negative", "P": "Positive"}, "default": None}),
    ("PRIORITY", "Priority", "enum",
     {"values": {"2": "High", "1": "Medium", "0": "Low"}, "default": 1}),
    ("STATUS", "Status", "enum",
     {"values": {"2": "Pending", "3": "In Progress", "4": "Awaiting Control",
                 "5": "Completed", "6": "Deferred"}, "default": 2}),
    ("MULTITASK", "Multitask", "enum", {"values": _YES_NO, "default": "N"}),
    ("NOT_VIEWED", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("REPLICATE", "Recurring task", "enum", {"values": _YES_NO, "default": "N"}),
    ("GROUP_ID", "Project", "integer", {"default": 0}),
    ("STAGE_ID", "Stage", "integer", {"default": 0}),
    ("SPRINT_ID", "Sprint", "integer", {"default": 0}),
    ("BACKLOG_ID", "Backlog", "integer", {"default": 0}),
    ("CREATED_BY", "Creator", "integer", {"required": True}),
    ("CREATED_DATE", None, "datetime", {}),
    ("RESPONSIBLE_ID", "Assignee", "integer", {"required": True}),
    ("ACCOMPLICES", None, "array", {}),
    ("AUDITORS", None, "array", {}),
    ("CHANGED_BY", "Changed by", "integer", {}),
    ("CHANGED_DATE", "Change date", "datetime", {}),
    ("STATUS_CHANGED_BY", "Status changed by", "integer", {}),
    ("STATUS_CHANGED_DATE", "Status change date", "datetime", {}),
    ("CLOSED_BY", "Closed by", "integer", {"default": None}),
    ("CLOSED_DATE", "Closing date", "datetime", {"default": None}),
    ("ACTIVITY_DATE", None, "datetime", {"default": None}),
    ("DATE_START", "Start date", "datetime", {"default": None}),
    ("DEADLINE", "Deadline", "datetime", {"default": None}),
    ("START_DATE_PLAN", "Planned start", "datetime", {"default": None}),
    ("END_DATE_PLAN", "Planned completion", "datetime", {"default": None}),
    ("GUID", "GUID", "string", {"default": None}),
    ("XML_ID", "XML_ID", "string", {"default": None}),
    ("COMMENTS_COUNT", "Number of comments", "integer", {"default": 0}),
    ("SERVICE_COMMENTS_COUNT", None, "integer", {"default": 0}),
    ("NEW_COMMENTS_COUNT", None, "integer", {"default": 0}),
    ("ALLOW_CHANGE_DEADLINE", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("ALLOW_TIME_TRACKING", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("TASK_CONTROL", "Accept work", "enum", {"values": _YES_NO, "default": "N"}),
    ("ADD_IN_REPORT", "Add to report", "enum", {"values": _YES_NO, "default": "N"}),
    ("FORKED_BY_TEMPLATE_ID", "Created from template", "enum",
     {"values": _YES_NO, "default": "N"}),
    ("TIME_ESTIMATE", "Estimated time", "integer", {}),
    ("TIME_SPENT_IN_LOGS", "Time spent from change history", "integer", {}),
    ("MATCH_WORK_TIME", "Skip weekends", "integer", {}),
    ("FORUM_TOPIC_ID", "FORUM_TOPIC_ID", "integer", {}),
    ("FORUM_ID", "FORUM_ID", "integer", {}),
    ("SITE_ID", "SITE_ID", "string", {}),
    ("SUBORDINATE", "Subordinate task", "enum", {"values": _YES_NO, "default": None}),
    ("FAVORITE", None, "enum", {"values": _YES_NO, "default": None}),
    ("EXCHANGE_MODIFIED", "EXCHANGE_MODIFIED", "datetime", {"default": None}),
    ("EXCHANGE_ID", "EXCHANGE_ID", "integer", {"default": None}),
    ("OUTLOOK_VERSION", "OUTLOOK_VERSION", "integer", {"default": None}),
    ("VIEWED_DATE", "Last viewed date", "datetime", {}),
    ("SORTING", "Sorting index", "double", {}),
    ("DURATION_PLAN", "Spent (planned)", "integer", {}),
    ("DURATION_FACT", "Spent (actual)", "integer", {}),
    ("CHECKLIST", None, "array", {}),
    ("DURATION_TYPE", "DURATION_TYPE", "enum",
     {"values": ["secs", "mins", "hours", "days", "weeks", "monts", "years"],
      "default": "days"}),
    ("IS_MUTED", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("IS_PINNED", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("IS_PINNED_IN_GROUP", None, "enum", {"values": _YES_NO, "default": "N"}),
    ("FLOW_ID", "Flow", "integer", {"default": 0}),
    ("UF_CRM_TASK", "CRM entities", "crm", {}),
    ("UF_TASK_WEBDAV_FILES", "Upload files", "disk_file", {}),
    ("UF_MAIL_MESSAGE", None, "mail_message", {}),
)  # fmt: skip


@method("tasks.task.getFields", scope="task")
def task_get_fields(call: Call) -> MethodResult:
    """`{"fields": {UPPER_NAME: {title, type, …}}}`: standard and user fields."""
    fields = {
        name: {"title": title, "type": kind, **extras}
        for name, title, kind, extras in _TASK_FIELDS
    }
    return MethodResult({"fields": fields})


# -- methods ------------------------------------------------------------------------


def _fields_param(call: Call) -> dict[str, Any]:
    fields = call.params.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise engine_missing("fields")
    return fields


def _task_id(call: Call) -> int:
    if "taskId" not in call.params:
        raise RestError(
            "100",
            "CTaskItem All parameters in the constructor must have real class type"
            " (internal error)",
            400,
        )
    task_id = intval(call.params["taskId"])
    if task_id <= 0:
        raise RestError("0", "wrong task id", 400)
    return task_id


@method("tasks.task.add", scope="task")
def task_add(call: Call) -> MethodResult:
    fields = _fields_param(call)
    portal = call.portal
    now = iso_now(portal)
    row = dict(TASK_DEFAULTS)
    row.update(
        {
            "createdBy": str(call.user_id),
            "createdDate": now,
            "changedBy": str(call.user_id),
            "changedDate": now,
            "activityDate": now,
            "statusChangedDate": now,
            "guid": "{" + str(uuid.uuid4()) + "}",
        }
    )
    _apply_fields(row, fields, portal)
    _check(row, portal)

    table = portal.table(TABLE)
    task_id = table.allocate_id()
    row["id"] = str(task_id)
    table.insert(row, task_id)
    portal.emit(
        "ONTASKADD",
        {
            "FIELDS_BEFORE": "undefined",
            "FIELDS_AFTER": {"ID": str(task_id)},
            "IS_ACCESSIBLE_BEFORE": "N",
            "IS_ACCESSIBLE_AFTER": "undefined",
        },
        time.time(),
    )
    return MethodResult({"task": task_answer(row, portal, call.user_id)})


@method("tasks.task.get", scope="task")
def task_get(call: Call) -> MethodResult:
    task_id = _task_id(call)
    row = call.portal.table(TABLE).get(task_id)
    if row is None:
        # The controller swallows the lookup failure: "special case for mobile".
        return MethodResult([])
    answer = task_answer(row, call.portal, call.user_id, call.params.get("select"))
    return MethodResult({"task": answer})


@method("tasks.task.update", scope="task")
def task_update(call: Call) -> MethodResult:
    task_id = _task_id(call)
    fields = _fields_param(call)
    portal = call.portal
    table = portal.table(TABLE)
    stored = table.get(task_id)
    if stored is None:
        raise task_error("Task not found")

    before = dict(stored)
    row = _apply_fields(dict(stored), fields, portal)
    _check(row, portal)
    now = iso_now(portal)
    row["changedBy"] = str(call.user_id)
    row["changedDate"] = now
    row["activityDate"] = now
    if row["status"] != before.get("status"):
        row["statusChangedBy"] = str(call.user_id)
        row["statusChangedDate"] = now
        finished = intval(row["status"]) == STATUS_COMPLETED
        row["closedBy"] = str(call.user_id) if finished else None
        row["closedDate"] = now if finished else None
    table.update(task_id, row)
    portal.emit(
        "ONTASKUPDATE",
        {
            "FIELDS_BEFORE": {"ID": str(task_id)},
            "FIELDS_AFTER": {"ID": str(task_id)},
            "IS_ACCESSIBLE_BEFORE": "undefined",
            "IS_ACCESSIBLE_AFTER": "undefined",
        },
        time.time(),
    )
    return MethodResult({"task": task_answer(row, portal, call.user_id)})


@method("tasks.task.list", scope="task")
def task_list(call: Call) -> MethodResult:
    params = call.params
    order = params.get("order")
    order = order if isinstance(order, dict) else {}
    if any(str(key).upper() not in ORDER_FIELDS for key in order):
        raise bad_sorting_key()
    select = params.get("select")
    if isinstance(select, list) and not all(isinstance(item, str) for item in select):
        raise RestError("0", "Invalid select data (internal error)", 400)

    portal = call.portal
    table = portal.table(TABLE)
    task_filter = params.get("filter")
    task_filter = task_filter if isinstance(task_filter, dict) else {}
    # Without a count, in id order, the page is the first 50 matches: a keyset pull
    # (`>ID`, order ID ASC, start=-1) reads 50 rows, not the whole table.
    by_id = [(str(key).upper(), str(way).upper()) for key, way in order.items()]
    enough = PAGE_SIZE if call.start == -1 and by_id == [("ID", "ASC")] else None
    matches = _filtered_ids(table, portal, task_filter, limit=enough)
    ordered = _ordered_ids(table, portal, matches, order)

    offset = (max(call.start, 0) // PAGE_SIZE) * PAGE_SIZE
    page = ordered[offset : offset + PAGE_SIZE]
    chosen = _selected_keys(select)
    tasks = [list_answer(table.rows[task_id], portal, chosen) for task_id in page]
    if call.start == -1:
        return MethodResult({"tasks": tasks})
    total = len(ordered)
    following = offset + len(page)
    return MethodResult(
        {"tasks": tasks}, total=total, next=following if following < total else None
    )


# -- list filter and order ----------------------------------------------------------

_OPERATORS = ("!=", ">=", "<=", "!", ">", "<", "=", "@", "%")


def _split_key(key: str) -> tuple[str, str]:
    for op in _OPERATORS:
        if key.startswith(op):
            return op, key[len(op) :]
    return "", key


def _filtered_ids(
    table: Table,
    portal: Portal,
    task_filter: dict[str, Any],
    *,
    limit: int | None = None,
) -> list[int]:
    """Matching ids in id order; the first `limit` of them when a limit is given."""
    tests = []
    for raw_key, value in task_filter.items():
        op, field = _split_key(str(raw_key))
        test = _field_test(table, portal, op, field, value)
        if test is not None:
            tests.append(test)
    found: list[int] = []
    for task_id in table.ids_above(_id_floor(task_filter)):
        if all(test(task_id) for test in tests):
            found.append(task_id)
            if limit is not None and len(found) >= limit:
                break
    return found


def _id_floor(task_filter: dict[str, Any]) -> int:
    """The highest `>ID` / `>=ID` bound of the filter; 0 when it has none."""
    floor = 0
    for raw_key, value in task_filter.items():
        op, field = _split_key(str(raw_key))
        if field != "ID" or isinstance(value, list | dict):
            continue
        if op == ">":
            floor = max(floor, intval(value))
        elif op == ">=":
            floor = max(floor, intval(value) - 1)
    return floor


def _field_test(table: Table, portal: Portal, op: str, field: str, value: Any) -> Any:
    """One filter clause as a predicate on a task id; unknown fields are ignored."""
    negate = op in ("!", "!=")
    core = "=" if op in ("", "!", "!=", "@") else op
    values = value if isinstance(value, list) else [value]

    if field == "STATUS":
        wanted = {intval(item) for item in values}
        return lambda task_id: (
            (
                sub_status(table.rows[task_id], portal) in wanted
                or intval(table.rows[task_id].get("status")) in wanted - {OVERDUE}
            )
            != negate
        )
    if field == "UF_CRM_TASK":
        wanted_bindings = {str(item) for item in values}
        return lambda task_id: (
            bool(wanted_bindings & set(table.rows[task_id].get("ufCrmTask") or []))
            != negate
        )
    key = "status" if field == "REAL_STATUS" else camel(field)
    if key not in TASK_DEFAULTS or key in ("auditors", "accomplices"):
        return None
    if key in DATE_KEYS:
        moments = [parse_datetime(str(item), portal.zone) for item in values if item]
        stamps = [moment.timestamp() for moment in moments if moment]
        return _compare_test(
            lambda task_id: _timestamp(table, task_id, key, portal),
            core, stamps, negate, empty=not any(values),
        )  # fmt: skip
    if key in INT_KEYS:
        numbers = [float(intval(item)) for item in values]
        return _compare_test(
            lambda task_id: float(intval(table.rows[task_id].get(key))),
            core, numbers, negate, empty=False,
        )  # fmt: skip
    texts = [str(item).casefold() for item in values]
    if core == "%":
        return lambda task_id: (
            any(
                text in str(table.rows[task_id].get(key) or "").casefold()
                for text in texts
            )
            != negate
        )
    return lambda task_id: (
        (str(table.rows[task_id].get(key) or "").casefold() in texts) != negate
    )


def _compare_test(
    actual: Any, core: str, wanted: list[float], negate: bool, *, empty: bool
) -> Any:
    def test(task_id: int) -> bool:
        value = actual(task_id)
        if empty:  # `DEADLINE: ""` means "no deadline"
            return (value is None) != negate
        if value is None:
            return negate
        if core == ">":
            hit = any(value > item for item in wanted)
        elif core == ">=":
            hit = any(value >= item for item in wanted)
        elif core == "<":
            hit = any(value < item for item in wanted)
        elif core == "<=":
            hit = any(value <= item for item in wanted)
        else:
            hit = value in wanted
        return hit != negate

    return test


def _ordered_ids(
    table: Table, portal: Portal, ids: list[int], order: dict[str, Any]
) -> list[int]:
    """Sort by each key in turn; no order means newest first (`ID` desc)."""
    if not order:
        return sorted(ids, reverse=True)
    ordered = list(ids)
    for raw_key, direction in reversed(list(order.items())):
        field = str(raw_key).upper()
        descending = str(direction).lower() == "desc"
        ordered.sort(
            key=lambda task_id: _order_value(table, portal, task_id, field),
            reverse=descending,
        )
    return ordered


def _order_value(
    table: Table, portal: Portal, task_id: int, field: str
) -> tuple[int, Any]:
    row = table.rows[task_id]
    if field == "STATUS_COMPLETE":
        return (1, 1 if intval(row.get("status")) == STATUS_COMPLETED else 0)
    if field in ("CREATED_BY_LAST_NAME", "RESPONSIBLE_LAST_NAME"):
        user_key = "createdBy" if field.startswith("CREATED") else "responsibleId"
        user = portal.table("user").get(intval(row.get(user_key))) or {}
        return (1, str(user.get("LAST_NAME") or "").casefold())
    key = "status" if field == "REAL_STATUS" else camel(field)
    if key in DATE_KEYS:
        stamp = _timestamp(table, task_id, key, portal)
        return (0, 0.0) if stamp is None else (1, stamp)
    value = row.get(key)
    if value in (None, ""):
        return (0, 0)
    if key in INT_KEYS or key == "sorting":
        return (1, float(intval(value)))
    return (1, str(value).casefold())
