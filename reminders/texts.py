"""A visit's time in Russian words: for the client relative to today, for the CRM
absolute."""

from __future__ import annotations

from datetime import datetime, tzinfo

from app.russian import RELATIVE_DAYS, day_month
from webhooks.inbound import Channel

CHANNEL_NAMES: dict[Channel, str] = {"telegram": "Telegram", "whatsapp": "WhatsApp"}


def absolute_when(visit: datetime, zone: tzinfo) -> str:
    """`4 декабря в 10:00`, in the business time zone."""
    local = visit.astimezone(zone)
    return f"{day_month(local)} в {local:%H:%M}"


def client_when(visit: datetime, now: datetime, zone: tzinfo) -> str:
    """`сегодня в 10:00`, `завтра в 10:00`, otherwise `4 декабря в 10:00`."""
    local = visit.astimezone(zone)
    days = (local.date() - now.astimezone(zone).date()).days
    word = RELATIVE_DAYS.get(days)
    return f"{word} в {local:%H:%M}" if word else absolute_when(visit, zone)


def manager_fields(
    visit: datetime, zone: tzinfo, channel: Channel | None = None
) -> dict[str, str]:
    """The placeholders of a manager text: when (absolute), channel (its name)."""
    return {
        "when": absolute_when(visit, zone),
        "channel": CHANNEL_NAMES[channel] if channel is not None else "",
    }


def client_fields(visit: datetime, now: datetime, zone: tzinfo) -> dict[str, str]:
    """The placeholders of a client text: when, date, time."""
    local = visit.astimezone(zone)
    return {
        "when": client_when(visit, now, zone),
        "date": f"{local:%d.%m}",
        "time": f"{local:%H:%M}",
    }
