"""Text for rich consoles: square brackets in messages are text, not markup.

Why: rich reads `[text]` as a style tag and drops it, so an error telling the user to `pip install 'leankd[text]'`
printed `pip install 'leankd'`. Messages carry user text (paths, model names, `[MASK]`, file contents) that must
come through whole. `safe` escapes every bracket except the few style tags leankd's own log lines start with,
so a log line keeps its colour and everything else is printed as written.
"""
from __future__ import annotations

import re

from rich.markup import escape

# the style words leankd's own messages use inside tags ([bold], [yellow], [bold red], [/], ...)
_STYLE_WORDS = {"bold", "dim", "italic", "red", "green", "yellow", "blue", "cyan", "magenta"}
_TAG = re.compile(r"\[(/?)([a-z ]*)\]")

__all__ = ["escape", "safe"]


def _is_style(match: re.Match) -> bool:
    closing, body = match.group(1), match.group(2)
    if closing:
        return body == "" or set(body.split()) <= _STYLE_WORDS
    return bool(body.split()) and set(body.split()) <= _STYLE_WORDS


def safe(message: str) -> str:
    """`message` with every `[...]` escaped except leankd's own style tags (`[bold]`, `[yellow]`, `[/]`, ...)."""
    out, last = [], 0
    for m in _TAG.finditer(message):
        out.append(escape(message[last:m.start()]))
        out.append(m.group(0) if _is_style(m) else escape(m.group(0)))
        last = m.end()
    out.append(escape(message[last:]))
    return "".join(out)
