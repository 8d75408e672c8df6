"""Plan renderers: `Plan` in, string out. No I/O, no crypto."""

from __future__ import annotations

import json
from typing import Any

from .plan import Action, Change, Plan

__all__ = ["render_text", "render_markdown", "render_json", "summary_line"]

_COLORS = {Action.CREATE: "32", Action.REISSUE: "33", Action.RENEW: "33", Action.REKEY: "31",
           Action.MOVE_KEY: "36", Action.REVOKE: "31", Action.UPDATE_CRL: "33"}
_WILL = {Action.CREATE: "will be created", Action.REISSUE: "will be reissued", Action.RENEW: "will be renewed",
         Action.REKEY: "will get a new key and certificate", Action.MOVE_KEY: "will have its key moved",
         Action.REVOKE: "will be revoked", Action.UPDATE_CRL: "will have its CRL re-signed"}
_VERB = {Action.CREATE: "to create", Action.REISSUE: "to reissue", Action.RENEW: "to renew",
         Action.REKEY: "to rekey", Action.MOVE_KEY: "key{s} to move", Action.REVOKE: "to revoke",
         Action.UPDATE_CRL: "CRL{s} to update"}


_JSON = json.JSONEncoder(ensure_ascii=False).encode


def _fmt(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return _JSON(value)


def summary_line(plan: Plan) -> str:
    if plan.empty:
        return "No changes. The PKI matches pki.toml."
    parts = []
    for action, n in plan.summary().items():
        verb = _VERB[Action(action)].replace("{s}", "s" if n != 1 else "")
        parts.append(f"{n} {verb}")
    return "Plan: " + ", ".join(parts) + "."


def _style(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _change_text(change: Change, color: bool) -> list[str]:
    action = change.action
    glyph = _style(f"{action.glyph:>3}", _COLORS[action], color)
    head = f"{glyph} {_style(change.qualified, '1', color)} {_WILL[action]}"
    if change.retire:
        head += " and removed from state"
    lines = [head]
    lines.extend(f"      because {reason}" for reason in change.reasons)
    width = max((len(f) for f, _ in change.diff), default=0) + 1
    create = action is Action.CREATE
    arrow = _style("→", "2", color)
    for field, fc in change.diff:
        label = f"{field}:".ljust(width)
        if fc.before is None and create:
            lines.append(f"      {label} {_fmt(fc.after)}")
        else:
            lines.append(f"      {label} {_fmt(fc.before)} {arrow} {_fmt(fc.after)}")
    return lines


def render_text(plan: Plan, *, color: bool = False) -> str:
    out: list[str] = []
    if plan.empty:
        out.append(summary_line(plan))
    else:
        out.append("pkiascode will make these changes:")
        out.append("")
        for change in plan.changes:
            out.extend(_change_text(change, color))
            out.append("")
    if plan.warnings:
        if plan.empty:
            out.append("")
        out.append(_style("Warnings:", "33", color))
        out.extend(f"  ! {w}" for w in plan.warnings)
        out.append("")
    if not plan.empty:
        out.append(_style(summary_line(plan), "1", color))
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(plan: Plan) -> str:
    out = ["### pkiascode plan", ""]
    if plan.empty:
        out.append(summary_line(plan))
    else:
        out += ["| | action | object | why |", "|---|---|---|---|"]
        for c in plan.changes:
            out.append(f"| `{c.action.glyph}` | {c.action.value} | `{c.qualified}` | "
                       f"{_md_escape('; '.join(c.reasons))} |")
        diffs = [c for c in plan.changes if c.diff and c.action is not Action.CREATE]
        if diffs:
            out += ["", "<details><summary>Field changes</summary>", ""]
            for c in diffs:
                out.append(f"**`{c.qualified}`** ({c.action.value})")
                out.append("")
                out += ["| field | before | after |", "|---|---|---|"]
                for field, fc in c.diff:
                    out.append(f"| {field} | `{_md_escape(_fmt(fc.before))}` | `{_md_escape(_fmt(fc.after))}` |")
                out.append("")
            out.append("</details>")
        out += ["", f"**{summary_line(plan)}**"]
    if plan.warnings:
        out += ["", "**Warnings**", ""] + [f"- {_md_escape(w)}" for w in plan.warnings]
    return "\n".join(out) + "\n"


def render_json(plan: Plan) -> str:
    return plan.dumps()
