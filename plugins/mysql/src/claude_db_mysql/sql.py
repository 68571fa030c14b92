"""Quoting for the few statements built from names (database and user names)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier: `` `app``db` ``."""
    return "`" + name.replace("`", "``") + "`"


def quote_literal(text: str) -> str:
    """A single-quoted string literal for the default SQL mode (backslash escapes on)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
