"""Plan renderers: `Plan` in, string out. No I/O, no crypto.

What a plan quotes comes from files a pull request can write (names, subjects and SANs from state/
and CSRs, reasons that quote them): every such text passes through `errors.printable`, so no control,
bidirectional or invisible format character reaches a terminal or a review comment raw."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import printable
from .model import Kind
from .plan import OUTLOOK_DAYS, Action, Change, FieldChange, Finding, Plan

__all__ = ["render_text", "render_markdown", "render_json", "summary_line", "is_offline", "OFFLINE_WARNING",
           "MARKDOWN_MARKER", "PENDING_DELETES_HEADING"]

#: the warning of every offline plan (``pki plan --offline``), in every format
OFFLINE_WARNING = ("key stores not checked (--offline): this plan assumes every key state/ names exists; "
                   "`pki plan` without --offline checks them")

_COLORS = {Action.CREATE: "32", Action.REISSUE: "33", Action.RENEW: "33", Action.REKEY: "31",
           Action.MOVE_KEY: "36", Action.REVOKE: "31", Action.UPDATE_CRL: "33", Action.REKEY_AUDIT_KEY: "31"}
_WILL = {Action.CREATE: "will be created", Action.REISSUE: "will be reissued", Action.RENEW: "will be renewed",
         Action.REKEY: "will get a new key and certificate", Action.MOVE_KEY: "will have its key moved",
         Action.REVOKE: "will be revoked", Action.UPDATE_CRL: "will have its CRL re-signed",
         Action.REKEY_AUDIT_KEY: "will be replaced by a new key"}
_VERB = {Action.CREATE: "to create", Action.REISSUE: "to reissue", Action.RENEW: "to renew",
         Action.REKEY: "to rekey", Action.MOVE_KEY: "key{s} to move", Action.REVOKE: "to revoke",
         Action.UPDATE_CRL: "CRL{s} to update", Action.REKEY_AUDIT_KEY: "audit key to rekey"}


_JSON = json.JSONEncoder(ensure_ascii=False).encode

#: the heading of `Plan.pending_deletes` in the text and markdown plans
PENDING_DELETES_HEADING = "Keys that will be deleted once the retiring commit is on the upstream"


def _fmt(value: Any) -> str:
    """A value for display, one line, control and format characters escaped."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return printable(value)
    return printable(_JSON(value))


def _pending_item(store: str, ref: str, entry: str | None) -> str:
    """``store:ref (entry)``, escaped."""
    return printable(f"{store}:{ref}" + (f" ({entry})" if entry else ""))


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
    head = f"{glyph} {_style(printable(change.qualified), '1', color)} {_WILL[action]}"
    if change.retire:
        head += " and removed from state"
    lines = [head]
    lines.extend(f"      because {printable(reason)}" for reason in change.reasons)
    width = max((len(printable(f)) for f, _ in change.diff), default=0) + 1
    create = action is Action.CREATE
    arrow = _style("→", "2", color)
    for field, fc in change.diff:
        label = f"{printable(field)}:".ljust(width)
        if fc.before is None and create:
            lines.append(f"      {label} {_fmt(fc.after)}")
        else:
            lines.append(f"      {label} {_fmt(fc.before)} {arrow} {_fmt(fc.after)}")
    return lines


def _finding_object(plan: Plan, finding: Finding) -> tuple[str, str]:
    """(``certificate.db``, ``certificate``): the object a finding is on, and whether on its
    certificate or its CRL."""
    kinds = {c.name: c.kind for c in plan.changes}
    kind = kinds.get(finding.entry, Kind.AUTHORITY if finding.what == "crl" else None)
    return printable(f"{kind.value}.{finding.entry}" if kind is not None else finding.entry), printable(finding.what)


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
        out.extend(f"  ! {printable(w)}" for w in plan.warnings)
        out.append("")
    if plan.pending_deletes:
        if plan.empty and not plan.warnings:
            out.append("")
        out.append(_style(f"{PENDING_DELETES_HEADING} (retired by an earlier apply; not a change of this plan):",
                          "33", color))
        out.extend(f"  ! {_pending_item(*p)}" for p in plan.pending_deletes)
        out.append("")
    if plan.findings:
        out.append(_style("Lint findings (pkilint, on what apply would sign):", "33", color))
        for f in plan.findings:
            name, what = _finding_object(plan, f)
            out.append(printable(f"  {f.severity} {name} ({what}): {f.id}: {f.message}"))
        out.append("")
    if not plan.empty:
        out.append(_style(summary_line(plan), "1", color))
    return "\n".join(out) + "\n"


# -- markdown: a pull-request comment a reviewer can approve from ----------------------------------

#: the first line of every markdown plan, so a bot can find and update its one comment
MARKDOWN_MARKER = "<!-- pkiascode plan -->"
#: GitHub's limit for a comment, in characters
COMMENT_LIMIT = 65536

_FIELD_LABELS = {"key": "key", "exportable": "exportable", "issuer": "issuer", "chain": "issuer chain",
                 "subject": "subject", "hosts": "SANs", "usages": "usages", "validity": "validity",
                 "not_after": "not after", "profile": "profile", "path_length": "path length",
                 "name_constraints": "name constraints", "crl_distribution_point": "CRL distribution point"}
_CREATE_ORDER = ("subject", "hosts", "issuer", "chain", "key", "exportable", "usages", "validity", "not_after",
                 "path_length", "name_constraints", "profile", "crl_distribution_point")
_SAN_LABELS = {"dns": "DNS", "ip": "IP", "email": "email", "uri": "URI"}


def is_offline(plan: Plan) -> bool:
    """Whether ``plan`` was made without asking the key stores (``pki plan --offline``)."""
    return plan.offline or OFFLINE_WARNING in plan.warnings


def _md_escape(text: str) -> str:
    """Plain text in a table cell or list item: no HTML (a comment or tag from pki.toml would hide what
    follows), no table breaks."""
    return (printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def _code(value: Any) -> str:
    """``value`` as an inline code span (HTML is literal there), safe in a table cell."""
    text = _fmt(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if len(fence) > 1 else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _sans(hosts: Any) -> str:
    from .names import classify_host

    if not hosts:
        return "(none)"
    groups: dict[str, list[str]] = {}
    for host in hosts:
        try:
            kind = _SAN_LABELS[classify_host(str(host))[0]]
        except ValueError:
            kind = "other"
        groups.setdefault(kind, []).append(str(host))
    return "; ".join(f"{kind}: " + ", ".join(_code(h) for h in values) for kind, values in groups.items())


def _value(field: str, value: Any) -> str:
    if field == "hosts":
        return _sans(value)
    if field == "name_constraints" and isinstance(value, dict):
        return (f"permitted {', '.join(_code(v) for v in value.get('permitted') or []) or '(none)'}; "
                f"excluded {', '.join(_code(v) for v in value.get('excluded') or []) or '(none)'}")
    if field == "usages" and isinstance(value, list):
        return ", ".join(_code(u) for u in value) or "(none)"
    if field == "chain" and isinstance(value, list):
        return " → ".join(_code(n) for n in value)
    if field == "issuer" and value is None:
        return "(self-signed root)"
    return _code(value)


def _md_change(change: Change) -> list[str]:
    head = f"#### `{change.action.glyph}` {change.action.value} {_code(change.qualified)}"
    out = [head, ""]
    out += [f"- because {_md_escape(r)}" for r in change.reasons]
    if change.revoke_reason:
        out.append(f"- revocation reason: {_code(change.revoke_reason)}")
    if change.retire:
        out.append("- its certificate leaves `state/` and the inventory")
    out.append("")
    diff = dict(change.diff)
    if change.action is Action.CREATE:
        if change.kind is Kind.AUTHORITY and "issuer" not in diff:
            diff["issuer"] = FieldChange(None, None)
        fields = [f for f in _CREATE_ORDER if f in diff] + [f for f in diff if f not in _CREATE_ORDER]
        out += ["| field | value |", "|---|---|"]
        out += [f"| {_FIELD_LABELS.get(f) or _md_escape(f)} | {_value(f, diff[f].after)} |" for f in fields]
        out.append("")
    elif diff:
        out += ["| field | before | after |", "|---|---|---|"]
        for field, fc in change.diff:
            out.append(f"| {_FIELD_LABELS.get(field) or _md_escape(field)} | {_value(field, fc.before)} | "
                       f"{_value(field, fc.after)} |")
        out.append("")
    return out


def _key_deletions(plan: Plan) -> list[str]:
    """The keys this plan stops using: apply deletes them once its commit is on the upstream branch
    (right away without one), after the new state no longer names them."""
    out = []
    for c in plan.changes:
        if c.action is Action.REKEY and c.new_key or c.action is Action.RENEW and c.new_key:
            out.append(f"- the old key of {_code(c.qualified)} ({c.action.value})")
        elif c.action is Action.MOVE_KEY:
            before = dict(c.diff).get("backend")
            where = f" in backend {_code(before.before)}" if before is not None else ""
            out.append(f"- the old copy{where} of {_code(c.qualified)}'s key (it moves)")
        elif c.action is Action.REVOKE and c.retire:
            out.append(f"- the key of {_code(c.qualified)} (it leaves pki.toml; kept with `keep_revoked_keys = true`)")
    return out


def _outlook(plan: Plan) -> list[str]:
    """``plan.expiring`` (name, not_after) as a table of days left."""
    from .model import parse_time

    rows = []
    for name, not_after in plan.expiring:
        days = (parse_time(not_after) - plan.at).total_seconds() / 86400
        rows.append(f"| {_code(name)} | {_code(not_after)} | {int(days // 1)} |")
    if not rows:
        return [f"Nothing else falls due in the next {OUTLOOK_DAYS} days."]
    return ["| object | not after | days left |", "|---|---|---|"] + rows


def render_markdown(plan: Plan, *, limit: int = COMMENT_LIMIT) -> str:
    """The plan as a pull-request comment: the marker line, the summary, warnings, a table of the
    changes, the keys that will be deleted, the expiry outlook, then every change in full. Nothing is
    folded away; a plan longer than ``limit`` characters is cut at a line, with a note saying so."""
    out = [MARKDOWN_MARKER, "### pkiascode plan", ""]
    out.append(f"**{summary_line(plan)}**" if not plan.empty else summary_line(plan))
    if is_offline(plan):
        out += ["", "> **Offline plan: key stores not checked.** It assumes every key `state/` names exists."]
    warnings = [w for w in plan.warnings if w != OFFLINE_WARNING]  # (said just above)
    if warnings:
        out += ["", "**Warnings**", ""] + [f"- {_md_escape(w)}" for w in warnings]
    if plan.pending_deletes:
        out += ["", f"**{PENDING_DELETES_HEADING}** (retired by an earlier apply; not a change of this plan):",
                ""] + [f"- {_code(f'{s}:{r}')}" + (f" ({_code(e)})" if e else "") for s, r, e in plan.pending_deletes]
    findings = plan.findings
    if findings:
        out += ["", "**Lint findings** (pkilint, on what apply would sign)", "",
                "| severity | object | finding | message |", "|---|---|---|---|"]
        for f in findings:
            name, what = _finding_object(plan, f)
            out.append(f"| {_md_escape(f.severity)} | {_code(name)} ({_md_escape(what)}) | {_code(f.id)} | "
                       f"{_md_escape(f.message)} |")
    if not plan.empty:
        out += ["", "| | action | object | why |", "|---|---|---|---|"]
        for c in plan.changes:
            out.append(f"| `{c.action.glyph}` | {c.action.value} | {_code(c.qualified)} | "
                       f"{_md_escape('; '.join(c.reasons))} |")
        deletions = _key_deletions(plan)
        if deletions:
            out += ["", "**Keys to be deleted** once apply's commit is on the upstream branch (right away "
                    "without one):", ""] + deletions
    if plan.expiring or not plan.empty:
        out += ["", f"**Expiry outlook** (next {OUTLOOK_DAYS} days after {plan.at.strftime('%Y-%m-%d')}, "
                "besides the changes above)", ""] + _outlook(plan)
    if not plan.empty:
        out += ["", "---", ""]
        for c in plan.changes:
            out += _md_change(c)
    text = "\n".join(out).rstrip("\n") + "\n"
    if len(text) <= limit:
        return text
    note = (f"\n**… cut here: the full plan is {len(text):,} characters, over the {limit:,}-character "
            "comment limit.** Run `pki plan` for all of it.\n")
    cut = text.rfind("\n", 0, limit - len(note)) + 1
    return text[:cut] + note


def render_json(plan: Plan) -> str:
    data = plan.to_json()
    if is_offline(plan):
        data["offline"] = True
    return json.dumps(data, indent=2) + "\n"
