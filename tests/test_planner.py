"""The planner: a pure function of (desired, observed, now). Every action and reason, with an injected clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from pkiascode.cli import main

from pkiascode.errors import PlanError
from pkiascode.model import Kind, Observed, format_time
from pkiascode.plan import Action, FieldChange, Plan
from pkiascode.planner import plan as make_plan, quiet_until

from helpers import ROOT_AND_WEB
from planner_fakes import T0, World, by_name, days, load, only, record_for

BASE = """
[authority.root]
common_name = "Root CA"
validity = "10y"

[authority.inter]
issuer = "root"
common_name = "Inter CA"
validity = "5y"

[certificate.web]
issuer = "inter"
common_name = "web"
hosts = ["web.example.com", "10.0.0.1"]
validity = "90d"
renew_before = "30d"
"""


def world_at(text: str = BASE, now: dt.datetime = T0) -> tuple[World, object]:
    """A world where ``text`` has been applied at ``now``."""
    desired = load(text)
    w = World()
    w.converge(desired, now)
    assert w.plan(desired, now).empty
    return w, desired


def diff(change) -> dict[str, tuple]:
    return {f: (c.before, c.after) for f, c in change.diff}


# --- create -------------------------------------------------------------------------------------

def test_create_everything_in_order_with_diff():
    desired = load(BASE)
    p = make_plan(desired, Observed.empty(), now=T0)
    assert [(c.action, c.kind, c.name) for c in p.changes] == [
        (Action.CREATE, Kind.AUTHORITY, "root"),
        (Action.CREATE, Kind.AUTHORITY, "inter"),
        (Action.CREATE, Kind.CERTIFICATE, "web"),
    ]
    for c in p.changes:
        assert c.reasons == ("not in state",)
        assert c.new_key and c.makes_key
        assert c.revoke_reason is None and not c.retire
    web = only(p, "web")
    assert diff(web) == {
        "key": (None, "ecdsa-p256 (local)"),
        "issuer": (None, "inter"),
        "subject": (None, "CN=web"),
        "hosts": (None, ["web.example.com", "10.0.0.1"]),
        "usages": (None, ["client auth", "digital signature", "server auth"]),
        "validity": (None, "90d"),
        "exportable": (None, True),
        "chain": (None, ["inter", "root"]),
        "not_after": (None, "2030-04-01T12:00:00Z"),
    }
    root = only(p, "root")
    assert "issuer" not in diff(root)  # a root has none
    assert diff(root)["usages"] == (None, ["cert sign", "crl sign", "digital signature"])
    assert p.warnings == ()
    assert p.at == T0
    assert p.config_digest == desired.digest
    assert p.summary() == {"create": 3}


def test_plan_is_deterministic_and_does_not_touch_observed():
    w, desired = world_at()
    obs = w.observed()
    before = dict(obs.records)
    p1 = make_plan(desired, obs, now=T0 + days(70))
    p2 = make_plan(desired, obs, now=T0 + days(70))
    assert p1 == p2
    assert dict(obs.records) == before
    assert p1.state_digest == obs.digest


def test_children_declared_first_are_still_planned_after_their_issuers():
    text = """
[certificate.web]
issuer = "inter"
common_name = "web"

[authority.inter]
issuer = "root"
common_name = "Inter"

[authority.root]
common_name = "Root"
"""
    desired = load(text)
    assert list(desired.entries) == ["root", "inter", "web"]
    p = make_plan(desired, Observed.empty(), now=T0)
    assert [c.name for c in p.changes] == ["root", "inter", "web"]


def test_nothing_to_do_after_apply_and_as_time_passes_before_any_window():
    w, desired = world_at()
    assert w.plan(desired, T0).empty
    assert w.plan(desired, T0 + days(4)).empty  # CRLs fine, web not yet due


# --- capping ------------------------------------------------------------------------------------

def test_create_caps_a_certificate_at_its_issuers_expiry_with_a_warning():
    text = BASE.replace('validity = "90d"', 'validity = "6y"').replace('renew_before = "30d"', "")
    desired = load(text)
    w = World()
    p = w.plan(desired, T0)
    inter_not_after = T0 + dt.timedelta(days=5 * 365)
    assert p.warnings == (
        f"certificate.web: validity 6y is capped at the expiry of authority.inter ({format_time(inter_not_after)}): "
        "a certificate may not outlive its issuer",
    )
    w.apply(desired, p, T0)
    assert w.records["web"].not_after == w.records["inter"].not_after == inter_not_after
    assert w.plan(desired, T0).empty


def test_reissue_diff_shows_the_capped_not_after():
    w, desired = world_at()
    desired2 = load(BASE.replace('validity = "90d"', 'validity = "6y"'))
    web = only(w.plan(desired2, T0 + days(1)), "web")
    assert web.action is Action.REISSUE
    assert diff(web)["validity"] == ("90d", "6y")
    assert diff(web)["not_after"] == (format_time(T0 + days(90)), format_time(w.records["inter"].not_after))


CAP = """
[authority.root]
common_name = "Root"
validity = "1y"
renew_before = "10d"

[certificate.web]
issuer = "root"
common_name = "web"
validity = "1y"
renew_before = "60d"
"""


def test_capped_certificate_due_for_renewal_warns_instead_of_renewing_forever():
    w, desired = world_at(CAP)
    root_end = w.records["root"].not_after
    assert w.records["web"].not_after == root_end
    now = root_end - days(30)  # web is due (60d), root is not (10d)
    p = w.plan(desired, now)
    assert "web" not in by_name(p)
    assert by_name(p)["root"] == [Action.UPDATE_CRL]  # the CRL is due, the root is not
    assert p.warnings == (
        f"certificate.web: due for renewal (expires {format_time(root_end)}) but cannot outlive authority.root "
        f"(expires {format_time(root_end)}); renew the issuer",
    )


def test_capped_certificate_renews_once_its_issuer_renews():
    w, desired = world_at(CAP)
    root_end = w.records["root"].not_after
    now = root_end - days(5)  # both due
    p = w.plan(desired, now)
    assert by_name(p)["root"] == [Action.RENEW]
    web = only(p, "web")
    assert web.action is Action.RENEW
    assert diff(web)["not_after"] == (format_time(root_end), format_time(now + days(365)))
    assert not any("cannot outlive" in x for x in p.warnings)
    w.apply(desired, p, now)
    assert w.records["web"].not_after == now + days(365)
    assert w.plan(desired, now).empty


# --- reissue ------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, field, before, after", [
    ('common_name = "web"', 'common_name = "www"', "subject", "CN=web", "CN=www"),
    ('hosts = ["web.example.com", "10.0.0.1"]', 'hosts = ["web.example.com"]', "hosts",
     ["web.example.com", "10.0.0.1"], ["web.example.com"]),
    ('renew_before = "30d"', 'renew_before = "30d"\nusages = ["server auth"]', "usages",
     ["client auth", "digital signature", "server auth"], ["server auth"]),
    ('validity = "90d"', 'validity = "60d"', "validity", "90d", "60d"),
])
def test_reissue_when_the_spec_changes(old, new, field, before, after):
    w, desired = world_at()
    text = BASE.replace(old, new)
    assert text != BASE
    p = w.plan(load(text), T0 + days(1))
    assert by_name(p) == {"web": [Action.REISSUE]}
    web = only(p, "web")
    assert web.reasons == (f"{field} changed",)
    assert diff(web)[field] == (before, after)
    assert list(diff(web)) == [field, "not_after"]
    assert not web.new_key and not web.makes_key


def test_reissue_when_the_profile_changes():
    text = BASE + """
[profile.server]
usages = ["server auth", "signing"]
"""
    w, desired = world_at(text)
    text2 = text.replace('renew_before = "30d"', 'renew_before = "30d"\nprofile = "server"')
    web = only(w.plan(load(text2), T0), "web")
    assert web.action is Action.REISSUE
    assert web.reasons == ("usages changed", "profile changed")
    assert diff(web)["profile"] == (None, "server")
    assert diff(web)["usages"] == (["client auth", "digital signature", "server auth"],
                                   ["digital signature", "server auth"])


def test_reissue_when_the_issuer_changes_to_a_new_authority():
    text = BASE + """
[authority.inter2]
issuer = "root"
common_name = "Inter 2"
"""
    w, desired = world_at(BASE)
    text2 = text.replace('issuer = "inter"', 'issuer = "inter2"')
    p = w.plan(load(text2), T0)
    assert [(c.action, c.name) for c in p.changes] == [(Action.CREATE, "inter2"), (Action.REISSUE, "web")]
    web = only(p, "web")
    assert diff(web)["issuer"] == ("inter", "inter2")
    assert web.reasons == ("issuer changed", "issuer key changed (authority.inter2 gets a new key)")


def test_authority_subject_change_reissues_its_children():
    w, desired = world_at()
    p = w.plan(load(BASE.replace('"Inter CA"', '"Inter CA 2"')), T0)
    inter, web = only(p, "inter"), only(p, "web")
    assert inter.action is Action.REISSUE and inter.reasons == ("subject changed",)
    assert diff(inter)["subject"] == ("CN=Inter CA", "CN=Inter CA 2")
    assert web.action is Action.REISSUE
    assert web.reasons == ("issuer subject changed (authority.inter)",)
    assert "root" not in by_name(p)


def test_reissue_within_the_renewal_window_says_so_too():
    text = BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrotate_key = false')
    w, desired = world_at(text)
    now = T0 + days(80)
    p = w.plan(load(text.replace('common_name = "web"', 'common_name = "www"')), now)
    web = only(p, "web")
    assert web.action is Action.REISSUE
    assert web.reasons == ("subject changed",
                           f"expires {(T0 + days(90)).date()} (in 10 days), within renew_before 30d")


def test_rotate_key_is_honoured_when_a_renewal_coincides_with_a_reissue():
    w, desired = world_at()
    now = T0 + days(80)  # web is due, and its spec changes as well
    web = only(w.plan(load(BASE.replace('common_name = "web"', 'common_name = "www"')), now), "web")
    assert web.makes_key


def test_rotate_key_is_honoured_when_a_due_leaf_is_reissued_for_its_issuers_new_key():
    text = CAP.replace('renew_before = "10d"', 'renew_before = "10d"\nrotate_key = true')
    w, desired = world_at(text)
    now = w.records["root"].not_after - days(5)  # both due; web is capped at root's expiry
    p = w.plan(desired, now)
    assert only(p, "root").makes_key
    assert only(p, "web").makes_key


# --- renew --------------------------------------------------------------------------------------

def test_renew_within_renew_before_with_a_new_key():
    w, desired = world_at()
    end = w.records["web"].not_after
    now = end - days(29)
    p = w.plan(desired, now)
    web = only(p, "web")
    assert web.action is Action.RENEW
    assert web.reasons == (f"expires {end.date()} (in 29 days), within renew_before 30d", "rotate_key: a new key")
    assert web.new_key and web.makes_key
    assert diff(web) == {"key": ("ecdsa-p256 (local)", "ecdsa-p256 (local), new"),
                         "not_after": (format_time(end), format_time(now + days(90)))}
    old_ski = w.records["web"].ski
    w.apply(desired, p, now)
    assert w.records["web"].ski != old_ski
    assert w.plan(desired, now).empty


@pytest.mark.parametrize("left, text", [
    (days(1), "in 1 day"), (days(2.5), "in 2 days"), (dt.timedelta(hours=5), "in 5h"),
    (dt.timedelta(seconds=90), "in 1m30s"),
])
def test_renew_reason_says_how_long_is_left(left, text):
    w, desired = world_at()
    end = w.records["web"].not_after
    web = only(w.plan(desired, end - left), "web")
    assert web.reasons[0] == f"expires {end.date()} ({text}), within renew_before 30d"


def test_renew_exactly_at_the_window_start_and_not_a_second_before():
    w, desired = world_at()
    start = w.records["web"].not_after - days(30)
    assert "web" not in by_name(w.plan(desired, start - dt.timedelta(seconds=1)))
    assert by_name(w.plan(desired, start))["web"] == [Action.RENEW]


def test_not_renewing_just_outside_the_window():
    w, desired = world_at()
    p = w.plan(desired, w.records["web"].not_after - days(31))
    assert "web" not in by_name(p)


def test_renew_without_rotate_key_keeps_the_key():
    w, desired = world_at(BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrotate_key = false'))
    web = only(w.plan(desired, T0 + days(70)), "web")
    assert web.action is Action.RENEW
    assert not web.new_key and not web.makes_key
    assert web.reasons == (f"expires {(T0 + days(90)).date()} (in 20 days), within renew_before 30d",)
    assert list(diff(web)) == ["not_after"]


def test_an_authority_renews_without_a_new_key_by_default_and_children_stay():
    w, desired = world_at()
    end = w.records["inter"].not_after
    now = end - days(10)
    w.records["web"] = dataclasses.replace(w.records["web"], not_after=now + days(60))  # not due itself
    p = w.plan(desired, now)
    inter = only(p, "inter")
    assert inter.action is Action.RENEW and not inter.new_key
    assert inter.reasons == (f"expires {end.date()} (in 10 days), within renew_before 30d",)
    assert "web" not in by_name(p)


def test_an_authority_with_rotate_key_renews_with_a_new_key_and_reissues_its_children():
    text = BASE.replace('common_name = "Inter CA"', 'common_name = "Inter CA"\nrotate_key = true')
    w, desired = world_at(text)
    now = w.records["inter"].not_after - days(10)
    w.records["web"] = dataclasses.replace(w.records["web"], not_after=now + days(60))
    p = w.plan(desired, now)
    assert only(p, "inter").action is Action.RENEW and only(p, "inter").new_key
    web = only(p, "web")
    assert web.action is Action.REISSUE
    assert web.reasons == ("issuer key changed (authority.inter gets a new key)",)


def test_expired_certificate_renews_with_expired_on():
    w, desired = world_at()
    end = w.records["web"].not_after
    web = only(w.plan(desired, end + days(3)), "web")
    assert web.action is Action.RENEW
    assert web.reasons == (f"expired on {end.date()}", "rotate_key: a new key")


def test_at_is_just_now():
    """`--at` is the planner's ``now``: the same observed state planned at two times."""
    w, desired = world_at()
    assert "web" not in by_name(w.plan(desired, T0 + days(10)))
    assert by_name(w.plan(desired, T0 + days(90)))["web"] == [Action.RENEW]
    assert w.plan(desired, T0 + days(90)).at == T0 + days(90)


# --- rekey --------------------------------------------------------------------------------------

def test_rekey_when_the_key_algorithm_changes():
    w, desired = world_at()
    p = w.plan(load(BASE.replace('validity = "90d"', 'validity = "90d"\nkey = "rsa-2048"')), T0)
    web = only(p, "web")
    assert web.action is Action.REKEY
    assert web.reasons == ("key algorithm changes ecdsa-p256 → rsa-2048",)
    assert web.new_key and web.revoke_reason is None
    # an RSA key's default usages gain key encipherment, shown in the same change
    assert diff(web) == {
        "key": ("ecdsa-p256 (local)", "rsa-2048 (local)"),
        "usages": (["client auth", "digital signature", "server auth"],
                   ["client auth", "digital signature", "key encipherment", "server auth"]),
    }
    assert "inter" not in by_name(p)  # no revocation: the old key was not compromised


def test_replace_rekeys_and_revokes_the_old_certificate_on_the_issuers_crl():
    w, desired = world_at()
    p = w.plan(desired, T0 + days(1), replace=["web"])
    web = only(p, "web")
    assert web.action is Action.REKEY
    assert web.reasons == ("--replace: new key, the old certificate is revoked as key_compromise",)
    assert web.revoke_reason == "key_compromise" and web.new_key
    crl = only(p, "inter")
    assert crl.action is Action.UPDATE_CRL
    assert crl.reasons[0] == "new revocations: certificate.web (key_compromise, replaced)"
    assert diff(crl) == {"crl_number": (1, 2)}
    assert p.replace == ("web",)
    old_serial = w.records["web"].serial
    w.apply(desired, p, T0 + days(1))
    assert [r["serial"] for r in w.revocations] == [old_serial]
    assert w.plan(desired, T0 + days(1)).empty


def test_replace_an_authority_cascades_to_its_children_only():
    w, desired = world_at()
    p = w.plan(desired, T0, replace=["inter", "inter"])
    assert p.replace == ("inter",)
    assert by_name(p) == {"inter": [Action.REKEY], "web": [Action.REISSUE], "root": [Action.UPDATE_CRL]}
    assert only(p, "web").reasons == ("issuer key changed (authority.inter gets a new key)",)
    assert only(p, "root").reasons == ("new revocations: authority.inter (key_compromise, replaced)",)


def test_root_rekey_reissues_everything_below_it():
    w, desired = world_at()
    p = w.plan(load(BASE.replace('validity = "10y"', 'validity = "10y"\nkey = "ecdsa-p384"')), T0)
    assert by_name(p) == {"root": [Action.REKEY], "inter": [Action.REISSUE], "web": [Action.REISSUE]}
    assert only(p, "inter").reasons == ("issuer key changed (authority.root gets a new key)",)
    assert only(p, "web").reasons == (
        "authority.root above it gets a new key: everything below it is reissued",)


@pytest.mark.parametrize("name, message", [
    ("nope", "--replace nope: no authority or certificate is named 'nope' in pki.toml"),
])
def test_replace_of_an_unknown_name_is_a_plan_error(name, message):
    w, desired = world_at()
    with pytest.raises(PlanError) as e:
        w.plan(desired, T0, replace=[name])
    assert str(e.value) == message


def test_replace_at_audit_rekeys_the_audit_key_and_nothing_else():
    """``--replace @audit``: one change, on no entry (``@`` is in no pki.toml name); planned again
    identically (a saved plan), and gone once applied."""
    w, desired = world_at()
    p = w.plan(desired, T0, replace=["@audit"])
    assert [(c.action, c.name, c.qualified) for c in p.changes] == [
        (Action.REKEY_AUDIT_KEY, "audit-log", "the audit log's key")]
    change = p.changes[0]
    assert not change.makes_key and not change.makes_certificate and not p.empty
    assert change.reasons[0].startswith("--replace @audit: a new key signs the audit log's heads")
    assert p.summary() == {"rekey_audit_key": 1} and p.replace == ("@audit",)
    assert Plan.from_json(p.to_json()) == p
    assert w.plan(desired, T0, replace=["@audit"]) == p
    w.apply(desired, p, T0)
    assert w.plan(desired, T0).empty
    # with other changes: the rekey comes last, after what the apply signs
    both = w.plan(desired, T0, replace=["web", "@audit"])
    assert [c.action for c in both.changes][-1] is Action.REKEY_AUDIT_KEY
    assert {c.name for c in both.changes} == {"web", "inter", "audit-log"}


def test_replace_of_a_revoked_entry_is_a_plan_error():
    text = BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrevoked = { reason = "superseded" }')
    with pytest.raises(PlanError, match=r"^--replace web: it is revoked in pki.toml$"):
        make_plan(load(text), Observed.empty(), now=T0, replace=["web"])


def test_replace_of_a_name_not_yet_in_state_just_creates_it():
    p = make_plan(load(BASE), Observed.empty(), now=T0, replace=["web"])
    web = only(p, "web")
    assert web.action is Action.CREATE and web.revoke_reason is None


def test_leaf_signed_by_an_older_issuer_key_reissues():
    w, desired = world_at()
    w.records["web"] = dataclasses.replace(w.records["web"], issuer_ski="feedface")
    web = only(w.plan(desired, T0), "web")
    assert web.action is Action.REISSUE
    assert web.reasons == ("issuer key changed (authority.inter's key is not the one that signed it)",)
    assert list(diff(web)) == ["not_after"]


def test_hand_built_records_plan_nothing():
    desired = load(BASE)
    e = desired.entries
    root = record_for(e["root"], desired, not_after=T0 + days(3650), crl={
        "number": 1, "next_update": format_time(T0 + days(7)), "validity": 7 * 86400})
    inter = record_for(e["inter"], desired, not_after=T0 + days(1825), issuer_ski=root.ski,
                       crl={"number": 1, "next_update": format_time(T0 + days(7)), "validity": 7 * 86400})
    web = record_for(e["web"], desired, not_after=T0 + days(90), issuer_ski=inter.ski)
    obs = Observed(records={"root": root, "inter": inter, "web": web}, revocations=())
    assert make_plan(desired, obs, now=T0).empty


def test_certificate_turned_authority_gets_a_new_key():
    root = '[authority.root]\ncommon_name = "Root"\n'
    base = root + '[certificate.web]\nissuer = "root"\nhosts = ["web.example"]\n'
    w = World()
    w.converge(load(base), T0)
    p = w.plan(load(root + '[authority.web]\nissuer = "root"\ncommon_name = "web"\n'), T0)
    change = next(c for c in p.changes if c.name == "web")
    assert change.makes_key


# --- drift --------------------------------------------------------------------------------------

def test_certificate_file_drift_reissues_with_that_reason():
    w, desired = world_at()
    w.cert_drift["web"] = "state/certs/web.pem is missing"
    p = w.plan(desired, T0)
    assert by_name(p) == {"web": [Action.REISSUE]}
    web = only(p, "web")
    assert web.reasons == ("state/certs/web.pem is missing",)
    assert not web.new_key
    w.apply(desired, p, T0)
    assert w.plan(desired, T0).empty


def test_a_missing_key_is_a_plan_error_naming_it_and_where_it_was_expected():
    w, desired = world_at()
    w.missing_keys["web"] = "its key web-1.pem is missing from backend local (.pki/keys)"
    with pytest.raises(PlanError) as e:
        w.plan(desired, T0)
    assert str(e.value) == ("certificate.web: its key web-1.pem is missing from backend local (.pki/keys): plan "
                            "where the key is, or restore it; to replace it with a new key and certificate "
                            "instead, --replace NAME (or --rekey-missing for every missing key)")
    w.missing_keys["inter"] = "its key inter-1.pem is missing from backend local (.pki/keys)"
    with pytest.raises(PlanError, match=r"^authority\.inter: .* \(and 1 more missing keys\): "):
        w.plan(desired, T0)


def test_a_missing_key_is_replaced_when_asked():
    w, desired = world_at()
    w.missing_keys["web"] = "its key web-1.pem is missing from backend local"
    web = only(w.plan(desired, T0, rekey_missing=True), "web")
    assert web.action is Action.REKEY
    assert web.reasons == ("its key web-1.pem is missing from backend local",)
    assert web.new_key and web.revoke_reason is None
    assert w.plan(desired, T0, rekey_missing=True).rekey_missing
    replaced = only(w.plan(desired, T0, replace=["web"]), "web")
    assert replaced.action is Action.REKEY and replaced.revoke_reason == "key_compromise"
    assert replaced.reasons[-1] == "its key web-1.pem is missing from backend local"


def test_a_missing_key_that_is_replaced_anyway_is_no_error():
    w, desired = world_at()
    w.missing_keys["web"] = "its key web-1.pem is missing from backend local"
    web = only(w.plan(load(BASE.replace('validity = "90d"', 'validity = "90d"\nkey = "rsa-2048"')), T0), "web")
    assert web.action is Action.REKEY
    assert web.reasons == ("key algorithm changes ecdsa-p256 → rsa-2048",
                           "its key web-1.pem is missing from backend local")


def test_missing_authority_key_rekeys_it_and_reissues_below_when_asked():
    w, desired = world_at()
    w.missing_keys["inter"] = "its key inter-1.pem is missing from backend local"
    with pytest.raises(PlanError, match=r"^authority\.inter: its key inter-1\.pem is missing"):
        w.plan(desired, T0)
    p = w.plan(desired, T0, rekey_missing=True)
    assert by_name(p) == {"inter": [Action.REKEY], "web": [Action.REISSUE]}
    w.apply(desired, p, T0)
    assert w.plan(desired, T0).empty


def test_crl_drift_re_signs_the_crl():
    w, desired = world_at()
    w.crl_drift["inter"] = "state/crl/inter.crl is missing"
    p = w.plan(desired, T0)
    assert by_name(p) == {"inter": [Action.UPDATE_CRL]}
    assert only(p, "inter").reasons == ("state/crl/inter.crl is missing",)


# --- move_key -----------------------------------------------------------------------------------

MOVE = BASE.replace("[authority.root]", '[backend.files]\nplugin = "local"\npath = ".pki/other"\n\n'
                                         '[backend.hsm]\nplugin = "pkcs11"\n\n[authority.root]')


def test_backend_change_moves_the_key_and_keeps_the_certificate():
    w, desired = world_at(MOVE)
    text = MOVE.replace('renew_before = "30d"', 'renew_before = "30d"\nbackend = "files"')
    p = w.plan(load(text), T0)
    assert by_name(p) == {"web": [Action.MOVE_KEY]}
    web = only(p, "web")
    assert web.reasons == ("backend changes local → files",)
    assert diff(web) == {"backend": ("local", "files")}
    assert not web.makes_certificate and not web.makes_key


def test_moving_a_non_exportable_key_is_a_plan_error():
    w, desired = world_at(MOVE.replace('validity = "5y"', 'validity = "5y"\nbackend = "hsm"'))
    assert w.records["inter"].store == "hsm" and not w.records["inter"].key_exportable
    with pytest.raises(PlanError) as e:
        w.plan(load(MOVE), T0)
    assert str(e.value) == ("authority.inter: cannot move its key from backend 'hsm' to 'local': the key was made "
                            "non-exportable and never leaves 'hsm'; keep backend = \"hsm\" or --replace inter")


def test_moving_a_non_exportable_key_with_replace_rekeys_instead():
    w, desired = world_at(MOVE.replace('validity = "5y"', 'validity = "5y"\nbackend = "hsm"'))
    p = w.plan(load(MOVE), T0, replace=["inter"])
    assert only(p, "inter").action is Action.REKEY


def test_a_key_to_move_that_is_not_on_this_machine_is_a_move_that_needs_the_machine_holding_it():
    w, desired = world_at(MOVE)
    w.missing_keys["web"] = "its key web-1.pem is missing from backend local (.pki/keys)"
    moved = load(MOVE.replace('renew_before = "30d"', 'renew_before = "30d"\nbackend = "files"'))
    p = w.plan(moved, T0)
    web = only(p, "web")
    assert web.action is Action.MOVE_KEY and web.key_elsewhere == "local"
    assert web.reasons == ("backend changes local → files", "needs the machine that holds backend local: its key "
                           "web-1.pem is missing from backend local (.pki/keys) here")
    assert web.to_json()["key_elsewhere"] == "local"
    assert "key_elsewhere" not in only(World().plan(moved, T0), "web").to_json()
    assert only(w.plan(moved, T0, rekey_missing=True), "web").action is Action.REKEY  # asked: a new key there


def test_key_in_a_backend_no_longer_defined_is_a_plan_error():
    w, desired = world_at(MOVE.replace('validity = "90d"', 'validity = "90d"\nbackend = "files"'))
    with pytest.raises(PlanError, match=r"^certificate\.web: its key is in backend 'files', which pki\.toml no "
                                        r"longer defines; define \[backend\.files\] again"):
        w.plan(load(BASE), T0)


# --- revoke -------------------------------------------------------------------------------------

def test_revoked_in_pki_toml_revokes_and_updates_the_issuers_crl():
    w, desired = world_at()
    text = BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrevoked = { reason = "key_compromise" }')
    d2 = load(text)
    p = w.plan(d2, T0 + days(1))
    assert [(c.action, c.name) for c in p.changes] == [(Action.REVOKE, "web"), (Action.UPDATE_CRL, "inter")]
    web = only(p, "web")
    assert web.reasons == ('revoked = { reason = "key_compromise" } in pki.toml',)
    assert web.revoke_reason == "key_compromise" and not web.retire
    assert diff(web) == {"status": ("valid", "revoked")}
    assert only(p, "inter").reasons == ("new revocations: certificate.web (key_compromise)",)
    w.apply(d2, p, T0 + days(1))
    assert w.records["web"].revoked["reason"] == "key_compromise"
    # revoked stays listed, is never renewed
    assert w.plan(d2, T0 + days(1)).empty
    assert "web" not in by_name(w.plan(d2, T0 + days(200)))


def test_revoking_an_authority_revokes_everything_below_it():
    w, desired = world_at()
    text = BASE.replace('validity = "5y"', 'validity = "5y"\nrevoked = { reason = "key_compromise" }')
    p = w.plan(load(text), T0)
    assert by_name(p) == {"inter": [Action.REVOKE, Action.UPDATE_CRL], "web": [Action.REVOKE],
                          "root": [Action.UPDATE_CRL]}
    inter, web = p.changes[0], only(p, "web")
    assert inter.reasons == ('revoked = { reason = "key_compromise" } in pki.toml',)
    assert inter.revoke_reason == "key_compromise"
    assert web.revoke_reason == "ca_compromise"
    assert web.reasons == ("issuer authority.inter is revoked",)
    assert only(p, "root").reasons == ("new revocations: authority.inter (key_compromise)",)
    assert p.changes[-1].name == "inter" and p.changes[-1].reasons == (
        "new revocations: certificate.web (ca_compromise)",)


def test_un_revoking_is_a_rekey():
    w, desired = world_at()
    text = BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrevoked = true')
    w.converge(load(text), T0)
    web = only(w.plan(desired, T0), "web")
    assert web.action is Action.REKEY
    assert web.reasons == ("it was revoked and a revocation cannot be undone: a new key and certificate",)


def test_removed_entries_are_revoked_and_retired_children_first():
    w, desired = world_at()
    text = BASE.split("[authority.inter]")[0]
    p = w.plan(load(text), T0)
    assert [(c.action, c.name) for c in p.changes] == [
        (Action.REVOKE, "web"), (Action.REVOKE, "inter"), (Action.UPDATE_CRL, "root")]
    for c in p.changes[:2]:
        assert c.retire and c.revoke_reason == "cessation_of_operation"
        assert c.reasons == ("removed from pki.toml: revoked, and its certificate leaves state",)
        assert diff(c) == {"status": ("valid", "removed")}
    assert p.changes[0].kind is Kind.CERTIFICATE and p.changes[1].kind is Kind.AUTHORITY
    assert p.changes[2].reasons == ("new revocations: authority.inter (cessation_of_operation)",)
    w.apply(load(text), p, T0)
    assert set(w.records) == {"root"}
    assert w.plan(load(text), T0).empty


def test_removed_entry_that_was_already_revoked_just_leaves_state():
    w, desired = world_at()
    text = BASE.replace('renew_before = "30d"', 'renew_before = "30d"\nrevoked = true')
    w.converge(load(text), T0)
    gone = BASE.split("[certificate.web]")[0]
    p = w.plan(load(gone), T0)
    assert [(c.action, c.name) for c in p.changes] == [(Action.REVOKE, "web")]
    c = p.changes[0]
    assert c.retire and c.revoke_reason is None
    assert c.reasons == ("removed from pki.toml (already revoked): leaves state",)
    assert diff(c) == {"status": ("revoked", "removed")}


# --- CRLs ---------------------------------------------------------------------------------------

def test_crl_re_signed_within_a_third_of_crl_validity():
    w, desired = world_at()
    next_update = T0 + days(7)
    assert w.plan(desired, next_update - days(7 / 3) - dt.timedelta(seconds=1)).empty
    p = w.plan(desired, next_update - days(7 / 3))
    assert by_name(p) == {"root": [Action.UPDATE_CRL], "inter": [Action.UPDATE_CRL]}
    assert only(p, "root").reasons == (
        f"next_update {format_time(next_update)} is within a third of crl_validity 7d",)
    assert diff(only(p, "root")) == {"crl_number": (1, 2)}


def test_crl_validity_change_re_signs_the_crl():
    w, desired = world_at()
    p = w.plan(load(BASE.replace('validity = "5y"', 'validity = "5y"\ncrl_validity = "14d"')), T0)
    assert by_name(p) == {"inter": [Action.UPDATE_CRL]}
    assert only(p, "inter").reasons == ("crl_validity changes 7d → 14d",)


def test_authority_without_a_crl_gets_one():
    w, desired = world_at()
    w.records["inter"] = dataclasses.replace(w.records["inter"], crl=None)
    p = w.plan(desired, T0)
    assert by_name(p) == {"inter": [Action.UPDATE_CRL]}
    assert only(p, "inter").reasons == ("no CRL yet",)
    assert diff(only(p, "inter")) == {"crl_number": (None, 1)}


# --- the plan as a whole ----------------------------------------------------------------------

def test_a_long_simulation_converges_at_every_step():
    """Plan and apply every 10 days for three years: each plan, once applied, leaves nothing to do."""
    desired = load(BASE)
    w = World()
    now = T0
    renewals = 0
    for _ in range(110):
        p = w.converge(desired, now)
        renewals += sum(1 for c in p.changes if c.name == "web" and c.action is Action.RENEW)
        assert w.plan(desired, now).empty, [c.action.value + " " + c.name for c in w.plan(desired, now).changes]
        assert now < w.records["web"].not_after  # never left expired
        now += days(10)
    assert 15 <= renewals <= 20  # every ~60 days


def test_plan_round_trips_through_json():
    w, desired = world_at()
    p = w.plan(load(BASE.replace('common_name = "web"', 'common_name = "www"')), T0 + days(85), replace=["inter"])
    assert Plan.from_json(p.to_json()) == p
    assert isinstance(p.changes[0].diff[0][1], FieldChange)


# --- drift found by reading a real state directory (real apply, ecdsa-p256) -------------------

REAL = ROOT_AND_WEB


# --- what a signed certificate holds differently from pki.toml's words ---------------------------

USAGES = """
[profile.shared]
usages = ["digital signature", "key encipherment", "server auth"]

[authority.root]
common_name = "Root CA"
name_constraints = { permitted = [".example.com", "uri:.example.com"] }

[certificate.ec]
issuer = "root"
profile = "shared"
key = "ecdsa-p256"

[certificate.rsa]
issuer = "root"
profile = "shared"
key = "rsa-2048"

[certificate.from-csr]
issuer = "root"
csr = "csrs/from-csr.csr"
"""


def test_a_usage_the_key_cannot_have_is_noted_when_signed():
    from pkiascode.keytypes import KeyType

    desired = load(USAGES)
    p = make_plan(desired, Observed.empty(), now=T0, csr_key_types={"from-csr": KeyType.ED25519})
    assert [w for w in p.warnings if "usage" in w] == [
        "certificate.ec: usage 'key encipherment' left out: an ECDSA key cannot encipher (RFC 5480)"]
    assert "authority.root: name constraint '.example.com' is written as 'example.com' (RFC 5280): it covers " \
           "example.com itself too, not only the names below it" in p.warnings
    assert not [w for w in p.warnings if "uri:" in w]  # RFC 5280 has the leading dot for URI hosts


def test_the_csr_key_decides_its_usages():
    from pkiascode.keytypes import KeyType

    listed = load(USAGES.replace('csr = "csrs/from-csr.csr"', 'csr = "csrs/from-csr.csr"\nprofile = "shared"'))
    p = make_plan(listed, Observed.empty(), now=T0, csr_key_types={"from-csr": KeyType.ECDSA_P384})
    assert "certificate.from-csr: usage 'key encipherment' left out: an ECDSA key cannot encipher (RFC 5480)" \
        in p.warnings
    p = make_plan(listed, Observed.empty(), now=T0, csr_key_types={"from-csr": KeyType.RSA_4096})
    assert not [w for w in p.warnings if w.startswith("certificate.from-csr")]


def test_notes_only_for_what_is_signed_so_a_no_op_plan_stays_empty():
    desired = load(USAGES.replace('\n[certificate.from-csr]\nissuer = "root"\ncsr = "csrs/from-csr.csr"\n', ""))
    w = World()
    w.converge(desired, T0)
    p = w.plan(desired, T0 + days(1))
    assert p.empty and p.warnings == ()


def run_pki(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def real(tmp_path, monkeypatch, capsys):
    (tmp_path / "pki.toml").write_text(REAL)
    (tmp_path / ".gitignore").write_text(".pki/\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_pki(capsys, "apply", "--auto-approve")
    assert code == 0, err
    assert run_pki(capsys, "plan", "--detailed-exitcode")[0] == 0
    return tmp_path


def json_plan(capsys) -> dict:
    code, out, err = run_pki(capsys, "plan", "--format", "json", "--detailed-exitcode")
    assert code in (0, 2), err
    return json.loads(out)


def test_real_certificate_file_missing_or_replaced(real, capsys):
    web_pem = real / "state/certs/web.pem"
    original = web_pem.read_bytes()
    web_pem.unlink()
    data = json_plan(capsys)
    assert [(c["action"], c["name"], c["reasons"]) for c in data["changes"]] == [
        ("reissue", "web", ["state/certs/web.pem is missing"])]
    web_pem.write_bytes(original[:-200] + b"\n-----END CERTIFICATE-----\n")  # damaged: reissued
    (reason,) = json_plan(capsys)["changes"][0]["reasons"]
    assert reason.startswith("state/certs/web.pem ")
    web_pem.write_bytes((real / "state/certs/root.pem").read_bytes())  # another valid certificate: refused
    code, _, err = run_pki(capsys, "plan")
    assert code == 1 and "holds another certificate" in err and "restore it from git" in err
    web_pem.write_bytes(original)
    assert json_plan(capsys)["changes"] == []


def test_real_missing_key_is_an_error_until_rekey_missing_and_apply_converges(real, capsys):
    inv = json.loads((real / "state/inventory.json").read_text())
    ref = inv["objects"]["web"]["key"]["ref"]
    (real / ".pki/keys" / ref).unlink()
    code, out, err = run_pki(capsys, "plan")
    assert code == 1 and err.startswith(f"Error: certificate.web: its key {ref} is missing from backend local "
                                        "(.pki/keys): ") and err.count("\n") == 1
    code, _, err = run_pki(capsys, "apply", "--auto-approve")
    assert code == 1 and "missing" in err
    code, out, _ = run_pki(capsys, "plan", "--rekey-missing", "--format", "json")
    assert [(c["action"], c["name"], c["reasons"]) for c in json.loads(out)["changes"]] == [
        ("rekey", "web", [f"its key {ref} is missing from backend local (.pki/keys)"])]
    assert run_pki(capsys, "apply", "--auto-approve", "--rekey-missing")[0] == 0
    assert json_plan(capsys)["changes"] == []


def test_real_root_rekey_cascades_and_converges(real, capsys):
    code, out, _ = run_pki(capsys, "plan", "--replace", "root", "--format", "json")
    data = json.loads(out)
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("rekey", "root"), ("reissue", "web")]
    assert data["changes"][1]["reasons"] == ["issuer key changed (authority.root gets a new key)"]
    assert run_pki(capsys, "apply", "--auto-approve", "--replace", "root")[0] == 0
    assert json_plan(capsys)["changes"] == []
    inv = json.loads((real / "state/inventory.json").read_text())
    assert inv["objects"]["web"]["issuer_ski"] == inv["objects"]["root"]["ski"]


# --- what a reviewer sees besides the changes: the expiry outlook, --at too far ahead ----------

def test_expiring_lists_live_objects_the_plan_leaves_alone_that_expire_within_90_days():
    w, desired = world_at()  # web: 90d, renewed 30d before; inter 5y; root 10y
    p = w.plan(desired, T0 + days(1))
    assert p.empty and p.expiring == (("certificate.web", format_time(w.records["web"].not_after)),)
    assert Plan.from_json(p.to_json()).expiring == p.expiring
    assert w.plan(desired, T0 + days(70)).expiring == ()  # web is renewed: the plan changes it
    short = load(BASE.replace('validity = "5y"', 'validity = "100d"\nrenew_before = "5d"'))
    w2 = World()
    w2.converge(short, T0)
    p = w2.plan(short, T0 + days(30))
    assert [n for n, _ in p.expiring] == ["certificate.web", "authority.inter"]  # soonest first


def test_creation_diff_of_a_csr_entry_has_no_exportable_and_not_after_is_capped():
    text = BASE.replace('validity = "90d"', 'validity = "20y"') + (
        '\n[certificate.partner]\nissuer = "inter"\ncommon_name = "p"\ncsr = "p.csr"\n')
    p = make_plan(load(text), Observed.empty(), now=T0)
    assert "exportable" not in diff(only(p, "partner"))
    assert diff(only(p, "inter"))["not_after"] == (None, "2034-12-31T12:00:00Z")  # 5y of 365 days
    assert diff(only(p, "web"))["not_after"] == (None, "2034-12-31T12:00:00Z")  # 20y, capped at inter's
    assert diff(only(p, "inter"))["chain"] == (None, ["root"])
    assert "chain" not in diff(only(p, "root"))


def test_at_past_the_renewal_window_of_a_fresh_certificate_warns_that_every_run_renews():
    w, desired = world_at()  # web: validity 90d, renew_before 30d: a fresh one is due after 60 days
    quiet = w.plan(desired, T0 + days(59), issue_time=T0)
    assert not [x for x in quiet.warnings if "every run" in x]
    p = w.plan(desired, T0 + days(61), issue_time=T0)
    (warning,) = [x for x in p.warnings if "every run" in x]
    assert warning.startswith("--at 61d ahead reaches past") and "renews certificate.web;" in warning
    assert "authority" not in warning
    assert p.issued_at == T0 and Plan.from_json(p.to_json()).issued_at == T0
    assert w.plan(desired, T0 + days(61)).issued_at is None  # signed when planned: nothing to record


def test_a_non_exportable_key_moves_out_of_a_store_that_hands_such_keys_over():
    # the local store keeps an authority's key from `pki export`, but a file can move into an HSM
    w, desired = world_at(MOVE)
    w.records["inter"] = dataclasses.replace(w.records["inter"], key_exportable=False)
    moved = load(MOVE.replace('validity = "5y"', 'validity = "5y"\nbackend = "hsm"'))
    with pytest.raises(PlanError, match="never leaves 'local'"):
        w.plan(moved, T0)
    caps = {"local": (True, True, True), "hsm": (False, True, False)}
    inter = only(w.plan(moved, T0, store_caps=caps), "inter")
    assert inter.action is Action.MOVE_KEY and inter.reasons == ("backend changes local → hsm",)


# --- keys waiting for deletion (review F3/F5) -----------------------------------------------------

def test_pending_deletions_reach_the_plan_with_their_entry_and_are_no_change():
    """Keys an earlier apply retired are listed in the plan (so a reviewer sees what a merge lets apply
    delete), with the entry the reference names; they are not changes: the plan stays empty."""
    w, desired = world_at()
    observed = dataclasses.replace(w.observed(), pending_deletes=(
        ("local", "web-0123abcd.noexport.pem"), ("vault", "transit:pki.3s2x6p7su53t.root-462646ed@1"),
        ("vault", "kv:pki/3s2x6p7su53t/keys/gone.one-89abcdef"), ("vault", "transit:pki.3s2x6p7su53t.a.b-89abcdef@2"),
        ("local", "gone.two-0123abcd.pem"), ("x", "no suffix"), ("local", "web-0123abcd.noexport.pem")))
    p = make_plan(desired, observed, now=T0)
    assert p.empty
    assert p.pending_deletes == (("local", "web-0123abcd.noexport.pem", "web"),
                                 ("vault", "transit:pki.3s2x6p7su53t.root-462646ed@1", "root"),
                                 ("vault", "kv:pki/3s2x6p7su53t/keys/gone.one-89abcdef", "gone.one"),
                                 ("vault", "transit:pki.3s2x6p7su53t.a.b-89abcdef@2", None),
                                 ("local", "gone.two-0123abcd.pem", "gone.two"), ("x", "no suffix", None))
    assert Plan.from_json(json.loads(p.dumps())).pending_deletes == p.pending_deletes
    assert make_plan(desired, w.observed(), now=T0).pending_deletes == ()
    # never quiet: a remembered empty plan (the no-op memo) would not list them
    assert quiet_until(desired, observed) <= T0 - days(365 * 50) < quiet_until(desired, w.observed())
