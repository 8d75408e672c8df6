"""Threat: a plan quotes what files a pull request writes (review F12, issue 10.8).

Subjects, SANs and names come from state/ and CSRs as well as pki.toml; reasons and warnings quote
them. The text plan goes to a terminal (escape sequences retitle it, recolour it, hide lines), the
markdown plan to a review comment (bidi overrides reorder what a reviewer reads). Every such text is
printed through `errors.printable`: escaped, never raw. Before the fix, ESC, BEL, U+202E and C1 CSI
reached both raw.
"""

from __future__ import annotations

import datetime as dt
import json

from pkiascode.model import Kind
from pkiascode.plan import Action, Change, FieldChange, Plan
from pkiascode.render import render_json, render_markdown, render_text

AT = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def C(action: Action, kind: Kind, name: str, reasons: tuple[str, ...], diff: dict | None = None, **kw) -> Change:
    return Change(action, kind, name, reasons, tuple((f, FieldChange(*ba)) for f, ba in (diff or {}).items()), **kw)


HOSTILE = "ok\x1b]0;TITLE\x07\x1b[31mRED\u202eevil\u009b2J\u200b"


def _no_raw_controls(text: str) -> None:
    from pkiascode.errors import control_character

    assert all(control_character(line) is None for line in text.split("\n")), [
        line for line in text.split("\n") if control_character(line)]


def test_values_from_state_are_escaped_in_text_and_markdown():
    """A subject, SAN, reason, warning or name read from state/ or a CSR carries ESC, BEL, RLO, C1 CSI,
    ZWSP: the text and markdown plans print them as escapes, never raw (review F12)."""
    change = C(Action.REISSUE, Kind.CERTIFICATE, "web", (f"certificate file says CN={HOSTILE}",),
               {"subject": (f"CN={HOSTILE}", "CN=web"), "hosts": ([HOSTILE, "a.example"], ["a.example"]),
                HOSTILE: ("a", "b")})
    plan = Plan(changes=(change,), warnings=(f"w {HOSTILE}",), at=AT,
                expiring=((f"certificate.{HOSTILE}", "2030-02-01T00:00:00Z"),),
                pending_deletes=(("local", HOSTILE, HOSTILE),))
    for color in (False, True):
        text = render_text(plan, color=color)
        _no_raw_controls(text.replace("\x1b[", "").replace("\x1b", "") if color else text)
        assert "\\x1b]0;TITLE\\x07\\x1b[31mRED\\u202eevil\\x9b2J\\u200b" in text
    assert "\x1b" not in render_text(plan)
    md = render_markdown(plan)
    _no_raw_controls(md)
    assert "\\u202e" in md and "\\x1b" in md
    # JSON keeps the values (its own escapes make them inert)
    assert HOSTILE in json.loads(render_json(plan))["changes"][0]["diff"]["subject"]["before"]
