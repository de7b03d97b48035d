"""Making text that comes from a submission safe to store, print and write as JSON.

A submission controls many strings that end up in a report: its exception messages, the names it misspells,
its cells' grade ids, its file names. Before any of them is stored in a result, `safe_text` caps its length and
neutralises what could forge or break the report:

- control characters (ANSI escape sequences that move the cursor or redraw the screen, carriage returns,
  backspaces, bidirectional overrides that reorder what the reader sees) are shown as visible escapes, e.g.
  `\\x1b`, so a student cannot draw a fake "16/16" table on an instructor's terminal;
- lone surrogates (which cannot be encoded as UTF-8 and crash a print or a JSON writer) become U+FFFD;
- the text is capped (a 60 MB name would take hours to wrap), with the number of characters left out.
"""

from __future__ import annotations

import unicodedata

# Line breaks and tabs are kept in multi-line texts; every other control or format character is escaped.
_KEPT = {"\n", "\t"}


def safe_text(text, limit: int = 2000, *, single_line: bool = False) -> str:
    """`text` (any object: non-strings are described by their type) made safe; at most about `limit` characters."""
    if not isinstance(text, str):
        text = f"<{type(text).__name__}>"
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if _has_surrogates(text) else text
    out = []
    for char in text:
        if char in _KEPT and not single_line:
            out.append(char)
        elif char in _KEPT:
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn") or char in ("\u2028", "\u2029"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
