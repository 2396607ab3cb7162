"""Load and dump the portal's state as JSON, in the shapes the list methods return."""

from __future__ import annotations

from typing import Any

from sandbox.state import SNAPSHOT_SECTIONS, Portal


def reset_portal(portal: Portal) -> None:
    """Empty every table and lay down a fresh portal's directories and users."""
    from sandbox.defaults import seed_defaults

    for table in portal.tables.values():
        table.clear()
    portal.outbox.clear()
    portal.oauth_tokens.clear()
    portal.refresh_tokens.clear()
    portal.webhooks.clear()
    portal.multifield_next_id = 1
    portal.extras.clear()
    seed_defaults(portal)


# Not part of a snapshot, so a load keeps them: webhooks, OAuth tokens and the
# auth server's state, and the event handlers bound so far.
_KEPT_TABLES = ("eventhandler",)


def _credentials(portal: Portal) -> dict[str, Any]:
    return {
        "webhooks": dict(portal.webhooks),
        "oauth_tokens": dict(portal.oauth_tokens),
        "refresh_tokens": dict(portal.refresh_tokens),
        "oauth": portal.extras.get("oauth"),
        "tables": {
            name: [
                (row_id, dict(row)) for row_id, row in portal.table(name).rows.items()
            ]
            for name in _KEPT_TABLES
        },
    }


def _restore_credentials(portal: Portal, kept: dict[str, Any]) -> None:
    portal.webhooks.update(kept["webhooks"])
    portal.oauth_tokens.update(kept["oauth_tokens"])
    portal.refresh_tokens.update(kept["refresh_tokens"])
    if kept["oauth"] is not None:
        portal.extras["oauth"] = kept["oauth"]
    for name, rows in kept["tables"].items():
        table = portal.table(name)
        for row_id, row in rows:
            table.insert(row, row_id)


def _row_id(section: str, position: int, row: Any, id_field: str) -> int:
    if not isinstance(row, dict):
        raise ValueError(f"{section}[{position}]: a row must be a JSON object")
    raw = row.get(id_field)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError(f"{section}[{position}]: {id_field} must be a number")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{section}[{position}]: {id_field} must be a number, got {raw!r}"
        ) from None


def _checked_settings(snapshot: dict[str, Any]) -> dict[str, Any]:
    settings = snapshot.get("settings")
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError("settings: must be a JSON object")
    unknown = set(settings) - {"crm_mode"}
    if unknown:
        raise ValueError(f"settings: unknown keys: {', '.join(sorted(unknown))}")
    if "crm_mode" in settings and settings["crm_mode"] not in ("classic", "simple"):
        raise ValueError("settings.crm_mode must be 'classic' or 'simple'")
    return settings


def _checked_sections(
    portal: Portal, snapshot: dict[str, Any]
) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Every section's rows with their ids, or a ValueError naming the first problem."""
    sections: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for section, table_name in SNAPSHOT_SECTIONS.items():
        rows = snapshot.get(section)
        if rows is None:
            continue
        if not isinstance(rows, list):
            raise ValueError(f"{section}: must be a list of rows")
        id_field = portal.table(table_name).id_field
        checked: list[tuple[int, dict[str, Any]]] = []
        seen: set[int] = set()
        for position, row in enumerate(rows):
            row_id = _row_id(section, position, row, id_field)
            if row_id in seen:
                raise ValueError(
                    f"{section}[{position}]: duplicate {id_field} {row_id}"
                )
            seen.add(row_id)
            checked.append((row_id, dict(row)))
        sections[section] = checked
    return sections


def load_snapshot(portal: Portal, snapshot: dict[str, Any]) -> dict[str, int]:
    """Replace the sections the snapshot names; the others keep a fresh portal's rows.

    The whole snapshot is checked before anything changes, so a bad one leaves the
    portal as it was.
    """
    if not isinstance(snapshot, dict):
        raise ValueError("a snapshot must be a JSON object of sections")
    unknown = set(snapshot) - set(SNAPSHOT_SECTIONS) - {"settings"}
    if unknown:
        known = ", ".join(["settings", *SNAPSHOT_SECTIONS])
        raise ValueError(
            f"unknown snapshot sections: {', '.join(sorted(unknown))} (known: {known})"
        )
    settings = _checked_settings(snapshot)
    sections = _checked_sections(portal, snapshot)

    kept = _credentials(portal)
    reset_portal(portal)
    _restore_credentials(portal, kept)
    if "crm_mode" in settings:
        portal.crm_mode = settings["crm_mode"]
    counts: dict[str, int] = {}
    for section, rows in sections.items():
        table = portal.table(SNAPSHOT_SECTIONS[section])
        table.clear()
        for row_id, row in rows:
            table.insert(row, row_id)
        counts[section] = len(rows)
    _advance_multifield_ids(portal)
    return counts


def _advance_multifield_ids(portal: Portal) -> None:
    highest = 0
    for name in ("contact", "lead", "company"):
        for row in portal.table(name):
            for key in ("PHONE", "EMAIL", "WEB", "IM", "LINK"):
                for item in row.get(key) or []:
                    if isinstance(item, dict) and str(item.get("ID", "")).isdigit():
                        highest = max(highest, int(item["ID"]))
    portal.multifield_next_id = max(portal.multifield_next_id, highest + 1)


def dump_snapshot(portal: Portal) -> dict[str, Any]:
    dumped: dict[str, Any] = {"settings": {"crm_mode": portal.crm_mode}}
    for section, table_name in SNAPSHOT_SECTIONS.items():
        dumped[section] = [dict(row) for row in portal.table(table_name)]
    return dumped
