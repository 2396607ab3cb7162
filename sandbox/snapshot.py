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


def _row_id(section: str, row: Any, id_field: str) -> int:
    if not isinstance(row, dict):
        raise ValueError(f"{section}: every row must be an object")
    raw = row.get(id_field)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{section}: row without a numeric {id_field}: {raw!r}") from None


def load_snapshot(portal: Portal, snapshot: dict[str, Any]) -> dict[str, int]:
    """Replace the sections the snapshot names; the others keep a fresh portal's rows."""
    unknown = set(snapshot) - set(SNAPSHOT_SECTIONS) - {"settings"}
    if unknown:
        raise ValueError(f"unknown snapshot sections: {', '.join(sorted(unknown))}")
    reset_portal(portal)
    settings = snapshot.get("settings") or {}
    if "crm_mode" in settings:
        if settings["crm_mode"] not in ("classic", "simple"):
            raise ValueError("settings.crm_mode must be 'classic' or 'simple'")
        portal.crm_mode = settings["crm_mode"]

    counts: dict[str, int] = {}
    for section, table_name in SNAPSHOT_SECTIONS.items():
        rows = snapshot.get(section)
        if rows is None:
            continue
        if not isinstance(rows, list):
            raise ValueError(f"{section}: must be a list of rows")
        table = portal.table(table_name)
        table.clear()
        for row in rows:
            table.insert(dict(row), _row_id(section, row, table.id_field))
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
