"""The `.xml` transport: `<response><result>…</result><time>…</time></response>`."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape


def _node(tag: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_node(_tag(k), v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(_node("item", v) for v in value)
    elif value is None:
        inner = ""
    elif value is True:
        inner = "true"
    elif value is False:
        inner = "false"
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>"


def _tag(key: Any) -> str:
    text = str(key)
    return text if text[:1].isalpha() else f"item{text}"


def render_xml(body: dict[str, Any]) -> str:
    inner = "".join(_node(_tag(k), v) for k, v in body.items())
    return f'<?xml version="1.0" encoding="utf-8"?><response>{inner}</response>'
