"""Text for the page: escaping, number formats, run letters, clipping and the character diff."""

from __future__ import annotations

import difflib
import html
import json
import math

MAX_TEXT = 4000  # characters of ground truth / prediction shown per sample


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_num(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_pct(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(float(value)):
        return f"{float(value) * 100:.2f}%"
    return "–"


def run_letter(index: int) -> str:
    """A comparison's name for its run at `index`: A (the baseline), B, C, ... Z, then the index."""
    return chr(65 + index) if index < 26 else str(index)


def render_value(value: object) -> str:
    if isinstance(value, dict | list):
        return f"<pre>{esc(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))}</pre>"
    if isinstance(value, float):
        return esc(fmt_num(value))
    return esc(value)


def short_digest(value: object) -> str:
    text = str(value or "–")
    if len(text) <= 23:
        return esc(text)
    return f'<code title="{esc(text)}">{esc(text[:19])}…</code>'


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + " …[truncated]"


def char_diff_html(reference: str, prediction: str) -> str:
    """Character diff: deletions (in the reference, missed) red, insertions (extra) green."""
    sm = difflib.SequenceMatcher(a=reference, b=prediction, autojunk=False)
    out: list[str] = []
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            out.append(esc(reference[a0:a1]))
        if op in ("delete", "replace"):
            out.append(f'<del title="missing">{esc(reference[a0:a1])}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins title="extra">{esc(prediction[b0:b1])}</ins>')
    return "".join(out)
