"""A fresh portal: its administrator, department, pipelines, stages and directories."""

from __future__ import annotations

from sandbox.state import Portal


def seed_defaults(portal: Portal) -> None:
    portal.table("user").insert(
        {"ID": "1", "ACTIVE": True, "NAME": "Admin", "LAST_NAME": "Sandbox",
         "EMAIL": "admin@example.com", "UF_DEPARTMENT": [1], "IS_ONLINE": "N"},
        1,
    )  # fmt: skip
