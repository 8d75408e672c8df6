"""pki.toml → Desired: every mistake as ``pki.toml:LINE: where: what`` with exit 1, and how a valid file resolves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pkiascode.config import find_line, load_config
from pkiascode.errors import ConfigError
from pkiascode.keytypes import KeyType
from pkiascode.model import Kind, Revocation

from helpers import run_main, run_pki
from planner_fakes import issues, load, options_for


def write(tmp_path: Path, text: str, name: str = "pki.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    """Every error load_config reports for ``text``, as the user sees it."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, options_for=options_for, display_name="pki.toml")
    return [str(x) for x in getattr(e.value, "all_errors", [e.value])]


ROOT = """
[authority.root]
common_name = "Root"
"""

# Each case: pki.toml text, and the exact error line(s) a user sees.
CASES = {
    "unknown key, did you mean": ("""
        [authority.root]
        common_name = "Root"

        [certificate.web]
        issuer = "root"
        hots = ["a.example"]
        """, ["pki.toml:6: certificate.web: unknown key 'hots' (did you mean 'hosts'?)"]),
    "unknown top-level key": ("""
        [authority.root]
        common_name = "Root"
        [defaults]
        key = "rsa-2048"
        [defualts]
        """, ["pki.toml:5: unknown key 'defualts' (did you mean 'defaults'?)"]),
    "unknown key in defaults": ("""
        [defaults]
        key = "ecdsa-p256"
        validty = "90d"
        """, ["pki.toml:3: defaults: unknown key 'validty' (did you mean 'validity'?)"]),
    "wrong type: number for a duration": ("""
        [authority.root]
        common_name = "Root"
        validity = 10
        """, ["pki.toml:3: authority.root.validity: validity must be a string, not the number 10"]),
    "wrong type: string for a bool": ("""
        [authority.root]
        common_name = "Root"
        rotate_key = "yes"
        """, ["pki.toml:3: authority.root.rotate_key: rotate_key must be true or false, not the string 'yes'"]),
    "wrong type: bool for an int": ("""
        [authority.root]
        common_name = "Root"
        path_length = true
        """, ["pki.toml:3: authority.root.path_length: path_length must be an integer, not true/false"]),
    "wrong type: string for a list": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        hosts = "a.example"
        """, ["pki.toml:5: certificate.web.hosts: hosts must be a list, not the string 'a.example'"]),
    "list of non-strings": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        hosts = ["a.example", 1]
        """, ["pki.toml:5: certificate.web.hosts: hosts must be a list of strings"]),
    "unknown issuer": ("""
        [authority.root]
        common_name = "Root"

        [certificate.web]
        issuer = "rot"
        """, ["pki.toml:5: certificate.web.issuer: unknown issuer 'rot' (did you mean 'root'?)"]),
    "issuer is a certificate": ("""
        [authority.root]
        common_name = "Root"
        [certificate.a]
        issuer = "root"
        [certificate.b]
        issuer = "a"
        """, ["pki.toml:6: certificate.b.issuer: issuer 'a' is a certificate, not an authority"]),
    "certificate without issuer": ("""
        [certificate.web]
        common_name = "web"
        """, ['pki.toml:1: certificate.web: missing issuer = "<authority>"']),
    "authority without common_name": ("""
        [authority.root]
        validity = "1y"
        """, ['pki.toml:1: authority.root: missing common_name = "..."']),
    "issuing itself": ("""
        [authority.root]
        common_name = "Root"
        issuer = "root"
        """, ["pki.toml:3: authority.root.issuer: an entry cannot issue itself; leave issuer out for a "
              "self-signed root"]),
    "issuer cycle": ("""
        [authority.a]
        common_name = "A"
        issuer = "b"

        [authority.b]
        common_name = "B"
        issuer = "a"
        """, ["pki.toml:3: authority.a.issuer: issuer cycle: a → b → a"]),
    "duplicate name across kinds": ("""
        [authority.web]
        common_name = "Web CA"

        [certificate.web]
        issuer = "web"
        """, ["pki.toml:4: certificate.web: name 'web' is used twice (also authority.web); names are unique "
              "across authorities and certificates"]),
    "bad duration": ("""
        [authority.root]
        common_name = "Root"
        validity = "1 year"
        """, ["pki.toml:3: authority.root.validity: bad duration '1 year': use an integer and a unit "
              "(s m h d w y), e.g. \"90d\" or \"1y30d\""]),
    "zero duration": ("""
        [defaults]
        renew_before = "0d"
        """, ["pki.toml:2: defaults.renew_before: duration '0d' must be positive"]),
    "bad host": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        hosts = ["ok.example",
                 "not ok.example"]
        """, ["pki.toml:5: certificate.web.hosts: bad host 'not ok.example': not an IP address, email, URI or "
              "DNS name"]),
    "bad usage, did you mean": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        usages = ["server auth", "clientauth"]
        """, ["pki.toml:5: certificate.web.usages: unknown usage 'clientauth' (did you mean 'client auth'?)"]),
    "bad usage in a profile": ("""
        [profile.k8s]
        usages = ["sining"]
        """, ["pki.toml:2: profile.k8s.usages: unknown usage 'sining' (did you mean 'signing'?)"]),
    "unknown backend on an entry": ("""
        [backend.files]
        plugin = "local"

        [authority.root]
        common_name = "Root"
        backend = "file"
        """, ["pki.toml:6: authority.root.backend: unknown backend 'file' (did you mean 'files'?); define it as "
              "[backend.file] (known: files)"]),  # (files is the store over .pki/keys: no built-in local beside it)
    "backend plugin not installed": ("""
        [backend.x]
        plugin = "nosuch"
        """, ["pki.toml:2: backend.x.plugin: no backend plugin 'nosuch' is installed"]),
    "backend without plugin": ("""
        [backend.x]
        path = "keys"
        """, ['pki.toml:1: backend.x: missing plugin = "local" | "vault" | "pkcs11"']),
    "backend plugin outside the allow-list": ("""
        [pki]
        plugins = ["local"]
        [backend.v]
        plugin = "vault"
        """, ["pki.toml:4: backend.v.plugin: plugin 'vault' is not in [pki] plugins = ['local']"]),
    "unknown backend option": ("""
        [backend.files]
        plugin = "local"
        pth = ".pki/k"
        """, ["pki.toml:3: backend.files: unknown key 'pth' (did you mean 'path'?)"]),
    "unknown key type": ("""
        [authority.root]
        common_name = "Root"
        key = "rsa4096"
        """, ["pki.toml:3: authority.root.key: unknown key type 'rsa4096' (did you mean 'rsa-4096'?); use one of "
              "rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384, ed25519"]),
    "renew_before not shorter than validity": ("""
        [authority.root]
        common_name = "Root"
        validity = "30d"
        renew_before = "30d"
        """, ["pki.toml:4: authority.root.renew_before: renew_before (30d) must be shorter than validity, or every "
              "plan would renew it"]),
    "inherited renew_before not shorter than validity": ("""
        [defaults]
        renew_before = "60d"

        [authority.root]
        common_name = "Root"
        validity = "30d"
        """, ["pki.toml:4: authority.root: renew_before (inherited) must be shorter than validity, or every plan "
              "would renew it"]),
    "invalid name": ("""
        [authority.Root]
        common_name = "Root"
        """, ["pki.toml:1: authority.Root: invalid name 'Root': use lowercase letters, digits, '.', '_' and '-', "
              "starting with a letter or digit"]),
    "invalid quoted name": ("""
        [authority."my root"]
        common_name = "Root"
        """, ["pki.toml:1: authority.\"my root\": invalid name 'my root': use lowercase letters, digits, '.', '_' "
              "and '-', starting with a letter or digit"]),
    "path_length exceeded": ("""
        [authority.root]
        common_name = "Root"
        path_length = 0

        [authority.inter]
        issuer = "root"
        common_name = "Inter"
        """, ["pki.toml:6: authority.inter.issuer: authority.root has path_length 0, which allows no "
              "authorities below it; authority.inter would exceed it"]),
    "path_length exceeded two levels down": ("""
        [authority.root]
        common_name = "Root"
        path_length = 1
        [authority.a]
        issuer = "root"
        common_name = "A"
        [authority.b]
        issuer = "a"
        common_name = "B"
        """, ["pki.toml:8: authority.b.issuer: authority.root has path_length 1, which allows 1 authority below it; "
              "authority.b would exceed it"]),
    "negative path_length": ("""
        [authority.root]
        common_name = "Root"
        path_length = -1
        """, ["pki.toml:3: authority.root.path_length: path_length must be 0 or more"]),
    "name constraints violated": ("""
        [authority.root]
        common_name = "Root"
        name_constraints = { permitted = [".cluster.local", "10.0.0.0/8"] }

        [certificate.api]
        issuer = "root"
        hosts = ["api.cluster.local", "10.32.0.1", "api.example.com"]
        """, ["pki.toml:7: certificate.api.hosts: host 'api.example.com' is outside the name constraints of "
              "authority.root (is not within permitted .cluster.local)"]),
    "name constraints violated by an ancestor's excluded list": ("""
        [authority.root]
        common_name = "Root"
        name_constraints = { excluded = ["192.168.0.0/16"] }
        [authority.inter]
        issuer = "root"
        common_name = "Inter"
        [certificate.api]
        issuer = "inter"
        hosts = ["192.168.1.1"]
        """, ["pki.toml:9: certificate.api.hosts: host '192.168.1.1' is outside the name constraints of "
              "authority.root (matches excluded '192.168.0.0/16')"]),
    "bad name constraint": ("""
        [authority.root]
        common_name = "Root"
        name_constraints = { permitted = ["10.0.0.1/8"] }
        """, ["pki.toml:3: authority.root.name_constraints: bad IP range '10.0.0.1/8': 10.0.0.1/8 has host bits set"]),
    "unknown profile": ("""
        [profile.server]
        usages = ["server auth"]
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        profile = "sever"
        """, ["pki.toml:7: certificate.web.profile: unknown profile 'sever' (did you mean 'server'?)"]),
    "revoked with a bad reason": ("""
        [authority.root]
        common_name = "Root"
        [certificate.old]
        issuer = "root"
        revoked = { reason = "keycompromise" }
        """, ["pki.toml:5: certificate.old.revoked: unknown revocation reason 'keycompromise' (did you mean "
              "'key_compromise'?); use one of unspecified, key_compromise, ca_compromise, affiliation_changed, "
              "superseded, cessation_of_operation, certificate_hold, privilege_withdrawn, aa_compromise"]),
    "revoked as a string": ("""
        [authority.root]
        common_name = "Root"
        revoked = "yes"
        """, ['pki.toml:3: authority.root.revoked: revoked must be true or a table like '
              '{ reason = "key_compromise" }']),
    "subject CN": ("""
        [defaults]
        subject = { O = "Example", CN = "x" }
        """, ["pki.toml:2: defaults.subject.CN: unknown subject attribute 'CN' (set common_name instead); use C, ST, "
              "L, O, OU"]),
    "subject country not two letters": ("""
        [defaults]
        subject = { C = "USA" }
        """, ["pki.toml:2: defaults.subject.C: country C must be a two-letter code, not 'USA'"]),
    "empty common_name": ("""
        [authority.root]
        common_name = " "
        """, ["pki.toml:2: authority.root.common_name: common_name must not be empty"]),
    "csr with a key": ("""
        [authority.root]
        common_name = "Root"
        [certificate.gw]
        issuer = "root"
        csr = "csrs/gw.csr"
        key = "rsa-2048"
        """, ["pki.toml:6: certificate.gw.key: key does not apply to an entry signed from a CSR: the requester "
              "keeps the key"]),
    "absolute state_dir": ("""
        [pki]
        state_dir = "/var/state"
        """, ["pki.toml:2: pki.state_dir: state_dir must be a relative path inside the repository"]),
    "bad crl_url": ("""
        [authority.root]
        common_name = "Root"
        crl_url = "ftp://crl.example.com/root.crl"
        """, ["pki.toml:3: authority.root.crl_url: crl_url must be an http(s):// or ldap:// URL, not "
              "'ftp://crl.example.com/root.crl'"]),
    "empty name_constraints": ("""
        [authority.root]
        common_name = "Root"
        name_constraints = { permitted = [] }
        """, ["pki.toml:3: authority.root.name_constraints: name_constraints needs permitted or excluded entries"]),
    "name_constraints on a certificate": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        name_constraints = { permitted = [".example.com"] }
        """, ["pki.toml:5: certificate.web: unknown key 'name_constraints'"]),
    "bad revocation date": ("""
        [authority.root]
        common_name = "Root"
        [certificate.old]
        issuer = "root"
        revoked = { reason = "superseded", date = "yesterday" }
        """, ["pki.toml:5: certificate.old.revoked: revocation date 'yesterday' is not an ISO date (YYYY-MM-DD)"]),
    "array of tables": ("""
        [authority.root]
        common_name = "Root"
        [[certificate.web]]
        issuer = "root"
        """, ["pki.toml:3: certificate.web: must be a table"]),
    "misspelt lint_ignore, did you mean": ("""
        [pki]
        lint_ignor = ["pkix.x"]
        """, ["pki.toml:2: pki: unknown key 'lint_ignor' (did you mean 'lint_ignore'?)"]),
    "lint_ignore not a list": ("""
        [authority.root]
        common_name = "Root"
        lint_ignore = "pkix.x"
        """, ["pki.toml:3: authority.root.lint_ignore: lint_ignore must be a list, not the string 'pkix.x'"]),
    "lint_ignore on a profile": ("""
        [profile.p]
        lint_ignore = ["pkix.x"]
        """, ["pki.toml:2: profile.p: unknown key 'lint_ignore'"]),
    "id too short": ("""
        [pki]
        id = "abc"
        """, ["pki.toml:2: pki.id: id must be 8 to 32 lowercase letters and digits (pki init writes one), not 'abc'"]),
    "id a number": ("""
        [pki]
        id = 12345678
        """, ["pki.toml:2: pki.id: id must be a string, not the number 12345678"]),
    "crl sign on a certificate": ("""
        [authority.root]
        common_name = "Root"
        [certificate.web]
        issuer = "root"
        usages = ["crl_sign"]
        """, ["pki.toml:5: certificate.web.usages: usage 'crl sign' is for authorities: a certificate (CA:FALSE) "
              "cannot have it"]),
    "TOML syntax error": ("""
        [authority.root]
        common_name = "Root"
        validity "1y"
        """, ["pki.toml:3: syntax: expected '=' after a key in a key/value pair"]),
    "TOML table declared twice": ("""
        [authority.root]
        common_name = "Root"

        [authority.root]
        common_name = "Root 2"
        """, ["pki.toml:4: syntax: cannot declare ('authority', 'root') twice"]),
}


@pytest.mark.parametrize("text, expected", list(CASES.values()), ids=list(CASES))
def test_config_error_message_and_line(tmp_path, text, expected):
    assert errors(tmp_path, text) == expected


def test_validate_lists_every_error_in_line_order_exit_1_no_traceback(tmp_path, capsys, monkeypatch):
    write(tmp_path, """
        [defaults]
        key = "ecdsa-p256"
        validty = "365d"

        [authority.root]
        common_name = "Root"

        [certificate.web]
        issuer = "roott"
        hosts = ["bad host", "10.0.0.1"]
        usages = ["server_auth", "sever auth"]
        """)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "validate")
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "pki.toml:3: defaults: unknown key 'validty' (did you mean 'validity'?)",
        "pki.toml:9: certificate.web.issuer: unknown issuer 'roott' (did you mean 'root'?)",
        "pki.toml:10: certificate.web.hosts: bad host 'bad host': not an IP address, email, URI or DNS name",
        "pki.toml:11: certificate.web.usages: unknown usage 'sever auth' (did you mean 'server auth'?)",
    ]


def test_invalid_config_writes_nothing(tmp_path, capsys, monkeypatch):
    write(tmp_path, """
        [authority.root]
        common_name = "Root"
        validity = "10 years"
        """)
    monkeypatch.chdir(tmp_path)
    for args in (["validate"], ["plan"], ["plan", "--format", "json"], ["apply", "--auto-approve"]):
        code, out, err = run_main(capsys, *args)
        assert code == 1, args
        assert "Traceback" not in err
    # the inventory can still be listed (here: nothing yet), with a word about pki.toml
    code, out, err = run_main(capsys, "list")
    assert code == 0 and "Nothing in state yet" in out
    assert "pki.toml:3:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki.toml"]


def test_plan_shows_the_first_error_and_counts_the_rest(tmp_path, capsys, monkeypatch):
    write(tmp_path, """
        [authority.root]
        common_name = "Root"
        validity = "10 years"
        key = "rsa"
        """)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "plan")
    assert (code, out) == (1, "")
    assert err == ("pki.toml:3: authority.root.validity: bad duration '10 years': use an integer and a "
                   "unit (s m h d w y), e.g. \"90d\" or \"1y30d\" (and 1 more; `pki validate` lists them all)\n")


def test_validate_of_a_valid_file(tmp_path, capsys, monkeypatch):
    write(tmp_path, """
        [backend.files]
        plugin = "local"
        path = ".pki/files"

        [authority.root]
        common_name = "Root"
        backend = "files"

        [certificate.a]
        issuer = "root"

        [certificate.b]
        issuer = "root"
        """)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "validate")
    assert (code, err) == (0, "")
    assert out == "pki.toml is valid: 1 authority, 2 certificates, backends: files, local\n"
    # validate writes nothing
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["pki.toml"]


def test_config_path_and_directory_options(tmp_path, capsys, monkeypatch):
    write(tmp_path, """
        [authority.root]
        common_name = "Root"
        key = "ecdsa-p521"
        """, name="sub/other.toml")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "--config", "sub/other.toml", "validate")
    assert code == 1
    assert err == ("sub/other.toml:3: authority.root.key: unknown key type 'ecdsa-p521' (did you mean "
                   "'ecdsa-p256'?); use one of rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384, ed25519\n")
    code, _, err = run_main(capsys, "-C", str(tmp_path / "sub"), "--config", "other.toml", "validate")
    assert code == 1 and err.startswith("other.toml:3: authority.root.key: ")


def test_missing_config_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "validate")
    assert code == 1
    assert err == f"pki.toml: not found in {tmp_path.resolve()} (run `pki init` to make one, or pass --config FILE)\n"


def test_validate_in_a_subprocess_exit_1_and_no_traceback(tmp_path):
    write(tmp_path, """
        [authority.root]
        common_name = "Root"
        issuer = "nobody"
        """)
    r = run_pki(tmp_path, "validate", timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == "pki.toml:3: authority.root.issuer: unknown issuer 'nobody'\n"


@pytest.mark.parametrize("text, expected", [
    ('[certificates.web]\nissuer = "root"\n',
     "pki.toml:1: unknown key 'certificates' (did you mean 'certificate'?)"),
    ('[authority.root]\ncommon_name = "Root"\nsubjet.O = "Org"\n',
     "pki.toml:3: authority.root: unknown key 'subjet' (did you mean 'subject'?)"),
])
def test_unknown_key_only_used_as_a_table_prefix_still_has_its_line(tmp_path, text, expected):
    assert errors(tmp_path, text) == [expected]


def test_unknown_default_backend_is_reported_once(tmp_path):
    assert errors(tmp_path, """
        [defaults]
        backend = "fles"

        [authority.root]
        common_name = "Root"

        [certificate.a]
        issuer = "root"
        """) == ["pki.toml:2: defaults.backend: unknown backend 'fles'; define it as [backend.fles] (known: local)"]


def test_name_with_a_trailing_newline_is_invalid():
    found = issues(ROOT + '[certificate."web\\n"]\nissuer = "root"\n')
    assert [p for p, _ in found] == [("certificate", "web\n")]


@pytest.mark.parametrize("validity", ["9000y", "99999999999999999999y"])
def test_validity_beyond_what_a_certificate_can_hold_is_a_config_error(validity):
    found = issues(f'[authority.root]\ncommon_name = "Root"\nvalidity = "{validity}"\n')
    assert [p for p, _ in found] == [("authority", "root", "validity")]


def test_a_bare_ip_in_name_constraints_is_rejected_or_means_a_single_address():
    text = """
[authority.root]
common_name = "Root"
name_constraints = { permitted = ["10.0.0.1"] }

[certificate.web]
issuer = "root"
hosts = ["192.168.1.1"]
"""
    found = issues(text)
    assert found and found[0][0][:2] in (("authority", "root"), ("certificate", "web"))


# --- resolving a valid file -------------------------------------------------------------------

def test_pki_id_and_lint_ignore():
    d = load("""
[pki]
id = "k3x9q2m7ab"
lint_ignore = ["pkix.b", "pkix.a", "pkix.b"]

[authority.root]
common_name = "Root"
lint_ignore = ["pkix.c"]

[certificate.web]
issuer = "root"
""")
    assert d.settings.id == "k3x9q2m7ab"
    assert d.settings.lint_ignore == ("pkix.b", "pkix.a")  # in the file's order, once each
    assert d.entries["root"].lint_ignore == ("pkix.c",)
    assert d.entries["web"].lint_ignore == ()
    plain = load(ROOT)
    assert (plain.settings.id, plain.settings.lint_ignore) == (None, ())


def test_lint_ignore_is_not_part_of_the_spec():
    a = load(ROOT + '[certificate.web]\nissuer = "root"\n')
    b = load(ROOT + '[certificate.web]\nissuer = "root"\nlint_ignore = ["pkix.x"]\n')
    assert a.spec_digests == b.spec_digests


def test_usages_a_key_agreement_allows():
    d = load(ROOT + '[certificate.kx]\nissuer = "root"\nusages = ["key agreement", "encipher only"]\n')
    assert d.entries["kx"].usages == ("encipher only", "key agreement")



def test_validity_and_renew_before_precedence_entry_over_profile_over_defaults():
    d = load("""
[defaults]
validity = "100d"
renew_before = "10d"

[profile.p]
validity = "200d"
renew_before = "20d"

[authority.root]
common_name = "Root"

[certificate.from-defaults]
issuer = "root"

[certificate.from-profile]
issuer = "root"
profile = "p"

[certificate.own]
issuer = "root"
profile = "p"
validity = "300d"
renew_before = "30d"
""")
    e = d.entries
    day = 86400
    assert (e["root"].validity, e["root"].renew_before) == (100 * day, 10 * day)
    assert (e["from-defaults"].validity, e["from-defaults"].renew_before) == (100 * day, 10 * day)
    assert (e["from-profile"].validity, e["from-profile"].renew_before) == (200 * day, 20 * day)
    assert (e["own"].validity, e["own"].renew_before) == (300 * day, 30 * day)
    assert e["own"].spec()["validity"] == "300d"
    assert e["from-profile"].spec()["profile"] == "p"


def test_built_in_defaults():
    d = load("""
[authority.root]
common_name = "Root"
[authority.inter]
issuer = "root"
common_name = "Inter"
[certificate.web]
issuer = "inter"
[certificate.short]
issuer = "inter"
validity = "24h"
""")
    e = d.entries
    day = 86400
    assert e["root"].validity == 3650 * day
    assert e["inter"].validity == 5 * 365 * day
    assert e["web"].validity == 365 * day
    assert e["web"].renew_before == 30 * day
    assert e["short"].renew_before == 8 * 3600  # a third of a short validity
    assert e["root"].crl_validity == 7 * day
    assert all(x.key is KeyType.ECDSA_P256 for x in e.values())
    assert all(x.backend == "local" for x in e.values())
    assert e["web"].common_name == "web"  # the name when common_name is not set
    assert (e["root"].rotate_key, e["root"].exportable) == (False, False)
    assert (e["web"].rotate_key, e["web"].exportable) == (True, True)
    assert e["root"].usages == ("cert sign", "crl sign", "digital signature")
    assert e["root"].is_root and not e["inter"].is_root


def test_the_implicit_local_backend():
    d = load(ROOT)
    local = d.stores["local"]
    assert (local.plugin, local.implicit, local.settings_dict()) == ("local", True, {"path": ".pki/keys"})
    d2 = load('[backend.local]\nplugin = "local"\npath = "keys"\n' + ROOT)
    assert d2.stores["local"].implicit is False and d2.stores["local"].settings_dict()["path"] == "keys"
    d3 = load('[pki]\nplugins = ["pkcs11"]\n[backend.hsm]\nplugin = "pkcs11"\n[defaults]\nbackend = "hsm"\n' + ROOT)
    assert set(d3.stores) == {"hsm"}


@pytest.mark.parametrize("key, usages", [
    ("ecdsa-p256", ("client auth", "digital signature", "server auth")),
    ("ed25519", ("client auth", "digital signature", "server auth")),
    ("rsa-2048", ("client auth", "digital signature", "key encipherment", "server auth")),
])
def test_default_usages_depend_on_the_key(key, usages):
    d = load(ROOT + f'[certificate.web]\nissuer = "root"\nkey = "{key}"\n')
    assert d.entries["web"].usages == usages
    assert d.entries["web"].key is KeyType(key)


def test_usages_from_profile_entry_and_underscored_spellings():
    d = load(ROOT + """
[profile.k8s]
usages = ["signing", "key_encipherment", "server_auth", "Client Auth"]

[certificate.a]
issuer = "root"
profile = "k8s"

[certificate.b]
issuer = "root"
profile = "k8s"
usages = ["code_signing", "digital signature", "signing"]
""")
    assert d.entries["a"].usages == ("client auth", "digital signature", "key encipherment", "server auth")
    assert d.entries["b"].usages == ("code signing", "digital signature")


def test_subject_merging_and_removing_an_inherited_attribute():
    d = load("""
[defaults]
subject = { C = "US", ST = "Oregon", L = "Portland", O = "Example" }

[authority.root]
common_name = "Root"

[certificate.k]
issuer = "root"
common_name = "kubernetes"
subject = { O = "Kubernetes", L = "", OU = "ops" }
""")
    assert d.entries["root"].subject_text() == "C=US, ST=Oregon, L=Portland, O=Example, CN=Root"
    assert d.entries["k"].subject == (("C", "US"), ("ST", "Oregon"), ("O", "Kubernetes"), ("OU", "ops"))
    assert d.entries["k"].subject_text() == "C=US, ST=Oregon, O=Kubernetes, OU=ops, CN=kubernetes"


def test_rotate_key_can_be_set_either_way():
    d = load("""
[authority.root]
common_name = "Root"
rotate_key = true
[certificate.web]
issuer = "root"
rotate_key = false
""")
    assert d.entries["root"].rotate_key is True
    assert d.entries["web"].rotate_key is False


def test_hosts_are_classified_deduplicated_and_kept_in_order():
    d = load(ROOT + """
[certificate.web]
issuer = "root"
hosts = ["10.32.0.1", "Kubernetes.Default", "*.apps.example.com", "admin@example.com",
         "spiffe://cluster.local/ns/x", "::1", "kubernetes.default", "10.32.0.1"]
""")
    assert d.entries["web"].hosts == (
        ("ip", "10.32.0.1"), ("dns", "kubernetes.default"), ("dns", "*.apps.example.com"),
        ("email", "admin@example.com"), ("uri", "spiffe://cluster.local/ns/x"), ("ip", "::1"),
    )


def test_concatenated_durations():
    d = load('[authority.root]\ncommon_name = "Root"\nvalidity = "1y30d"\nrenew_before = "2w12h"\n')
    assert d.entries["root"].validity == 395 * 86400
    assert d.entries["root"].renew_before == 14 * 86400 + 12 * 3600
    assert d.entries["root"].spec()["validity"] == "1y30d"


def test_revocations_and_crl_settings():
    d = load("""
[defaults]
crl_validity = "3d"
[authority.root]
common_name = "Root"
crl_url = "http://crl.example.com/root.crl"
[authority.inter]
issuer = "root"
common_name = "Inter"
crl_validity = "1d"
[certificate.a]
issuer = "inter"
revoked = true
[certificate.b]
issuer = "inter"
revoked = { reason = "superseded", date = 2030-01-02 }
""")
    e = d.entries
    assert (e["root"].crl_validity, e["inter"].crl_validity) == (3 * 86400, 86400)
    assert e["inter"].issuer_crl_url == "http://crl.example.com/root.crl"
    assert e["inter"].spec()["crl_distribution_point"] == "http://crl.example.com/root.crl"
    assert e["a"].issuer_crl_url is None
    assert e["a"].revoked == Revocation("unspecified", None)
    assert e["b"].revoked == Revocation("superseded", "2030-01-02")
    assert e["root"].revoked is None


def test_a_revoked_authority_revokes_its_descendants():
    d = load("""
[authority.root]
common_name = "Root"
[authority.inter]
issuer = "root"
common_name = "Inter"
revoked = { reason = "key_compromise" }
[certificate.a]
issuer = "inter"
[certificate.b]
issuer = "inter"
revoked = { reason = "superseded" }
""")
    assert d.entries["a"].revoked == Revocation("ca_compromise", None)
    assert d.entries["b"].revoked == Revocation("superseded", None)


def test_parents_come_before_children_whatever_the_file_order():
    d = load("""
[certificate.leaf]
issuer = "c"
[authority.c]
issuer = "b"
common_name = "C"
[certificate.other]
issuer = "a"
[authority.b]
issuer = "a"
common_name = "B"
[authority.a]
common_name = "A"
""")
    order = list(d.entries)
    for e in d.entries.values():
        if e.issuer:
            assert order.index(e.issuer) < order.index(e.name)
    assert [d.entries[n].kind for n in order].count(Kind.AUTHORITY) == 3


SPEC_A = """
[defaults]
subject = { O = "Example", C = "US" }

[authority.root]
common_name = "Root"

[certificate.web]
issuer = "root"
hosts = ["a.example", "b.example"]
usages = ["server auth", "signing"]
"""
SPEC_B = """
# the same PKI, written differently
[certificate.web]
usages = ["digital_signature", "server_auth"]
hosts = ["a.example", "b.example"]
issuer = "root"

[authority.root]
common_name = "Root"

[defaults]
subject = { C = "US", O = "Example" }
"""


def test_spec_digests_are_stable_and_independent_of_how_the_file_is_written():
    a, b = load(SPEC_A), load(SPEC_B)
    assert a.spec_digests == b.spec_digests
    assert a.digest != b.digest  # the file's own digest does change
    assert load(SPEC_A).spec_digests == a.spec_digests
    c = load(SPEC_A.replace('"b.example"', '"c.example"'))
    assert c.spec_digests["root"] == a.spec_digests["root"]
    assert c.spec_digests["web"] != a.spec_digests["web"]
    assert a.entries["web"].spec() == {
        "issuer": "root", "subject": "C=US, O=Example, CN=web", "validity": "1y",
        "usages": ["digital signature", "server auth"], "hosts": ["a.example", "b.example"], "profile": None,
        "crl_distribution_point": None,
    }


def test_renew_before_and_backend_are_not_part_of_the_spec():
    a = load(SPEC_A)
    b = load(SPEC_A.replace('usages = ["server auth", "signing"]',
                            'usages = ["server auth", "signing"]\nrenew_before = "7d"\nrotate_key = false'))
    assert a.spec_digests == b.spec_digests


# --- find_line ----------------------------------------------------------------------------------

def test_find_line_handles_dotted_and_quoted_keys():
    text = textwrap.dedent("""\
        [pki]
        commit = false

        [certificate]
        web.issuer = "root"

        [certificate."my.host"]   # comment
        hosts = ["x"]
        subject.O = "Org"
        """)
    assert find_line(text, ("certificate", "web", "issuer")) == 5
    assert find_line(text, ("certificate", "my.host", "hosts")) == 8
    assert find_line(text, ("certificate", "my.host", "subject", "O")) == 9
    assert find_line(text, ("certificate", "my.host", "usages")) == 7
    assert find_line(text, ("pki", "commit")) == 2
    assert find_line(text, ("defaults",)) is None


# --- a large pki.toml ---------------------------------------------------------------------------

def _large_pki_toml(n: int, *, mistake: bool = False) -> str:
    parts = ['[defaults]\nkey = "ecdsa-p256"\n\n[authority.root]\ncommon_name = "Root"\n']
    parts += [f'[certificate.leaf-{i:04d}]\nissuer = "root"\nhosts = ["leaf-{i}.example", "10.1.{i // 250}.{i % 250}"]\n'
              for i in range(n)]
    if mistake:
        parts.append('[certificate.bad]\nissuer = "root"\nhosts = ["not a host"]\n')
    text = "\n".join(parts)
    assert len(text) >= 64 * 1024
    return text


def test_a_mistake_in_a_large_pki_toml_is_reported_as_always(tmp_path):
    from helpers import Pki, new_repo

    repo = new_repo(tmp_path / "repo", _large_pki_toml(1100, mistake=True))
    r = Pki(repo)("apply", "--auto-approve")
    assert r.returncode == 1
    line = (repo / "pki.toml").read_text().splitlines().index('hosts = ["not a host"]') + 1
    assert r.stderr.strip() == (f"pki.toml:{line}: certificate.bad.hosts: bad host 'not a host': not an IP "
                                "address, email, URI or DNS name")
    assert not (repo / "state").exists()


def test_lines_of_many_mistakes_are_found_in_one_reading(tmp_path, monkeypatch):
    """Every mistake gets its line, and the file is read for lines once, not once per mistake
    (3,000 mistakes took half a minute): counted, not timed."""
    from pkiascode import config

    n = 300
    text = ROOT + "".join(f'[certificate.c{i}]\nissuer = "root"\nhosts = ["bad host {i}"]\n' for i in range(n))
    path = write(tmp_path, text)
    calls = []
    split = config._split_key
    monkeypatch.setattr(config, "_split_key", lambda dotted: calls.append(dotted) or split(dotted))
    with pytest.raises(ConfigError) as e:
        load_config(path, options_for=options_for, display_name="pki.toml")
    found = [str(x) for x in e.value.all_errors]
    assert found == [f"pki.toml:{5 + 3 * i}: certificate.c{i}.hosts: bad host 'bad host {i}': not an IP address, "
                     "email, URI or DNS name" for i in range(n)]
    assert len(calls) <= len(text.splitlines())


def test_suggestions_among_the_files_own_names_stop_after_the_first_mistakes(tmp_path, monkeypatch):
    """Each suggestion compares a word with every name the file defines: thousands of unknown issuers
    among thousands of authorities took minutes. The first 20 mistakes get one; counted, not timed."""
    from pkiascode import config

    n = 200
    text = "".join(f'[authority.auth-{i}]\ncommon_name = "A{i}"\n' for i in range(n))
    text += "".join(f'[certificate.c{i}]\nissuer = "auth-x{i}"\n' for i in range(n))
    path = write(tmp_path, text)
    calls = []
    real = config.did_you_mean
    monkeypatch.setattr(config, "did_you_mean", lambda word, choices: calls.append(word) or real(word, choices))
    with pytest.raises(ConfigError) as e:
        load_config(path, options_for=options_for, display_name="pki.toml")
    found = [str(x) for x in e.value.all_errors]
    assert len(found) == n
    assert found[0] == f"pki.toml:{2 * n + 2}: certificate.c0.issuer: unknown issuer 'auth-x0' (did you mean 'auth-0'?)"
    assert found[-1] == f"pki.toml:{4 * n}: certificate.c{n - 1}.issuer: unknown issuer 'auth-x{n - 1}'"
    assert len(calls) == 20
