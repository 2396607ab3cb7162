"""`leadloop setup`: make the portal and the bots ready, and say what was done.

First a plan: everything is read (pipelines, stages, sources, user fields, event
bindings, the Telegram webhook) and each thing leadloop needs is found present,
missing, or out of reach. Then the missing ones are created, one by one; a failure
is reported and the rest go on. Nothing present is changed, so a second run does
nothing and says so. Pipelines and stages are created only when asked
(`--pipeline`): they change what managers see in the portal.
"""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import structlog

from app.config import BusinessRules, StageRoles
from app.provision.common import (
    Explained,
    PublicUrls,
    explain_bitrix24,
    explain_telegram,
)
from app.settings import Settings
from connectors.bitrix24.admin import (
    Pipeline,
    PortalAdmin,
    Stage,
    StageSemantics,
    UserFieldOwner,
    stage_directory,
)
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.reads import CrmMode, crm_mode
from connectors.messengers.base import MessengerError
from connectors.messengers.telegram import ALLOWED_UPDATES
from connectors.messengers.telegram_webhook import TelegramWebhook
from webhooks.bitrix24 import ROUTES

log = structlog.stdlib.get_logger(__name__)

ORIGINATOR = "leadloop"
# What managers read in the portal: Russian, as every text a manager sees.
PIPELINE_NAME = "Записи (leadloop)"
STAGE_NAMES = {
    "new": "Новая заявка",
    "booked": "Записан",
    "confirmed": "Подтвердил визит",
    "visited": "Пришёл",
    "no_show": "Не пришёл",
    "cancelled": "Отменил запись",
    "lost": "Отказ",
}
VISIT_FIELD_LABEL = "Время визита"
QUALIFICATION_LABELS = {
    "service": "Услуга",
    "preferred_time": "Удобное время",
    "readiness": "Готовность к записи",
    "urgency": "Срочность",
    "budget": "Бюджет",
    "summary": "Итог квалификации",
    "channel": "Канал обращения",
}
SOURCE_NAMES = {"telegram": "Telegram", "whatsapp": "WhatsApp"}
# Stage types a visit time can be written into.
VISIT_TYPES = frozenset({"datetime", "date"})
EVENTS = tuple(ROUTES)
WIDTH = 88  # of the printed report


class Status(Enum):
    DONE = "done"
    ALREADY = "already there"
    LEFT_ALONE = "left alone"
    WOULD = "would do"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    """One line of the report: what, and what became of it."""

    area: str
    subject: str
    status: Status
    detail: str


Act = Callable[[], Awaitable[tuple[Status, str]]]


@dataclass(frozen=True)
class Planned:
    """What the plan found for one thing; `act` makes (or re-asserts) it."""

    area: str
    subject: str
    status: Status  # WOULD: missing and creatable; ALREADY; LEFT_ALONE
    detail: str
    act: Act | None = None


@dataclass
class SetupReport:
    steps: list[Step] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(step.status is Status.FAILED for step in self.steps)

    def count(self, status: Status) -> int:
        return sum(1 for step in self.steps if step.status is status)


@dataclass(frozen=True)
class SetupTarget:
    """What setup works on: the portal, the bot and the public address."""

    settings: Settings
    rules: BusinessRules
    admin: PortalAdmin
    telegram: TelegramWebhook | None
    public: PublicUrls | None
    pipelines: bool = False


async def run_setup(target: SetupTarget, *, dry_run: bool = False) -> SetupReport:
    """Plan, then (unless `dry_run`) create what is missing."""
    plan = await make_plan(target)
    return await carry_out(plan, dry_run=dry_run)


async def make_plan(target: SetupTarget) -> list[Planned]:
    """Read the portal and the bot; nothing is written."""
    plan = await _pipelines_and_stages(target)
    plan += await _sources(target)
    plan += await _fields(target)
    plan += await _events(target)
    plan += await _telegram(target)
    plan.append(_whatsapp(target))
    return plan


async def carry_out(plan: Iterable[Planned], *, dry_run: bool) -> SetupReport:
    report = SetupReport()
    for item in plan:
        if dry_run or item.act is None:
            report.steps.append(Step(item.area, item.subject, item.status, item.detail))
            continue
        try:
            status, detail = await item.act()
        except Bitrix24Error as error:
            status, detail = Status.FAILED, _failure(explain_bitrix24(error))
        except MessengerError as error:
            status, detail = Status.FAILED, _failure(explain_telegram(error))
        log.info("setup.step", area=item.area, subject=item.subject, status=status.name)
        report.steps.append(Step(item.area, item.subject, status, detail))
    return report


def _failure(explained: Explained) -> str:
    return f"{explained.summary}; fix: {explained.fix}"


# -- pipelines and stages --------------------------------------------------------------


@dataclass(frozen=True)
class WantedStage:
    pipeline: int
    status_id: str
    role: str

    @property
    def semantics(self) -> StageSemantics:
        return "failure" if self.role == "lost" else "process"


def pipeline_of(stage_id: str) -> int:
    """`C3:BOOKED` → 3; a stage without a prefix is pipeline 0's."""
    head, colon, _ = stage_id.partition(":")
    if colon and head.startswith("C") and head[1:].isdigit():
        return int(head[1:])
    return 0


def wanted_stages(roles: StageRoles) -> list[WantedStage]:
    return [
        WantedStage(pipeline_of(stage_id), stage_id, role)
        for role, stage_ids in roles
        for stage_id in stage_ids
    ]


async def _pipelines_and_stages(target: SetupTarget) -> list[Planned]:
    stages = wanted_stages(target.rules.crm.stages)
    wanted = sorted({*target.rules.crm.pipelines, *(s.pipeline for s in stages)})
    existing = {pipeline.id: pipeline for pipeline in await target.admin.pipelines()}
    plan: list[Planned] = []
    for pipeline_id in wanted:
        own = [stage for stage in stages if stage.pipeline == pipeline_id]
        if pipeline_id in existing or pipeline_id == 0:
            directory = await target.admin.directory(stage_directory(pipeline_id))
            plan += _stage_items(target, pipeline_id, own, directory)
        else:
            plan.append(_missing_pipeline(target, pipeline_id, own, existing))
    return plan


def _stage_items(
    target: SetupTarget,
    pipeline_id: int,
    stages: list[WantedStage],
    directory: list[Stage],
) -> list[Planned]:
    present = {stage.status_id for stage in directory}
    plan: list[Planned] = []
    next_sort = _sorts(directory)
    for stage in stages:
        where = f"pipeline {pipeline_id}, role {stage.role}"
        if stage.status_id in present:
            plan.append(Planned("stage", stage.status_id, Status.ALREADY, where))
        elif not target.pipelines:
            plan.append(
                Planned(
                    "stage",
                    stage.status_id,
                    Status.LEFT_ALONE,
                    f"{where}: not in the portal; `leadloop setup --pipeline` creates "
                    f"it, or correct [crm.stages].{stage.role}",
                )
            )
        else:
            sort = next_sort(stage.semantics)
            plan.append(
                Planned(
                    "stage",
                    stage.status_id,
                    Status.WOULD,
                    f'{where}: create "{STAGE_NAMES[stage.role]}"',
                    _add_stage(target.admin, stage, sort),
                )
            )
    return plan


def _sorts(directory: list[Stage]) -> Callable[[StageSemantics], int]:
    """New working stages go right after the last working one (before the final
    stages), failures after everything."""
    working = (stage.sort for stage in directory if stage.semantics == "process")
    last = {
        "process": max(working, default=0),
        "failure": max((stage.sort for stage in directory), default=0),
    }

    def next_sort(semantics: StageSemantics) -> int:
        if semantics == "failure":
            last["failure"] += 10
            return last["failure"]
        last["process"] += 1
        return last["process"]

    return next_sort


def _add_stage(admin: PortalAdmin, stage: WantedStage, sort: int) -> Act:
    async def act() -> tuple[Status, str]:
        await admin.add_status(
            stage_directory(stage.pipeline),
            stage.status_id,
            STAGE_NAMES[stage.role],
            sort=sort,
            semantics=stage.semantics,
        )
        name = STAGE_NAMES[stage.role]
        return Status.DONE, f'pipeline {stage.pipeline}: created "{name}"'

    return act


def _missing_pipeline(
    target: SetupTarget,
    pipeline_id: int,
    stages: list[WantedStage],
    existing: Mapping[int, Pipeline],
) -> Planned:
    subject = f"pipeline {pipeline_id}"
    origin = f"pipeline-{pipeline_id}"
    earlier = next(
        (
            pipeline
            for pipeline in existing.values()
            if (pipeline.originator_id, pipeline.origin_id) == (ORIGINATOR, origin)
        ),
        None,
    )
    if earlier is not None:
        return Planned(
            "pipeline",
            subject,
            Status.LEFT_ALONE,
            f'an earlier setup created it as pipeline {earlier.id} "{earlier.name}" '
            "(the portal picks the id): " + _renumber(pipeline_id, earlier.id),
        )
    if not target.pipelines:
        return Planned(
            "pipeline",
            subject,
            Status.LEFT_ALONE,
            "not in the portal; `leadloop setup --pipeline` creates it, or correct "
            "[crm] pipelines and the stage prefixes",
        )
    return Planned(
        "pipeline",
        subject,
        Status.WOULD,
        f'create "{PIPELINE_NAME}" with the stages of [crm.stages]',
        _add_pipeline(target.admin, pipeline_id, stages),
    )


def _renumber(wanted: int, got: int) -> str:
    return (
        f"set [crm] pipelines to {got} and the stage prefixes C{wanted}: to C{got}:, "
        "then run `leadloop setup --pipeline` again for its stages"
    )


def _add_pipeline(
    admin: PortalAdmin, pipeline_id: int, stages: list[WantedStage]
) -> Act:
    async def act() -> tuple[Status, str]:
        created = await admin.add_pipeline(
            PIPELINE_NAME, originator_id=ORIGINATOR, origin_id=f"pipeline-{pipeline_id}"
        )
        if created.id != pipeline_id:
            return Status.DONE, (
                f"created as pipeline {created.id}, not {pipeline_id}: "
                + _renumber(pipeline_id, created.id)
            )
        directory = await admin.directory(stage_directory(pipeline_id))
        present = {stage.status_id for stage in directory}
        next_sort = _sorts(directory)
        added = []
        for stage in stages:
            if stage.status_id not in present:
                sort = next_sort(stage.semantics)
                await _add_stage(admin, stage, sort)()
                added.append(stage.status_id)
        listed = ", ".join(added) if added else "only the portal's own"
        return Status.DONE, f'created "{PIPELINE_NAME}"; stages added: {listed}'

    return act


# -- sources ---------------------------------------------------------------------------


async def _sources(target: SetupTarget) -> list[Planned]:
    sources = target.rules.intake.sources
    present = {entry.status_id for entry in await target.admin.directory("SOURCE")}
    plan = []
    for channel, source_id in sources.items():
        name = SOURCE_NAMES[channel]
        if source_id in present:
            plan.append(Planned("source", source_id, Status.ALREADY, name))
            continue
        plan.append(
            Planned(
                "source",
                source_id,
                Status.WOULD,
                f'create the deal source "{name}"',
                _add_source(target.admin, source_id, name),
            )
        )
    return plan


def _add_source(admin: PortalAdmin, source_id: str, name: str) -> Act:
    async def act() -> tuple[Status, str]:
        await admin.add_status("SOURCE", source_id, name, sort=500)
        return Status.DONE, f'created the source "{name}"'

    return act


# -- user fields -----------------------------------------------------------------------


@dataclass(frozen=True)
class WantedField:
    owner: UserFieldOwner
    name: str
    user_type: str
    label: str


async def _fields(target: SetupTarget) -> list[Planned]:
    crm = target.rules.crm
    plan: list[Planned] = []
    wanted: list[WantedField] = []
    if crm.visit_field is None:
        plan.append(
            Planned(
                "field",
                "visit time",
                Status.LEFT_ALONE,
                "[crm] visit_field is not set, so reminders have no visit time: set "
                'it to "UF_CRM_LL_VISIT_AT" and run setup again',
            )
        )
    else:
        wanted.append(
            WantedField("deal", crm.visit_field, "datetime", VISIT_FIELD_LABEL)
        )
    if target.rules.intake.fields:
        owner = await record_owner(target.rules, target.admin)
        wanted += [
            WantedField(owner, code, "string", QUALIFICATION_LABELS[item])
            for item, code in target.rules.intake.fields.items()
        ]
    existing: dict[UserFieldOwner, dict[str, str]] = {}
    for wanted_field in wanted:
        if wanted_field.owner not in existing:
            found = await target.admin.user_fields(wanted_field.owner)
            existing[wanted_field.owner] = {
                name: user_field.user_type for name, user_field in found.items()
            }
        plan.append(
            _field_item(target.admin, wanted_field, existing[wanted_field.owner])
        )
    return plan


async def record_owner(rules: BusinessRules, admin: PortalAdmin) -> UserFieldOwner:
    """Where the intake writes the qualification: deals (simple CRM) or leads;
    `[crm] mode = "auto"` asks the portal."""
    mode = rules.crm.mode
    if mode == "auto":
        read = await crm_mode(admin.client)
        return "deal" if read is CrmMode.SIMPLE else "lead"
    return "deal" if mode == "simple" else "lead"


def _field_item(
    admin: PortalAdmin, wanted: WantedField, existing: Mapping[str, str]
) -> Planned:
    where = f"{wanted.owner}, {wanted.user_type}"
    if not wanted.name.startswith("UF_CRM_"):
        return Planned(
            "field",
            wanted.name,
            Status.LEFT_ALONE,
            f"{wanted.owner}: a built-in field, nothing to create",
        )
    found = existing.get(wanted.name)
    if found is None:
        return Planned(
            "field",
            wanted.name,
            Status.WOULD,
            f'{where}: create "{wanted.label}"',
            _add_field(admin, wanted),
        )
    if _type_fits(wanted.user_type, found):
        return Planned("field", wanted.name, Status.ALREADY, f"{wanted.owner}, {found}")
    return Planned(
        "field",
        wanted.name,
        Status.LEFT_ALONE,
        f"{wanted.owner}: exists as {found}, leadloop writes {wanted.user_type}; name "
        "another field in the rules file (a field's type cannot change)",
    )


def _type_fits(wanted: str, found: str) -> bool:
    if wanted == "datetime":
        return found in VISIT_TYPES
    return found == wanted


def _add_field(admin: PortalAdmin, wanted: WantedField) -> Act:
    async def act() -> tuple[Status, str]:
        await admin.add_user_field(
            wanted.owner, wanted.name, wanted.user_type, wanted.label
        )
        return Status.DONE, (
            f'{wanted.owner}, {wanted.user_type}: created "{wanted.label}"'
        )

    return act


# -- Bitrix24 events -------------------------------------------------------------------


async def _events(target: SetupTarget) -> list[Planned]:
    listed = ", ".join(EVENTS)
    if target.public is None:
        return [
            Planned(
                "events",
                listed,
                Status.LEFT_ALONE,
                "LEADLOOP_PUBLIC_URL is not set, so there is no address for the "
                "portal to send events to",
            )
        ]
    handler = target.public.bitrix24
    if not target.admin.is_app:
        return [
            Planned(
                "events",
                listed,
                Status.LEFT_ALONE,
                "an inbound webhook cannot subscribe to events (the portal answers "
                "WRONG_AUTH_TYPE). In the portal open Developer resources → Other → "
                f"Outgoing webhook, handler URL {handler}, tick these events, save, "
                "and put its application token in LEADLOOP_BITRIX24_APPLICATION_TOKEN",
            )
        ]
    bound = {
        binding.event
        for binding in await target.admin.bindings()
        if binding.handler == handler
    }
    return [
        (
            Planned("event", event, Status.ALREADY, f"sent to {handler}")
            if event in bound
            else Planned(
                "event",
                event,
                Status.WOULD,
                f"bind to {handler}",
                _bind(target.admin, event, handler),
            )
        )
        for event in EVENTS
    ]


def _bind(admin: PortalAdmin, event: str, handler: str) -> Act:
    async def act() -> tuple[Status, str]:
        await admin.bind(event, handler)
        return Status.DONE, f"bound to {handler}"

    return act


# -- messengers ------------------------------------------------------------------------


async def _telegram(target: SetupTarget) -> list[Planned]:
    settings = target.settings
    subject = "Telegram webhook"
    if target.telegram is None:
        reason = "LEADLOOP_TELEGRAM_BOT_TOKEN is not set: no bot to connect"
        return [Planned("telegram", subject, Status.LEFT_ALONE, reason)]
    secret = settings.telegram_webhook_secret
    if secret is None:
        reason = (
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET is not set: choose 1–256 characters "
            "of A-Z a-z 0-9 _ - (e.g. `openssl rand -hex 32`) and run setup again"
        )
        return [Planned("telegram", subject, Status.LEFT_ALONE, reason)]
    if target.public is None:
        reason = "LEADLOOP_PUBLIC_URL is not set: no address for Telegram to call"
        return [Planned("telegram", subject, Status.LEFT_ALONE, reason)]

    url = target.public.telegram
    try:
        info = await target.telegram.info()
    except MessengerError as error:
        explained = explain_telegram(error, settings.telegram_api_base)
        return [Planned("telegram", subject, Status.FAILED, _failure(explained))]
    kinds = ", ".join(ALLOWED_UPDATES)
    same = info.url == url and set(info.allowed_updates or ()) == set(ALLOWED_UPDATES)
    act = _set_webhook(target.telegram, url, secret.get_secret_value())
    if same:
        # Telegram does not show the secret: setting the same webhook again either
        # confirms it ("Webhook is already set") or puts our secret back.
        return [Planned("telegram", subject, Status.ALREADY, f"{url} ({kinds})", act)]
    before = f"was {info.url}" if info.url else "none was set"
    detail = f"set to {url} with the secret and {kinds} ({before})"
    return [Planned("telegram", subject, Status.WOULD, detail, act)]


def _set_webhook(telegram: TelegramWebhook, url: str, secret: str) -> Act:
    async def act() -> tuple[Status, str]:
        answer = await telegram.set(url, secret, allowed_updates=ALLOWED_UPDATES)
        kinds = ", ".join(ALLOWED_UPDATES)
        if answer.changed:
            return Status.DONE, f"set to {url} with the secret and {kinds}"
        return Status.ALREADY, f"{url} ({kinds}), secret unchanged"

    return act


def _whatsapp(target: SetupTarget) -> Planned:
    settings = target.settings
    subject = "WhatsApp webhook"
    if settings.whatsapp_access_token is None:
        return Planned(
            "whatsapp", subject, Status.LEFT_ALONE, "WhatsApp is not configured"
        )
    callback = (
        target.public.whatsapp
        if target.public is not None
        else "<LEADLOOP_PUBLIC_URL>/webhooks/whatsapp"
    )
    return Planned(
        "whatsapp",
        subject,
        Status.LEFT_ALONE,
        "Meta's webhooks are set in the app dashboard, not by API: WhatsApp → "
        f"Configuration → Callback URL {callback}, Verify token = the value of "
        "LEADLOOP_WHATSAPP_VERIFY_TOKEN, then subscribe the field `messages`; the "
        "app secret (App settings → Basic) goes in LEADLOOP_WHATSAPP_APP_SECRET",
    )


# -- the report ------------------------------------------------------------------------


def render(report: SetupReport, *, dry_run: bool) -> str:
    """The report as text: one line per thing, then the counts."""
    lines = []
    for step in report.steps:
        lines.append(f"{step.status.value:<14} {step.area:<9} {step.subject}")
        lines += textwrap.wrap(
            step.detail, WIDTH, initial_indent=" " * 15, subsequent_indent=" " * 15
        )
    counted = [
        f"{report.count(status)} {status.value}"
        for status in Status
        if report.count(status)
    ]
    heading = "Dry run, nothing changed: " if dry_run else ""
    lines.append(heading + ", ".join(counted) + ".")
    return "\n".join(lines)
