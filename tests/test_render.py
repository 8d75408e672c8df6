"""Plan renderers (text, markdown, JSON per SPEC §4) and `pki plan` output formats and exit codes."""

from __future__ import annotations

import dataclasses
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

# A pull request that creates a certificate and an authority, adds a SAN, changes a key type and
# revokes: the changes as the planner makes them (`pki plan --format json` of that PR).
PR = Plan(changes=(
    C(Action.REISSUE, Kind.CERTIFICATE, "web", ("hosts changed",),
      {"hosts": (["web.example.test"], ["web.example.test", "10.0.0.5"]),
       "not_after": ("2030-03-01T12:00:00Z", "2030-04-01T12:00:00Z")}),
    C(Action.REKEY, Kind.CERTIFICATE, "db", ("key algorithm changes ecdsa-p256 → rsa-2048",),
      {"key": ("ecdsa-p256 (local)", "rsa-2048 (local)"),
       "usages": (["client auth", "digital signature", "server auth"],
                  ["client auth", "digital signature", "key encipherment", "server auth"])}, new_key=True),
    C(Action.REVOKE, Kind.CERTIFICATE, "old", ('revoked = { reason = "superseded" } in pki.toml',),
      {"status": ("valid", "revoked")}, revoke_reason="superseded"),
    C(Action.CREATE, Kind.AUTHORITY, "partner", ("not in state",),
      {"key": (None, "ecdsa-p384 (vault)"), "issuer": (None, "root"), "subject": (None, "O=Review, CN=Partner CA"),
       "usages": (None, ["cert sign", "crl sign"]), "validity": (None, "5y"), "path_length": (None, 0),
       "name_constraints": (None, {"permitted": ["partner.test", "10.1.0.0/16"], "excluded": []}),
       "exportable": (None, False), "chain": (None, ["root"]), "not_after": (None, "2034-12-31T12:00:00Z")},
      new_key=True),
    C(Action.CREATE, Kind.CERTIFICATE, "api", ("not in state",),
      {"key": (None, "ecdsa-p256 (local)"), "issuer": (None, "inter"), "subject": (None, "O=Review, CN=api.example.test"),
       "hosts": (None, ["api.example.test", "10.0.0.7", "api@example.test", "https://api.example.test/"]),
       "usages": (None, ["digital signature", "server auth"]), "validity": (None, "90d"),
       "exportable": (None, True), "chain": (None, ["inter", "root"]), "not_after": (None, "2030-02-01T00:00:00Z")},
      new_key=True),
    C(Action.UPDATE_CRL, Kind.AUTHORITY, "inter", ("new revocations: certificate.old (superseded)",),
      {"crl_number": (1, 2)}),
), warnings=("certificate.api: validity 90d is capped at the expiry of authority.inter (2030-02-01T00:00:00Z): "
             "a certificate may not outlive its issuer",), at=AT,
    expiring=(("authority.inter", "2030-02-01T00:00:00Z"), ("certificate.cache", "2030-03-20T12:00:00Z")))


def test_markdown_of_a_pull_request_is_pinned():
    assert render_markdown(PR) == textwrap.dedent("""\
        <!-- pkiascode plan -->
        ### pkiascode plan

        **Plan: 2 to create, 1 to reissue, 1 to rekey, 1 to revoke, 1 CRL to update.**

        **Warnings**

        - certificate.api: validity 90d is capped at the expiry of authority.inter (2030-02-01T00:00:00Z): a certificate may not outlive its issuer

        | | action | object | why |
        |---|---|---|---|
        | `~` | reissue | `certificate.web` | hosts changed |
        | `-/+` | rekey | `certificate.db` | key algorithm changes ecdsa-p256 → rsa-2048 |
        | `-` | revoke | `certificate.old` | revoked = { reason = "superseded" } in pki.toml |
        | `+` | create | `authority.partner` | not in state |
        | `+` | create | `certificate.api` | not in state |
        | `~` | update_crl | `authority.inter` | new revocations: certificate.old (superseded) |

        **Keys to be deleted** once apply's commit is on the upstream branch (right away without one):

        - the old key of `certificate.db` (rekey)

        **Expiry outlook** (next 90 days after 2030-01-01, besides the changes above)

        | object | not after | days left |
        |---|---|---|
        | `authority.inter` | `2030-02-01T00:00:00Z` | 30 |
        | `certificate.cache` | `2030-03-20T12:00:00Z` | 78 |

        ---

        #### `~` reissue `certificate.web`

        - because hosts changed

        | field | before | after |
        |---|---|---|
        | SANs | DNS: `web.example.test` | DNS: `web.example.test`; IP: `10.0.0.5` |
        | not after | `2030-03-01T12:00:00Z` | `2030-04-01T12:00:00Z` |

        #### `-/+` rekey `certificate.db`

        - because key algorithm changes ecdsa-p256 → rsa-2048

        | field | before | after |
        |---|---|---|
        | key | `ecdsa-p256 (local)` | `rsa-2048 (local)` |
        | usages | `client auth`, `digital signature`, `server auth` | `client auth`, `digital signature`, `key encipherment`, `server auth` |

        #### `-` revoke `certificate.old`

        - because revoked = { reason = "superseded" } in pki.toml
        - revocation reason: `superseded`

        | field | before | after |
        |---|---|---|
        | status | `valid` | `revoked` |

        #### `+` create `authority.partner`

        - because not in state

        | field | value |
        |---|---|
        | subject | `O=Review, CN=Partner CA` |
        | issuer | `root` |
        | issuer chain | `root` |
        | key | `ecdsa-p384 (vault)` |
        | exportable | `false` |
        | usages | `cert sign`, `crl sign` |
        | validity | `5y` |
        | not after | `2034-12-31T12:00:00Z` |
        | path length | `0` |
        | name constraints | permitted `partner.test`, `10.1.0.0/16`; excluded (none) |

        #### `+` create `certificate.api`

        - because not in state

        | field | value |
        |---|---|
        | subject | `O=Review, CN=api.example.test` |
        | SANs | DNS: `api.example.test`; IP: `10.0.0.7`; email: `api@example.test`; URI: `https://api.example.test/` |
        | issuer | `inter` |
        | issuer chain | `inter` → `root` |
        | key | `ecdsa-p256 (local)` |
        | exportable | `true` |
        | usages | `digital signature`, `server auth` |
        | validity | `90d` |
        | not after | `2030-02-01T00:00:00Z` |

        #### `~` update_crl `authority.inter`

        - because new revocations: certificate.old (superseded)

        | field | before | after |
        |---|---|---|
        | crl_number | `1` | `2` |
        """)


def test_markdown_empty_and_escaping():
    assert render_markdown(EMPTY) == ("<!-- pkiascode plan -->\n### pkiascode plan\n\n"
                                      "No changes. The PKI matches pki.toml.\n")
    md = render_markdown(ALL)
    assert "- a \\| pipe" in md  # a pipe must not break out of the list/table
    assert "| `-/+` | rekey | `certificate.db` |" in md
    assert "<details" not in md  # nothing essential folded away
    for line in md.splitlines():
        if line.startswith("| `"):
            assert line.count(" | ") - line.count("\\| ") == 3


def test_markdown_from_pki_toml_cannot_hide_the_rest_of_the_comment():
    # values come from the pull request itself: an HTML comment in one must not swallow what follows
    sneaky = C(Action.REISSUE, Kind.CERTIFICATE, "web", ("subject changed <!--",),
               {"subject": ("CN=web", "CN=web <!-- "), "hosts": (["a`b.example"], ["x|y"])})
    md = render_markdown(Plan(changes=(sneaky, REVOKE), warnings=("<b>bold</b>",), at=AT))
    assert "<!--" not in md.split("\n", 1)[1].replace("`CN=web <!-- `", "")
    assert "subject changed &lt;!--" in md and "- &lt;b&gt;bold&lt;/b&gt;" in md
    assert "| subject | `CN=web` | `CN=web <!-- ` |" in md  # literal inside a code span
    assert "``" in md and "x\\|y" in md
    assert "#### `-` revoke `certificate.old`" in md  # still there, after the sneaky change


def test_markdown_is_cut_under_the_comment_limit_with_a_note():
    many = tuple(C(Action.CREATE, Kind.CERTIFICATE, f"host-{i:04d}", ("not in state",),
                   {"key": (None, "ecdsa-p256 (local)"), "issuer": (None, "inter"),
                    "hosts": (None, [f"host-{i:04d}.example.test"])}, new_key=True) for i in range(600))
    md = render_markdown(Plan(changes=many, warnings=(), at=AT))
    assert len(md) <= 65536
    assert md.startswith("<!-- pkiascode plan -->\n")
    assert md.rstrip().endswith("Run `pki plan` for all of it.")
    assert "over the 65,536-character comment limit" in md
    assert "| `+` | create | `certificate.host-0599` |" in md  # the summary table comes before the details
    small = render_markdown(PR)
    assert "cut here" not in small


def test_offline_plan_says_so_in_every_format():
    from pkiascode.render import OFFLINE_WARNING

    plan = Plan(changes=(CREATE,), warnings=(OFFLINE_WARNING,), at=AT)
    assert "key stores not checked" in render_text(plan)
    md = render_markdown(plan)
    assert "**Offline plan: key stores not checked.**" in md
    data = json.loads(render_json(plan))
    assert data["offline"] is True and OFFLINE_WARNING in data["warnings"]
    assert "offline" not in json.loads(render_json(TWO))


def test_markdown_lint_findings_and_expiry_outlook():
    from pkiascode.plan import Finding

    plan = Plan(changes=(CREATE,), warnings=(), at=AT, expiring=(("certificate.web", "2030-02-15T12:00:00Z"),))
    md = render_markdown(plan)
    assert "**Expiry outlook** (next 90 days after 2030-01-01" in md
    assert "| `certificate.web` | `2030-02-15T12:00:00Z` | 45 |" in md
    assert json.loads(render_json(plan))["expiring"] == [{"name": "certificate.web",
                                                          "not_after": "2030-02-15T12:00:00Z"}]
    assert "Nothing else falls due" in render_markdown(Plan(changes=(CREATE,), warnings=(), at=AT))
    empty = Plan(changes=(), warnings=(), at=AT, expiring=(("authority.root", "2030-03-01T00:00:00Z"),))
    assert "| `authority.root` | `2030-03-01T00:00:00Z` | 58 |" in render_markdown(empty)
    finding = Finding("pkix.certificate_key_usage_missing", "ERROR", "api", "certificate", "key usage <missing>")
    crl = Finding("pkix.crl_x", "WARNING", "root", "crl", "m")
    md = render_markdown(dataclasses.replace(TWO, findings=(finding, crl)))
    assert ("| ERROR | `certificate.api` (certificate) | `pkix.certificate_key_usage_missing` | "
            "key usage &lt;missing&gt; |") in md
    assert "| WARNING | `authority.root` (crl) | `pkix.crl_x` | m |" in md
    text = render_text(dataclasses.replace(TWO, findings=(finding, crl)))
    assert "  ERROR certificate.api (certificate): pkix.certificate_key_usage_missing: key usage <missing>\n" in text
    assert "  WARNING authority.root (crl): pkix.crl_x: m\n" in text


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


def test_the_audit_keys_rekey_in_every_format():
    """``--replace @audit`` (see test_planner): a reviewer sees the audit key's rekey as a change."""
    rekey = C(Action.REKEY_AUDIT_KEY, Kind.AUTHORITY, "audit-log",
              ("--replace @audit: a new key signs the audit log's heads from this apply on",),
              {"key": ("the pinned audit key", "a new key in the store of the first root authority")})
    p = Plan(changes=(REISSUE, rekey), warnings=(), at=AT, replace=("web", "@audit"))
    text = render_text(p).splitlines()
    assert "-/+ the audit log's key will be replaced by a new key" in text
    assert "      because --replace @audit: a new key signs the audit log's heads from this apply on" in text
    assert text[-1] == "Plan: 1 to reissue, 1 audit key to rekey."
    md = render_markdown(p)
    assert "| `-/+` | rekey_audit_key | `the audit log's key` | --replace @audit: a new key signs" in md
    assert "#### `-/+` rekey_audit_key `the audit log's key`" in md
    assert "| key | `the pinned audit key` | `a new key in the store of the first root authority` |" in md
    data = json.loads(render_json(p))
    assert data["changes"][1]["action"] == "rekey_audit_key" and data["changes"][1]["name"] == "audit-log"
    assert data["summary"] == {"reissue": 1, "rekey_audit_key": 1}
    assert Plan.from_json(data) == p


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
    assert [a.glyph for a in Action] == ["+", "~", "~", "-/+", ">", "-", "~", "-/+"]


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


# --- keys waiting for deletion (review F3/F5); escaping: tests/security/test_render_untrusted_values.py --

PENDING = (("vault", "transit:pki.3s2x6p7su53t.root-462646ed@1", "root"), ("local", "x-0123abcd.pem", None))


def test_pending_deletions_are_shown_by_every_format_and_are_no_change():
    plan = dataclasses.replace(EMPTY, pending_deletes=PENDING)
    text = render_text(plan)
    assert text.startswith("No changes.")
    assert ("Keys that will be deleted once the retiring commit is on the upstream (retired by an earlier apply; "
            "not a change of this plan):\n  ! vault:transit:pki.3s2x6p7su53t.root-462646ed@1 (root)\n"
            "  ! local:x-0123abcd.pem\n") in text
    md = render_markdown(plan)
    assert "**Keys that will be deleted once the retiring commit is on the upstream**" in md
    assert "- `vault:transit:pki.3s2x6p7su53t.root-462646ed@1` (`root`)\n- `local:x-0123abcd.pem`" in md
    data = json.loads(render_json(plan))
    assert data["pending_deletes"] == [
        {"store": "vault", "ref": "transit:pki.3s2x6p7su53t.root-462646ed@1", "entry": "root"},
        {"store": "local", "ref": "x-0123abcd.pem", "entry": None}]
    assert data["changes"] == [] and data["summary"] == {}
    # not a change: --detailed-exitcode stays 0 (the CLI decides by plan.empty)
    assert plan.empty and exit_code(not plan.empty, True) == 0
    assert json.loads(render_json(EMPTY))["pending_deletes"] == []
    assert "retiring commit" not in render_text(EMPTY) + render_markdown(EMPTY)


def test_the_update_crl_change_in_json_has_the_shape_the_ci_look_ahead_reads():
    """examples/ci's weekly look-ahead filters `pki plan --at +30d --format json` (where every CRL is due)
    by action, kind and name: run its own filter on a plan with a CRL update and a renewal."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    filters = set()
    for workflow in ("github/pki-look-ahead.yml", "gitlab/.gitlab-ci.yml"):
        m = re.search(r"python3 -c '([^']*update_crl[^']*)'", (root / "examples/ci" / workflow).read_text())
        assert m, workflow
        filters.add(m.group(1))
    plan = Plan(changes=(RENEW, CRL), warnings=(), at=AT)
    data = json.loads(render_json(plan))
    assert data["changes"][1] == {"action": "update_crl", "kind": "authority", "name": "inter",
                                  "reasons": list(CRL.reasons),
                                  "diff": {"crl_number": {"before": 3, "after": 4}}}
    for code in filters:
        out = subprocess.run([sys.executable, "-c", code], cwd=_write(data), capture_output=True, text=True)
        assert (out.returncode, out.stdout) == (0, "authority.inter\n"), out.stderr
    only_crls = dataclasses.replace(plan, changes=(CRL,))
    for code in filters:
        out = subprocess.run([sys.executable, "-c", code], cwd=_write(json.loads(render_json(only_crls))),
                             capture_output=True, text=True)
        assert (out.returncode, out.stdout) == (0, "\n"), out.stderr


def _write(data: dict) -> Path:
    import tempfile

    d = Path(tempfile.mkdtemp())
    (d / "look-ahead.json").write_text(json.dumps(data))
    return d


def test_pki_plan_lists_the_keys_an_earlier_apply_retired_until_they_are_deleted(tmp_path, env, capsys, monkeypatch):
    """End to end: a certificate leaves pki.toml, apply retires its key and keeps it until that commit is on
    the upstream. Until then every `pki plan` (again: never from the no-op memo), in every format, lists
    it; --detailed-exitcode stays 0."""
    from helpers import commit_all, git, key_ref, new_repo

    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    toml = PKI_TOML.replace("commit = false", "commit = true")
    repo = new_repo(tmp_path / "repo", toml, commit=True)
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "-u", "origin", "main")
    monkeypatch.chdir(repo)
    assert run_main(capsys, "apply", "--auto-approve")[0] == 0
    git(repo, "push", "-q")
    ref = key_ref(repo, "web")
    (repo / "pki.toml").write_text(toml.split("[certificate.web]")[0])
    commit_all(repo, "drop web")
    code, out, err = run_main(capsys, "apply", "--auto-approve")
    assert code == 0 and "1 retired key(s) are kept until the commit that retired them is on" in err, (out, err)
    for _ in range(2):
        code, out, err = run_main(capsys, "plan", "--detailed-exitcode")
        assert (code, err) == (0, "")
        assert out == ("No changes. The PKI matches pki.toml.\n\nKeys that will be deleted once the retiring commit "
                       "is on the upstream (retired by an earlier apply; not a change of this plan):\n"
                       f"  ! local:{ref} (web)\n\n")
    assert f"- `local:{ref}` (`web`)" in run_main(capsys, "plan", "--format", "markdown")[1]
    data = json.loads(run_main(capsys, "plan", "--format", "json")[1])
    assert data["pending_deletes"] == [{"store": "local", "ref": ref, "entry": "web"}] and data["changes"] == []
