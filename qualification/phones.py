"""Phone numbers as clients type them, normalised to E.164 with region RU.

libphonenumber knows the Russian trunk prefix 8, so `8 (999) …` and `8-812-…` both come
out right: the trunk 8 is dropped and the 8 of an area code like 812 or 800 is kept
(known-faults PH-1). Parsing alone does not validate; `is_valid_number` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import Leniency, NumberParseException, PhoneNumberFormat

REGION = "RU"
# Longer than any real number with an extension and separators; longer text is not a
# phone, and libphonenumber refuses input over 250 characters anyway.
_MAX_RAW_LENGTH = 64


@dataclass(frozen=True)
class Phone:
    """A valid number: E.164, its extension apart, and the region it belongs to."""

    e164: str
    extension: str | None
    region: str | None


@dataclass(frozen=True)
class FoundPhone:
    """A valid number found inside free text, with the client's exact characters."""

    phone: Phone
    raw: str
    start: int
    end: int


def normalize_phone(raw: str) -> Phone | None:
    """The number as E.164, or None when it is not a valid number."""
    text = raw.strip()
    if not text or len(text) > _MAX_RAW_LENGTH:
        return None
    try:
        number = phonenumbers.parse(text, REGION)
    except NumberParseException:
        return None
    return _valid(number)


def find_phones(text: str) -> list[FoundPhone]:
    """Valid numbers inside free text, in order; a 10-digit tax id is not one."""
    found = []
    matcher = phonenumbers.PhoneNumberMatcher(text, REGION, leniency=Leniency.VALID)
    for match in matcher:
        phone = _valid(match.number)
        if phone is not None:
            found.append(FoundPhone(phone, match.raw_string, match.start, match.end))
    return found


def _valid(number: phonenumbers.PhoneNumber) -> Phone | None:
    if not phonenumbers.is_valid_number(number):
        return None
    return Phone(
        e164=phonenumbers.format_number(number, PhoneNumberFormat.E164),
        extension=number.extension or None,
        region=phonenumbers.region_code_for_number(number),
    )
