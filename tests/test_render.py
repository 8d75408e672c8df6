"""Plan renderers (text, markdown, JSON per SPEC §4) and `pki plan` output formats and exit codes."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

import pytest

from pkiascode import cli as cli_mod
from pkiascode.cli import exit_code, parse_when
from pkiascode.errors import PkiError
from pkiascode.model import Kind
from pkiascode.plan import Action, Change, FieldChange, Plan
from pkiascode.render import render_json, render_markdown, render_text, summary_line

from helpers import ROOT_AND_WEB, run_main

AT = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def C(action: Action, kind: Kind, name: str, reasons: tuple[str, ...], diff: dict | None = None, **kw) -> Change:
    return Change(action, kind, name, reasons, tuple((f, FieldChange(*ba)) for f, ba in (diff or {}).items()), **kw)


CREATE = C(Action.CREATE, Kind.CERTIFICATE, "api", ("not in state",),
           {"key": (None, "ecdsa-p256 (local)"), "issuer": (None, "inter"),
            "hosts": (None, ["api.example.com", "10.0.0.1"])}, new_key=True)
REISSUE = C(Action.REISSUE, Kind.CERTIFICATE, "web", ("subject changed", "hosts changed"),
            {"subject": ("CN=web", "CN=www"), "hosts": (["a.example"], ["a.example", "b.example"]),
             "not_after": ("2030-04-01T12:00:00Z", "2030-04-01T12:00:00Z")})
RENEW = C(Action.RENEW, Kind.AUTHORITY, "inter", ("expires 2030-01-20 (in 19 days), within renew_before 30d",),
          {"not_after": ("2030-01-20T12:00:00Z", "2035-01-01T12:00:00Z")})
REKEY = C(Action.REKEY, Kind.CERTIFICATE, "db", ("--replace: new key, the old certificate is revoked as key_compromise",),
          {"key": ("ecdsa-p256 (local)", "ecdsa-p256 (local)")}, new_key=True, revoke_reason="key_compromise")
MOVE = C(Action.MOVE_KEY, Kind.AUTHORITY, "root", ("backend changes local → hsm",), {"backend": ("local", "hsm")})
REVOKE = C(Action.REVOKE, Kind.CERTIFICATE, "old", ("removed from pki.toml: revoked, and its certificate leaves state",),
           {"status": ("valid", "removed")}, revoke_reason="cessation_of_operation", retire=True)
CRL = C(Action.UPDATE_CRL, Kind.AUTHORITY, "inter", ("new revocations: certificate.old (cessation_of_operation)",),
        {"crl_number": (3, 4)})

TWO = Plan(changes=(REISSUE, CREATE), warnings=(), at=AT)
ALL = Plan(changes=(CREATE, REISSUE, RENEW, REKEY, MOVE, REVOKE, CRL),
           warnings=("certificate.api: validity 10y is capped at the expiry of authority.inter", "a | pipe"),
           at=AT, config_digest="c" * 64, state_digest="s" * 64, replace=("db",))
EMPTY = Plan(changes=(), warnings=(), at=AT)


# --- text ---------------------------------------------------------------------------------------

def test_text_golden():
    assert render_text(TWO) == textwrap.dedent("""\
        pkiascode will make these changes:

          ~ certificate.web will be reissued
              because subject changed
              because hosts changed
              subject:   CN=web → CN=www
              hosts:     ["a.example"] → ["a.example", "b.example"]
              not_after: 2030-04-01T12:00:00Z → 2030-04-01T12:00:00Z

          + certificate.api will be created
              because not in state
              key:    ecdsa-p256 (local)
              issuer: inter
              hosts:  ["api.example.com", "10.0.0.1"]

        Plan: 1 to create, 1 to reissue.
        """)


def test_text_heads_and_glyphs_of_every_action():
    lines = render_text(ALL).splitlines()
    heads = [line for line in lines if line[:3].strip() in ("+", "~", "-/+", ">", "-") and line[3:4] == " "]
    assert heads == [
        "  + certificate.api will be created",
        "  ~ certificate.web will be reissued",
        "  ~ authority.inter will be renewed",
        "-/+ certificate.db will get a new key and certificate",
        "  > authority.root will have its key moved",
        "  - certificate.old will be revoked and removed from state",
        "  ~ authority.inter will have its CRL re-signed",
    ]
    assert "      crl_number: 3 → 4" in lines
    assert "      backend: local → hsm" in lines
    assert lines[-4:] == [
        "  ! certificate.api: validity 10y is capped at the expiry of authority.inter",
        "  ! a | pipe",
        "",
        "Plan: 1 to create, 1 to reissue, 1 to renew, 1 to rekey, 1 key to move, 1 to revoke, 1 CRL to update.",
    ]
    assert "Warnings:" in lines


@pytest.mark.parametrize("changes, line", [
    ((CREATE,), "Plan: 1 to create."),
    ((CREATE, CREATE, REISSUE), "Plan: 2 to create, 1 to reissue."),
    ((MOVE, MOVE), "Plan: 2 keys to move."),
    ((CRL, CRL, CRL), "Plan: 3 CRLs to update."),
    ((REVOKE, CREATE), "Plan: 1 to create, 1 to revoke."),
    ((), "No changes. The PKI matches pki.toml."),
])
def test_summary_line(changes, line):
    assert summary_line(Plan(changes=changes, warnings=(), at=AT)) == line


def test_text_of_an_empty_plan():
    assert render_text(EMPTY) == "No changes. The PKI matches pki.toml.\n"
    with_warning = Plan(changes=(), warnings=("certificate.web: due for renewal",), at=AT)
    assert render_text(with_warning) == ("No changes. The PKI matches pki.toml.\n\nWarnings:\n"
                                         "  ! certificate.web: due for renewal\n\n")


def test_no_ansi_codes_unless_color():
    assert "\x1b[" not in render_text(ALL)
    assert "\x1b[" not in render_text(ALL, color=False)
    colored = render_text(ALL, color=True)
    assert "\x1b[32m  +\x1b[0m \x1b[1mcertificate.api\x1b[0m will be created" in colored
    assert "\x1b[31m-/+\x1b[0m" in colored
    import re
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == render_text(ALL)


# --- markdown -----------------------------------------------------------------------------------

def test_markdown_golden():
    assert render_markdown(TWO) == textwrap.dedent("""\
        ### pkiascode plan

        | | action | object | why |
        |---|---|---|---|
        | `~` | reissue | `certificate.web` | subject changed; hosts changed |
        | `+` | create | `certificate.api` | not in state |

        <details><summary>Field changes</summary>

        **`certificate.web`** (reissue)

        | field | before | after |
        |---|---|---|
        | subject | `CN=web` | `CN=www` |
        | hosts | `["a.example"]` | `["a.example", "b.example"]` |
        | not_after | `2030-04-01T12:00:00Z` | `2030-04-01T12:00:00Z` |

        </details>

        **Plan: 1 to create, 1 to reissue.**
        """)


def test_markdown_empty_and_escaping():
    assert render_markdown(EMPTY) == "### pkiascode plan\n\nNo changes. The PKI matches pki.toml.\n"
    md = render_markdown(ALL)
    assert "- a \\| pipe" in md  # a pipe must not break out of the list/table
    assert "| `-/+` | rekey | `certificate.db` |" in md
    for line in md.splitlines():
        if line.startswith("| `"):
            assert line.count(" | ") - line.count("\\| ") == 3


# --- JSON ---------------------------------------------------------------------------------------

def test_json_format_per_spec():
    data = json.loads(render_json(ALL))
    assert data["format_version"] == 1
    assert data["summary"] == {"create": 1, "reissue": 1, "renew": 1, "rekey": 1, "move_key": 1, "revoke": 1,
                               "update_crl": 1}
    assert list(data["summary"]) == ["create", "reissue", "renew", "rekey", "move_key", "revoke", "update_crl"]
    assert len(data["changes"]) == 7
    for change in data["changes"]:
        assert {"action", "kind", "name", "reasons", "diff"} <= set(change)
        assert change["kind"] in ("authority", "certificate")
        assert isinstance(change["reasons"], list) and change["reasons"]
        for field, fc in change["diff"].items():
            assert set(fc) == {"before", "after"}, field
    assert data["changes"][1] == {
        "action": "reissue", "kind": "certificate", "name": "web",
        "reasons": ["subject changed", "hosts changed"],
        "diff": {"subject": {"before": "CN=web", "after": "CN=www"},
                 "hosts": {"before": ["a.example"], "after": ["a.example", "b.example"]},
                 "not_after": {"before": "2030-04-01T12:00:00Z", "after": "2030-04-01T12:00:00Z"}},
    }
    assert data["changes"][0]["diff"]["key"] == {"before": None, "after": "ecdsa-p256 (local)"}
    assert data["changes"][3]["revoke_reason"] == "key_compromise"
    assert data["changes"][5]["retire"] is True
    assert data["at"] == "2030-01-01T12:00:00Z"


def test_json_of_an_empty_plan():
    data = json.loads(render_json(EMPTY))
    assert (data["format_version"], data["changes"], data["summary"]) == (1, [], {})


def test_plan_round_trips_through_json():
    for p in (ALL, TWO, EMPTY):
        assert Plan.from_json(json.loads(render_json(p))) == p
        assert Plan.from_json(p.to_json()) == p


def test_a_plan_of_another_format_version_is_refused():
    d = ALL.to_json()
    d["format_version"] = 2
    with pytest.raises(ValueError, match="unsupported plan format_version 2"):
        Plan.from_json(d)


def test_change_properties():
    assert CREATE.makes_certificate and CREATE.makes_key
    assert REISSUE.makes_certificate and not REISSUE.makes_key
    assert RENEW.makes_certificate and not RENEW.makes_key
    assert dataclass_replace(RENEW, new_key=True).makes_key
    assert REKEY.makes_key
    assert not MOVE.makes_certificate and not MOVE.makes_key
    assert not REVOKE.makes_certificate and not CRL.makes_certificate
    assert CRL.qualified == "authority.inter"
    assert [a.glyph for a in Action] == ["+", "~", "~", "-/+", ">", "-", "~"]


def dataclass_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


# --- `pki plan`: formats, --at and exit codes ------------------------------------------------

PKI_TOML = ROOT_AND_WEB


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "pki.toml").write_text(PKI_TOML)
    (tmp_path / ".gitignore").write_text(".pki/\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def applied(project, capsys):
    code, out, err = run_main(capsys, "apply", "--auto-approve")
    assert code == 0, err
    assert "Apply complete: 2 created. State written, not committed." in out
    return project


def test_detailed_exitcode_2_with_changes_0_without(project, capsys):
    code, out, err = run_main(capsys, "plan", "--detailed-exitcode")
    assert (code, err) == (2, "")
    assert out.endswith("Plan: 2 to create.\n")
    assert "\x1b[" not in out  # not a terminal: no colour
    assert run_main(capsys, "plan")[0] == 0  # without the flag, changes are still success


def test_detailed_exitcode_0_when_nothing_to_do(applied, capsys):
    code, out, err = run_main(capsys, "plan", "--detailed-exitcode")
    assert (code, out, err) == (0, "No changes. The PKI matches pki.toml.\n", "")


def test_detailed_exitcode_1_on_error(project, capsys):
    (project / "pki.toml").write_text(PKI_TOML.replace('validity = "90d"', 'validity = 90'))
    code, out, err = run_main(capsys, "plan", "--detailed-exitcode")
    assert (code, out) == (1, "")
    assert err == "pki.toml:11: certificate.web.validity: validity must be a string, not the number 90\n"


def test_plan_at_a_later_date_and_relative(applied, capsys):
    code, out, _ = run_main(capsys, "plan", "--detailed-exitcode", "--at", "+90d", "--format", "json")
    assert code == 2
    data = json.loads(out)
    web = next(c for c in data["changes"] if c["name"] == "web")
    assert web["action"] == "renew"
    assert web["reasons"][0].startswith("expired on ")
    code, out, _ = run_main(capsys, "plan", "--at", "2099-06-01", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["at"] == "2099-06-01T00:00:00Z"
    assert {c["name"]: c["action"] for c in data["changes"]}["root"] == "renew"
    assert run_main(capsys, "plan", "--detailed-exitcode", "--at", "+1d")[0] == 0


@pytest.mark.parametrize("when, message", [
    ("tomorrow", "Error: --at tomorrow: use an ISO date (2027-06-01), a date-time, or +90d\n"),
    ("+90", "Error: --at +90: bad duration '90': use an integer and a unit (s m h d w y), e.g. \"90d\" or "
            "\"1y30d\"\n"),
    ("2027-13-01", "Error: --at 2027-13-01: use an ISO date (2027-06-01), a date-time, or +90d\n"),
])
def test_bad_at_is_a_one_line_error(project, capsys, when, message):
    code, out, err = run_main(capsys, "plan", "--at", when)
    assert (code, out, err) == (1, "", message)


def test_at_too_far_away_is_a_clear_error(project, capsys):
    code, out, err = run_main(capsys, "plan", "--at", "+9000y")
    assert code == 1
    assert err.startswith("Error: --at +9000y: ")


def test_replace_unknown_name_exit_1(applied, capsys):
    code, out, err = run_main(capsys, "plan", "--replace", "nope", "--detailed-exitcode")
    assert (code, out) == (1, "")
    assert err == "Error: --replace nope: no authority or certificate is named 'nope' in pki.toml\n"


def test_plan_replace_and_markdown(applied, capsys):
    code, out, _ = run_main(capsys, "plan", "--replace", "web", "--format", "markdown")
    assert code == 0
    assert "| `-/+` | rekey | `certificate.web` | --replace: new key, the old certificate is revoked as " \
           "key_compromise |" in out
    assert "| `~` | update_crl | `authority.root` |" in out


def test_plan_out_saves_a_plan_that_round_trips(applied, capsys):
    code, out, _ = run_main(capsys, "plan", "--replace", "web", "--out", "p.json")
    assert code == 0
    assert out.endswith("\nSaved the plan to p.json. Apply exactly it with `pki apply p.json`.\n")
    saved = Plan.from_json(json.loads(Path("p.json").read_text()))
    assert saved.replace == ("web",)
    assert [c.action for c in saved.changes] == [Action.REKEY, Action.UPDATE_CRL]


def test_parse_when():
    now = dt.datetime(2026, 5, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert parse_when(None, now) == now
    assert parse_when("", now) == now
    assert parse_when("+90d", now) == now + dt.timedelta(days=90)
    assert parse_when("-1d12h", now) == now - dt.timedelta(days=1, hours=12)
    assert parse_when("2027-06-01", now) == dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc)
    assert parse_when("2027-06-01T08:00:00+02:00", now) == dt.datetime(2027, 6, 1, 6, tzinfo=dt.timezone.utc)
    assert parse_when("2027-06-01T08:00:00Z", now) == dt.datetime(2027, 6, 1, 8, tzinfo=dt.timezone.utc)
    with pytest.raises(PkiError, match=r"^--at soon: use an ISO date"):
        parse_when("soon", now)


def test_exit_code_is_decided_in_one_place():
    assert exit_code(False, False) == 0
    assert exit_code(True, False) == 0
    assert exit_code(False, True) == 0
    assert exit_code(True, True) == 2
    assert (cli_mod.EXIT_OK, cli_mod.EXIT_ERROR, cli_mod.EXIT_CHANGES) == (0, 1, 2)
