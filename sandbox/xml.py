"""The `.xml` transport: `<response><result>…</result><time>…</time></response>`.

Rendered the way `CRestServer::outputXml` does it: integer keys (list positions and
numeric array keys) become `<item>`, scalars are PHP-stringified (`true` is "1",
`false` and `null` are empty) and escaped.
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

_INT_KEY = re.compile(r"^(0|-?[1-9][0-9]*)$")


def _text(value: Any) -> str:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        # PHP's string cast prints 14 significant digits and drops a trailing ".0".
        return f"{value:.14G}"
    return escape(str(value))


def _tag(key: Any) -> str:
    text = str(key)
    return "item" if _INT_KEY.match(text) else text


def _nodes(value: dict[str, Any] | list[Any]) -> str:
    pairs = value.items() if isinstance(value, dict) else enumerate(value)
    parts = []
    for key, inner in pairs:
        tag = _tag(key)
        body = _nodes(inner) if isinstance(inner, dict | list) else _text(inner)
        parts.append(f"<{tag}>{body}</{tag}>")
    return "".join(parts)


def render_xml(body: dict[str, Any]) -> str:
    return f'<?xml version="1.0" encoding="utf-8"?>{_nodes({"response": body})}'
