"""End to end: revocation, CRLs, forced replacement, name constraints and expiry, through the real
``pki`` command in temporary git repositories, checked with the real ``openssl`` and Python ``ssl``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from helpers import (
    BASE_PKI, Repo, aki, concat, crl_reason_of, crl_serials, openssl, ski, spki_der, tls_handshake,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("openssl_and_git")]


def applied(make_applied: Callable[..., tuple[Path, Any]], toml: str = BASE_PKI) -> Repo:
    """A copy of a repository with ``toml`` committed and applied (conftest's ``make_applied``)."""
    return Repo(make_applied(toml)[0])


def changes_by(plan: dict) -> dict[tuple[str, str], dict]:
    return {(c["action"], c["name"]): c for c in plan["changes"]}


def crl_number(path: Path) -> int:
    out = openssl("crl", "-in", path, "-noout", "-crlnumber").output
    m = re.search(r"crlNumber=(?:0x)?([0-9A-Fa-f]+)", out)
    assert m, out
    return int(m.group(1), 16)


def crl_text(path: Path) -> str:
    return openssl("crl", "-in", path, "-noout", "-text").output


def revoked_block(text: str, serial: int) -> str:
    """The lines of ``openssl crl -text`` about one serial."""
    want = format(serial, "X")
    blocks = re.split(r"\n\s*Serial Number: ", text)
    for block in blocks[1:]:
        first = block.split("\n", 1)[0].strip().lstrip("0")
        if first == want.lstrip("0"):
            return block
    raise AssertionError(f"serial {want} not in the CRL:\n{text}")


def verify(repo: Repo, leaf: str, *, chain: tuple[str, ...] = ("root", "inter"), crls: tuple[str, ...] = ("inter",),
           flag: str = "-crl_check") -> tuple[int, str]:
    p = openssl("verify", flag, "-CAfile", repo.chain_file(*chain), "-CRLfile", repo.crl_file(*crls),
                repo.cert_path(leaf), expect=None)
    return p.returncode, p.stdout + p.stderr


def assert_every_crl_verifies(repo: Repo) -> None:
    for crl in sorted((repo.state / "crl").glob("*.crl")):
        name = crl.stem
        issuer = repo.cert_path(name)
        out = openssl("crl", "-in", crl, "-noout", "-verify", "-CAfile", issuer).output
        assert "verify OK" in out, out


# -- 1. declarative revocation -------------------------------------------------------------------

def test_revoked_in_pki_toml_goes_on_the_crl_and_openssl_rejects_it(make_applied) -> None:
    repo = applied(make_applied)
    client = repo.cert("client")
    number_before = crl_number(repo.crl_path("inter"))
    assert verify(repo, "client")[0] == 0

    repo.edit_toml('common_name = "client"\n', 'common_name = "client"\nrevoked = { reason = "key_compromise" }\n')
    plan = repo.plan_json()
    ch = changes_by(plan)
    assert set(ch) == {("revoke", "client"), ("update_crl", "inter")}, plan
    assert ch[("revoke", "client")]["revoke_reason"] == "key_compromise"
    assert not ch[("revoke", "client")].get("retire")
    repo.pki("plan", "--detailed-exitcode", expect=2)

    out = repo.apply().stdout
    assert "1 revoked" in out

    # the serial is on inter's CRL with its reason; openssl refuses the client and accepts the rest
    text = crl_text(repo.crl_path("inter"))
    assert "Key Compromise" in revoked_block(text, client.serial_number)
    assert crl_number(repo.crl_path("inter")) == number_before + 1
    rc, out = verify(repo, "client")
    assert rc != 0 and "certificate revoked" in out, out
    for good in ("server", "other"):
        rc, out = verify(repo, good)
        assert rc == 0, out
    rc, out = verify(repo, "server", crls=("root", "inter"), flag="-crl_check_all")
    assert rc == 0, out
    assert_every_crl_verifies(repo)

    # it stays listed (revoked), its certificate stays in state, the audit log has the revocation
    assert repo.cert_path("client").exists()
    rows = {r["name"]: r for r in repo.pki("list", "--format", "json").json()}
    assert rows["client"]["status"] == "revoked"
    assert rows["server"]["status"] == "ok"
    revokes = [e for e in repo.audit() if e["action"] == "revoke"]
    assert [(e["name"], e["serial"], e["reason"]) for e in revokes] == \
        [("client", format(client.serial_number, "x"), "key_compromise")]
    assert repo.pki("audit", "verify").returncode == 0
    assert repo.git("log", "-1", "--format=%s").startswith("pki apply: 1 revoked")
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_tls_handshake_refused_for_the_revoked_client_once_the_crl_is_loaded(tmp_path: Path, make_applied) -> None:
    repo = applied(make_applied)
    keys = tmp_path / "export"
    for name in ("server", "client"):
        repo.pki("export", name, "--dir", str(keys))
    server_chain = concat(tmp_path / "server-chain.pem", keys / "server.pem", repo.cert_path("inter"))
    client_chain = concat(tmp_path / "client-chain.pem", keys / "client.pem", repo.cert_path("inter"))

    def handshake():
        trust = concat(tmp_path / "trust-and-crl.pem", repo.cert_path("root"), repo.cert_path("inter"),
                       repo.crl_path("inter"))
        return tls_handshake(server_cert=server_chain, server_key=keys / "server-key.pem",
                             client_cafile=repo.cert_path("root"), server_hostname="server.example.test",
                             client_cert=client_chain, client_key=keys / "client-key.pem",
                             server_cafile=trust, crl_check_leaf=True)

    before = handshake()
    assert before.ok, before  # the CRL is loaded and checked, and the client is not on it

    repo.edit_toml('common_name = "client"\n', 'common_name = "client"\nrevoked = { reason = "key_compromise" }\n')
    repo.apply()
    after = handshake()
    assert not after.ok
    assert after.server_error is not None and "revoked" in str(after.server_error), after


def test_removed_entry_is_revoked_and_leaves_state_and_its_key_is_deleted(tmp_path: Path, make_applied) -> None:
    repo = applied(make_applied)
    server = repo.cert("server")
    key_file = repo.key_file("server")
    assert key_file.exists()

    repo.remove_table("certificate.server")
    plan = repo.plan_json()
    ch = changes_by(plan)
    assert set(ch) == {("revoke", "server"), ("update_crl", "inter")}, plan
    assert ch[("revoke", "server")]["retire"] is True
    assert "removed from state" in repo.pki("plan").stdout
    repo.apply()

    assert not repo.cert_path("server").exists()
    assert "server" not in repo.inventory()
    assert not key_file.exists(), "the removed entry's key must be deleted from its backend"
    assert server.serial_number in crl_serials(repo.crl("inter"))
    old = tmp_path / "server-old.pem"
    old.write_bytes(repo.git("show", "HEAD~1:state/certs/server.pem").encode())
    p = openssl("verify", "-crl_check", "-CAfile", repo.chain_file("root", "inter"), "-CRLfile",
                repo.crl_path("inter"), old, expect=None)
    assert p.returncode != 0 and "certificate revoked" in p.stdout + p.stderr
    event = [e for e in repo.audit() if e["action"] == "revoke"][-1]
    assert event["name"] == "server" and event["retired"] is True
    assert event["serial"] == format(server.serial_number, "x")
    assert "state/certs/server.pem" in repo.git("show", "--stat", "--format=", "HEAD")
    assert repo.pki("audit", "verify").returncode == 0
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_keep_revoked_keys_keeps_the_key_file(make_applied) -> None:
    repo = applied(make_applied, "[pki]\nkeep_revoked_keys = true\n\n" + BASE_PKI)
    key_file = repo.key_file("server")
    repo.remove_table("certificate.server")
    repo.apply()
    assert not repo.cert_path("server").exists()
    assert key_file.exists(), "keep_revoked_keys = true keeps the key"
    # ...and later applies do not sweep it up either
    repo.edit_toml('common_name = "other"\n', 'common_name = "other"\nrevoked = { reason = "superseded" }\n')
    repo.apply()
    assert key_file.exists()
    assert repo.key_file("other").exists()


def test_removing_an_authority_with_everything_below_it_revokes_and_retires_the_subtree(make_applied) -> None:
    repo = applied(make_applied)
    inter = repo.cert("inter")
    kept_root_key = repo.key_file("root")
    gone_keys = {repo.key_file(n) for n in ("inter", "server", "client", "other")}
    text = repo.read_toml()
    repo.write_toml(text[:text.index("[authority.inter]")])

    plan = repo.plan_json()
    order = [(c["action"], c["name"]) for c in plan["changes"]]
    assert set(order) == {("revoke", "inter"), ("revoke", "server"), ("revoke", "client"), ("revoke", "other"),
                          ("update_crl", "root")}, plan
    assert all(c["retire"] for c in plan["changes"] if c["action"] == "revoke")
    assert order.index(("revoke", "inter")) > max(order.index(("revoke", n)) for n in ("server", "client", "other")), \
        "children are retired before their authority"
    repo.apply()

    assert sorted(p.name for p in (repo.state / "certs").iterdir()) == ["root.pem"]
    assert sorted(p.name for p in (repo.state / "crl").iterdir()) == ["root.crl"]
    assert set(repo.inventory()) == {"root"}
    assert kept_root_key.exists() and not any(k.exists() for k in gone_keys)
    assert crl_reason_of(repo.crl("root"), inter.serial_number) == x509.ReasonFlags.cessation_of_operation
    assert_every_crl_verifies(repo)
    assert repo.pki("audit", "verify").returncode == 0
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_key_of_an_entry_revoked_then_removed_is_deleted(make_applied) -> None:
    repo = applied(make_applied)
    key_file = repo.key_file("client")
    repo.edit_toml('common_name = "client"\n', 'common_name = "client"\nrevoked = { reason = "key_compromise" }\n')
    repo.apply()
    repo.remove_table("certificate.client")
    repo.apply()
    assert "client" not in repo.inventory()
    # nothing references the key any more, and keep_revoked_keys is not set: it must not linger
    assert not key_file.exists(), f"orphaned key left in the backend: {sorted(repo.key_files())}"


def test_revoking_an_authority_cascades_to_everything_below_it(make_applied) -> None:
    repo = applied(make_applied)
    inter, server = repo.cert("inter"), repo.cert("server")
    repo.edit_toml('common_name = "Lifecycle Intermediate CA"\n',
                   'common_name = "Lifecycle Intermediate CA"\nrevoked = { reason = "key_compromise" }\n')
    plan = repo.plan_json()
    ch = changes_by(plan)
    assert set(ch) == {("revoke", "inter"), ("revoke", "server"), ("revoke", "client"), ("revoke", "other"),
                       ("update_crl", "root"), ("update_crl", "inter")}, plan
    for child in ("server", "client", "other"):
        c = ch[("revoke", child)]
        assert any("inter" in r for r in c["reasons"]), c
        assert c["revoke_reason"] == "ca_compromise"
    text = repo.pki("plan").stdout
    for child in ("server", "client", "other"):
        assert f"certificate.{child} will be revoked" in text

    repo.apply()
    assert crl_reason_of(repo.crl("root"), inter.serial_number) == x509.ReasonFlags.key_compromise
    assert crl_reason_of(repo.crl("inter"), server.serial_number) == x509.ReasonFlags.ca_compromise
    assert "CA Compromise" in revoked_block(crl_text(repo.crl_path("inter")), server.serial_number)
    rc, out = verify(repo, "server", crls=("root", "inter"), flag="-crl_check_all")
    assert rc != 0 and "certificate revoked" in out, out
    assert_every_crl_verifies(repo)
    status = {r["name"]: r["status"] for r in repo.pki("list", "--format", "json").json()}
    assert status == {"root": "ok", "inter": "revoked", "server": "revoked", "client": "revoked",
                      "other": "revoked"}
    repo.pki("plan", "--detailed-exitcode", expect=0)
    # a revoked subtree is never renewed
    repo.pki("plan", "--at", "+400d", "--detailed-exitcode", expect=2)
    late = repo.plan_json("--at", "+400d")
    assert {c["name"] for c in late["changes"]} <= {"root"}, late


# -- 3. forced replacement ---------------------------------------------------------------------

def test_replace_leaf_new_key_new_serial_old_serial_revoked_as_key_compromise(tmp_path: Path, make_applied) -> None:
    repo = applied(make_applied)
    old_cert, old_rec = repo.cert("server"), repo.record("server")
    old_key_file = repo.key_file("server")
    number_before = crl_number(repo.crl_path("inter"))

    plan = repo.plan_json("--replace", "server")
    ch = changes_by(plan)
    assert set(ch) == {("rekey", "server"), ("update_crl", "inter")}, plan
    assert ch[("rekey", "server")]["revoke_reason"] == "key_compromise"
    repo.apply("--replace", "server")

    new_cert, new_rec = repo.cert("server"), repo.record("server")
    assert new_cert.serial_number != old_cert.serial_number
    assert new_rec["key"]["ref"] != old_rec["key"]["ref"]
    assert spki_der(new_cert) != spki_der(old_cert)
    assert not old_key_file.exists() and repo.key_file("server").exists()
    text = crl_text(repo.crl_path("inter"))
    assert "Key Compromise" in revoked_block(text, old_cert.serial_number)
    assert crl_number(repo.crl_path("inter")) > number_before
    assert verify(repo, "server")[0] == 0
    old = tmp_path / "old-server.pem"
    old.write_bytes(repo.git("show", "HEAD~1:state/certs/server.pem").encode())
    p = openssl("verify", "-crl_check", "-CAfile", repo.chain_file("root", "inter"), "-CRLfile",
                repo.crl_path("inter"), old, expect=None)
    assert p.returncode != 0 and "certificate revoked" in p.stdout + p.stderr
    # untouched: the others keep their certificates
    assert repo.git("show", "--stat", "--format=", "HEAD").count("certs/") == 1
    assert_every_crl_verifies(repo)
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_replace_is_repeatable_and_refuses_unknown_names(make_applied) -> None:
    repo = applied(make_applied)
    plan = repo.plan_json("--replace", "server", "--replace", "client")
    assert {(c["action"], c["name"]) for c in plan["changes"] if c["action"] == "rekey"} == \
        {("rekey", "server"), ("rekey", "client")}
    r = repo.pki("plan", "--replace", "nosuch", expect=1)
    assert "nosuch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_replace_authority_reissues_everything_below_and_revokes_the_old_one(tmp_path: Path, make_applied) -> None:
    repo = applied(make_applied)
    old_inter = repo.cert("inter")
    old_children = {n: repo.cert(n) for n in ("server", "client", "other")}

    plan = repo.plan_json("--replace", "inter")
    ch = changes_by(plan)
    assert set(ch) == {("rekey", "inter"), ("reissue", "server"), ("reissue", "client"), ("reissue", "other"),
                       ("update_crl", "root")}, plan
    for n in old_children:
        assert any("issuer key changed" in r for r in ch[("reissue", n)]["reasons"]), ch[("reissue", n)]
    repo.apply("--replace", "inter")

    new_inter = repo.cert("inter")
    assert spki_der(new_inter) != spki_der(old_inter)
    assert crl_reason_of(repo.crl("root"), old_inter.serial_number) == x509.ReasonFlags.key_compromise
    assert "Key Compromise" in revoked_block(crl_text(repo.crl_path("root")), old_inter.serial_number)
    for n, old in old_children.items():
        new = repo.cert(n)
        assert new.serial_number != old.serial_number
        assert spki_der(new) == spki_der(old), "a reissue keeps the child's key"
        assert aki(new) == ski(new_inter)
        rc, out = verify(repo, n, crls=("root", "inter"), flag="-crl_check_all")
        assert rc == 0, out
    # the old intermediate fails against the root's CRL
    old = tmp_path / "old-inter.pem"
    old.write_bytes(repo.git("show", "HEAD~1:state/certs/inter.pem").encode())
    p = openssl("verify", "-crl_check", "-CAfile", repo.cert_path("root"), "-CRLfile", repo.crl_path("root"), old,
                expect=None)
    assert p.returncode != 0 and "certificate revoked" in p.stdout + p.stderr
    assert_every_crl_verifies(repo)
    repo.pki("plan", "--detailed-exitcode", expect=0)


# -- 2. CRLs -----------------------------------------------------------------------------------

def test_crls_number_aki_validity_and_distribution_points(make_applied) -> None:
    toml = BASE_PKI.replace('crl_url = "http://crl.example.test/inter.crl"\n',
                            'crl_url = "http://crl.example.test/inter.crl"\ncrl_validity = "3d"\n')
    toml += """
[authority.side]
issuer = "root"
common_name = "Side CA without a CRL URL"

[certificate.side-leaf]
issuer = "side"
common_name = "side-leaf"
"""
    repo = applied(make_applied, toml)
    assert sorted(p.name for p in (repo.state / "crl").iterdir()) == ["inter.crl", "root.crl", "side.crl"]
    for name, days in (("root", 7), ("inter", 3), ("side", 7)):
        path = repo.crl_path(name)
        assert path.read_bytes().startswith(b"-----BEGIN X509 CRL-----")
        crl = repo.crl(name)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
        assert aki(crl) == ski(repo.cert(name))
        assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=days)
        text = crl_text(path)
        assert "X509v3 CRL Number" in text and "X509v3 Authority Key Identifier" in text and "Next Update" in text
    assert_every_crl_verifies(repo)

    def cdp(name: str) -> str:
        return openssl("x509", "-in", repo.cert_path(name), "-noout", "-ext", "crlDistributionPoints").output

    assert "URI:http://crl.example.test/root.crl" in cdp("inter")
    assert "URI:http://crl.example.test/root.crl" in cdp("side")
    assert "URI:http://crl.example.test/inter.crl" in cdp("server")
    assert "URI:http://crl.example.test/inter.crl" in cdp("client")
    assert "CRL Distribution Points" not in cdp("side-leaf")
    assert "CRL Distribution Points" not in cdp("root")

    # CRL numbers only go up, one per re-signing
    numbers = []
    for reason, name in (("superseded", "client"), ("affiliation_changed", "other")):
        repo.edit_toml(f'common_name = "{name}"\n', f'common_name = "{name}"\nrevoked = {{ reason = "{reason}" }}\n')
        repo.apply()
        numbers.append(crl_number(repo.crl_path("inter")))
    assert numbers == [2, 3]
    assert crl_number(repo.crl_path("root")) == 1
    text = crl_text(repo.crl_path("inter"))
    assert "Superseded" in text and "Affiliation Changed" in text


def test_update_crl_planned_when_next_update_is_within_a_third_of_crl_validity(make_applied) -> None:
    repo = applied(make_applied)
    # crl_validity 7d: due once fewer than 7d/3 = 56h are left, i.e. from +4d16h on
    repo.pki("plan", "--at", "+4d", "--detailed-exitcode", expect=0)
    repo.pki("plan", "--at", "+4d15h", "--detailed-exitcode", expect=0)
    repo.pki("plan", "--at", "+4d17h", "--detailed-exitcode", expect=2)
    r = repo.pki("plan", "--at", "+6d", "--detailed-exitcode", expect=2)
    assert "within a third of crl_validity" in r.stdout
    plan = repo.plan_json("--at", "+6d")
    assert {(c["action"], c["name"]) for c in plan["changes"]} == {("update_crl", "root"), ("update_crl", "inter")}
    inter = next(c for c in plan["changes"] if c["name"] == "inter")
    assert inter["diff"]["crl_number"] == {"before": 1, "after": 2}

    old_next = repo.crl("inter").next_update_utc
    repo.apply("--at", "+6d")
    crl = repo.crl("inter")
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.next_update_utc >= old_next
    assert_every_crl_verifies(repo)
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_revocation_date_from_pki_toml_is_the_crl_revocation_date(make_applied) -> None:
    repo = applied(make_applied)
    serial = repo.cert("client").serial_number
    repo.edit_toml('common_name = "client"\n',
                   'common_name = "client"\nrevoked = { reason = "privilege_withdrawn", date = 2024-01-02 }\n')
    repo.apply()
    block = revoked_block(crl_text(repo.crl_path("inter")), serial)
    assert "Jan  2 00:00:00 2024 GMT" in block and "Privilege Withdrawn" in block, block


def test_malformed_revocation_date_is_a_config_error(make_applied) -> None:
    repo = applied(make_applied)
    repo.edit_toml('common_name = "client"\n',
                   'common_name = "client"\nrevoked = { reason = "superseded", date = "2024-01-02 noon" }\n')
    line = repo.line_of("revoked = ")
    r = repo.pki("validate", expect=None)
    assert r.returncode == 1, r
    assert re.search(rf"^pki\.toml:{line}: certificate\.client\.revoked", r.stderr, flags=re.M), r


def test_unknown_revocation_reason_is_a_config_error_with_a_suggestion(make_applied) -> None:
    repo = applied(make_applied)
    repo.edit_toml('common_name = "client"\n', 'common_name = "client"\nrevoked = { reason = "keyCompromise" }\n')
    line = repo.line_of("revoked = ")
    r = repo.pki("plan", expect=1)
    assert re.match(rf"(?:Error: )?pki\.toml:{line}: certificate\.client\.revoked: unknown revocation reason", r.stderr), r
    assert "key_compromise" in r.stderr


# -- 4. name constraints -------------------------------------------------------------------------

NC_PKI = """\
[defaults]
key = "ecdsa-p256"

[authority.root]
common_name = "NC Root"

[authority.inter]
issuer = "root"
common_name = "NC Intermediate"
name_constraints = { permitted = [".cluster.local", "10.0.0.0/8", "@example.test"], excluded = ["bad.cluster.local"] }

[certificate.api]
issuer = "inter"
common_name = "api"
hosts = ["api.default.svc.cluster.local", "10.32.0.1", "ops@example.test"]
"""


def test_name_constraints_become_a_critical_extension_and_openssl_accepts_a_leaf_inside(make_applied) -> None:
    repo = applied(make_applied, NC_PKI)
    text = openssl("x509", "-in", repo.cert_path("inter"), "-noout", "-text").output
    m = re.search(r"X509v3 Name Constraints: critical\n(.*?)\n\s+X509v3", text + "\n    X509v3", flags=re.S)
    assert m, text
    block = m.group(1)
    # ".cluster.local" is encoded in RFC 5280 form, without the leading dot (the plan notes that)
    assert re.search(r"Permitted:\s+DNS:cluster\.local\s+IP:10\.0\.0\.0/255\.0\.0\.0\s+email:example\.test", block), block
    assert re.search(r"Excluded:\s+DNS:bad\.cluster\.local", block), block
    assert "Name Constraints" not in openssl("x509", "-in", repo.cert_path("api"), "-noout", "-text").output
    p = openssl("verify", "-CAfile", repo.cert_path("root"), "-untrusted", repo.cert_path("inter"),
                repo.cert_path("api"), expect=None)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("host, why", [
    ("api.example.com", "is not within permitted"),
    ("192.168.1.10", "is not within permitted"),
    ("x.bad.cluster.local", "matches excluded"),
    ("ops@example.org", "is not within permitted"),
])
def test_host_outside_name_constraints_is_a_plan_error_before_anything_is_signed(
        tmp_path: Path, host: str, why: str) -> None:
    toml = NC_PKI + f"""
[certificate.web]
issuer = "inter"
common_name = "web"
hosts = ["web.cluster.local", "{host}"]
"""
    repo = Repo.create(tmp_path / "repo", toml)
    line = repo.line_of("hosts = ", after="[certificate.web]")
    r = repo.pki("plan", expect=1)
    assert re.match(rf"(?:Error: )?pki\.toml:{line}: certificate\.web\.hosts: host '{re.escape(host)}' is outside the "
                    rf"name constraints of authority\.inter \({why}", r.stderr), r
    r = repo.apply(expect=1)
    assert "certificate.web" in r.stderr and host in r.stderr
    assert not repo.state.exists() or not list(repo.state.rglob("*.pem")), "nothing may be signed"
    assert repo.key_files() == set(), "no key may be made"


@pytest.mark.parametrize("constraint, host", [
    ("@example.test", "alice@sub.example.test"),
    ("uri:example.test", "spiffe://sub.example.test/workload"),
])
def test_email_and_uri_constraints_without_a_dot_allow_that_host_only(tmp_path: Path, constraint: str,
                                                                      host: str) -> None:
    toml = f"""\
[authority.root]
common_name = "Root"
name_constraints = {{ permitted = ["{constraint}"] }}

[certificate.leaf]
issuer = "root"
common_name = "leaf"
hosts = ["{host}"]
"""
    repo = Repo.create(tmp_path / "repo", toml)
    r = repo.pki("plan", expect=None)
    if r.returncode == 0:
        # show what the plan let through: openssl refuses the certificate it makes
        repo.apply()
        p = openssl("verify", "-CAfile", repo.cert_path("root"), repo.cert_path("leaf"), expect=None)
        assert p.returncode == 0, f"pki plan accepted {host!r} under {constraint!r}, but openssl: {p.stdout}{p.stderr}"
    assert r.returncode == 1 and "outside the name constraints" in r.stderr, r


# -- 7. expiry in CI -----------------------------------------------------------------------------

def test_plan_at_with_detailed_exitcode_and_list_show_what_needs_renewal(make_applied) -> None:
    toml = BASE_PKI + """
[certificate.short]
issuer = "inter"
common_name = "short"
validity = "40d"
renew_before = "15d"
"""
    repo = applied(make_applied, toml)
    # the CI job: nothing due today, the short-lived certificate due in 30 days
    repo.pki("plan", "--detailed-exitcode", expect=0)
    r = repo.pki("plan", "--at", "+30d", "--detailed-exitcode", expect=2)
    assert "certificate.short will be renewed" in r.stdout
    plan = repo.plan_json("--at", "+30d")
    renewals = [c for c in plan["changes"] if c["action"] == "renew"]
    assert [c["name"] for c in renewals] == ["short"], plan
    assert plan["summary"].get("renew") == 1

    rows = {r["name"]: r for r in repo.pki("list", "--format", "json").json()}
    assert rows["short"]["status"] == "ok" and rows["short"]["days_left"] in (39, 40)
    rows = {r["name"]: r for r in repo.pki("list", "--format", "json", "--at", "+30d").json()}
    assert rows["short"]["status"] == "renew_due" and rows["short"]["days_left"] in (9, 10)
    assert rows["server"]["status"] == "ok"
    rows = {r["name"]: r for r in repo.pki("list", "--format", "json", "--at", "+41d").json()}
    assert rows["short"]["status"] == "expired" and rows["short"]["days_left"] < 0

    text = repo.pki("list", "--at", "+30d").stdout
    header = text.splitlines()[0]
    assert "DAYS_LEFT" in header and "STATUS" in header
    short_line = next(line for line in text.splitlines() if line.startswith("short "))
    assert "renew_due" in short_line and re.search(r"\s(9|10)\s", short_line), short_line

    # the pipeline's apply renews it (with a new key: rotate_key defaults to true for certificates)
    old = repo.cert("short")
    repo.apply("--at", "+30d")
    new = repo.cert("short")
    assert new.serial_number != old.serial_number and spki_der(new) != spki_der(old)
    assert format(repo.cert("server").serial_number, "x") == rows["server"]["serial"], "only the due one renews"
    repo.pki("plan", "--detailed-exitcode", expect=0)
