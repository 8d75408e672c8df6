"""Threat: pki.toml is written by whoever opens a pull request (issue 10.8).

Every value that apply would refuse (or that would reach a path, a certificate or a terminal in a
form nobody reviewed) is refused by ``pki validate``, ``pki plan`` and ``pki apply`` alike, as one
line ``pki.toml:LINE: where: what`` with exit code 1, and nothing is written. Before the fix, each
of these passed validate and plan and failed in apply with "unexpected ..." (or was issued as
written: a country of digits, a certificate with an ESC in its name, a state directory with a
newline that git's input took as a command).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from helpers import git, head, new_repo, run_main, run_pki

ROOT = '[authority.root]\ncommon_name = "Root"\n'
LEAF = ROOT + '[certificate.w]\nissuer = "root"\n'


def leaf(line: str) -> str:
    return LEAF + line + "\n"


def root(line: str) -> str:
    return ROOT + line + "\n"


def host(value: str) -> str:
    return leaf(f'hosts = ["{value}"]')


# case: (pki.toml, the error line exactly, or a regex for messages made in pkiascode.names)
CASES: dict[str, tuple[str, str | re.Pattern[str]]] = {
    # RFC 5280 upper bounds; cryptography counts the common name in UTF-8 bytes
    "common name of 65 characters": (
        leaf(f'common_name = "{"a" * 65}"'),
        "pki.toml:5: certificate.w.common_name: common_name is 65 bytes long (UTF-8); X.509 allows at most 64 "
        "(RFC 5280)"),
    "common name of 40 characters, 80 bytes": (
        leaf(f'common_name = "{"é" * 40}"'),
        "pki.toml:5: certificate.w.common_name: common_name is 80 bytes long (UTF-8); X.509 allows at most 64 "
        "(RFC 5280)"),
    "ST over 128": (
        root(f'subject = {{ ST = "{"s" * 129}" }}'),
        "pki.toml:3: authority.root.subject: subject ST is 129 characters long; X.509 allows at most 128 (RFC 5280)"),
    "L over 128": (
        root(f'subject = {{ L = "{"l" * 129}" }}'),
        "pki.toml:3: authority.root.subject: subject L is 129 characters long; X.509 allows at most 128 (RFC 5280)"),
    "O over 64": (
        f'[defaults]\nsubject = {{ O = "{"o" * 65}" }}\n' + ROOT,
        "pki.toml:2: defaults.subject.O: subject O is 65 characters long; X.509 allows at most 64 (RFC 5280)"),
    "OU over 64": (
        leaf(f'subject = {{ OU = "{"u" * 65}" }}'),
        "pki.toml:5: certificate.w.subject: subject OU is 65 characters long; X.509 allows at most 64 (RFC 5280)"),
    "country of two letters, one not ASCII": (
        root('subject = { C = "ÜS" }'),
        "pki.toml:3: authority.root.subject: country C must be a two-letter code, not 'ÜS'"),
    "country of digits": (
        root('subject = { C = "12" }'),
        "pki.toml:3: authority.root.subject: country C must be a two-letter code, not '12'"),
    # hosts a certificate cannot hold
    "email with a non-ASCII mailbox": (
        host("ü@example.com"),
        "pki.toml:5: certificate.w.hosts: bad email address 'ü@example.com': before the last @ only ASCII "
        "letters, digits and !#$%&'*+/=?^_`{|}~.- (a certificate holds no quoted or internationalised mailbox)"),
    "email with two @": (
        host("a@b@example.com"),
        "pki.toml:5: certificate.w.hosts: bad email address 'a@b@example.com': before the last @ only ASCII "
        "letters, digits and !#$%&'*+/=?^_`{|}~.- (a certificate holds no quoted or internationalised mailbox)"),
    "URI with a non-ASCII host": (
        host("https://bücher.example/x"),
        re.compile(r"pki\.toml:5: certificate\.w\.hosts: bad URI 'https://bücher\.example/x'.*")),
    "URI with an unclosed IPv6 bracket": (
        host("https://[::1/x"),
        "pki.toml:5: certificate.w.hosts: bad URI 'https://[::1/x': an IP literal host without its closing ']'"),
    "URI with a port out of range": (
        host("https://example.com:99999/x"),
        "pki.toml:5: certificate.w.hosts: bad URI 'https://example.com:99999/x': Port out of range 0-65535"),
    "URI with a space": (
        host("https://example.com/a b"),
        "pki.toml:5: certificate.w.hosts: bad URI 'https://example.com/a b': ' ' is not allowed in a URI (RFC 3986); "
        "parsers disagree on what it means (percent-encode it in a path, never in the host)"),
    "unicode DNS name: refused, with its A-label": (
        host("bücher.example"),
        re.compile(r"pki\.toml:5: certificate\.w\.hosts: bad host 'bücher\.example'.*'xn--bcher-kva\.example'.*")),
    "IPv6 address with a zone": (
        host("fe80::1%eth0"),
        "pki.toml:5: certificate.w.hosts: bad host 'fe80::1%eth0': an IP address in a certificate has no zone (%...)"),
    "crl_url not ASCII": (
        root('crl_url = "http://bücher.example/root.crl"'),
        "pki.toml:3: authority.root.crl_url: crl_url must be an http(s):// or ldap:// URL, not "
        "'http://bücher.example/root.crl'"),
    "crl_url with an unclosed bracket": (
        root('crl_url = "http://[::1/root.crl"'),
        "pki.toml:3: authority.root.crl_url: crl_url must be an http(s):// or ldap:// URL, not "
        "'http://[::1/root.crl'"),
    "name constraint with spaces": (
        root('name_constraints = { permitted = [" example.com"] }'),
        "pki.toml:3: authority.root.name_constraints: bad name constraint ' example.com': surrounded by spaces"),
    "email constraint with a non-ASCII mailbox": (
        root('name_constraints = { permitted = ["ü@example.com"] }'),
        "pki.toml:3: authority.root.name_constraints: bad email constraint 'ü@example.com': before the last @ "
        "only ASCII letters, digits and !#$%&'*+/=?^_`{|}~.-"),
    # numbers and dates X.509 cannot hold
    "path_length beyond any integer type": (
        root("path_length = 99999999999999999999"),
        "pki.toml:3: authority.root.path_length: path_length 99999999999999999999 is more than 100, longer than "
        "any chain a verifier follows"),
    "path_length 101": (
        root("path_length = 101"),
        "pki.toml:3: authority.root.path_length: path_length 101 is more than 100, longer than any chain a "
        "verifier follows"),
    "a duration of 5,000 digits": (
        root(f'validity = "{"9" * 5000}d"'),
        "pki.toml:3: authority.root.validity: bad duration '999999999999'... (5001 characters): use an integer "
        'and a unit (s m h d w y), e.g. "90d" or "1y30d"'),
    "revocation date before 1950": (
        leaf("revoked = { date = 1949-12-31 }"),
        "pki.toml:5: certificate.w.revoked: revocation date 1949-12-31 is before 1950, which a CRL cannot hold "
        "(RFC 5280 UTCTime)"),
    "revocation date before 1950 in UTC": (
        leaf("revoked = { date = 1950-01-01T00:30:00+01:00 }"),
        "pki.toml:5: certificate.w.revoked: revocation date 1950-01-01T00:30:00+01:00 is before 1950, which a "
        "CRL cannot hold (RFC 5280 UTCTime)"),
    # names that become file names
    "entry name of 65 characters": (
        ROOT + f'[certificate.{"n" * 65}]\nissuer = "root"\n',
        f"pki.toml:3: certificate.{'n' * 65}: name nnnnnnnnnnnnnnnnnnnn... is 65 characters long; at most 64"),
    "backend name of 65 characters": (
        f'[backend.{"b" * 65}]\nplugin = "local"\npath = ".pki/b"\n' + ROOT,
        f"pki.toml:1: backend.{'b' * 65}: name bbbbbbbbbbbbbbbbbbbb... is 65 characters long; at most 64"),
    # the state directory
    "state_dir with a backslash": (
        '[pki]\nstate_dir = "a\\\\b"\n' + ROOT,
        "pki.toml:2: pki.state_dir: state_dir 'a\\\\b' must be a plain relative path: names of letters, digits, "
        "'.', '_' and '-', not starting with '.' or '-', joined by '/'"),
    "state_dir that git would read as an option": (
        '[pki]\nstate_dir = "-state"\n' + ROOT,
        "pki.toml:2: pki.state_dir: state_dir '-state' must be a plain relative path: names of letters, digits, "
        "'.', '_' and '-', not starting with '.' or '-', joined by '/'"),
    "state_dir that git would read as pathspec magic": (
        '[pki]\nstate_dir = ":(top)state"\n' + ROOT,
        "pki.toml:2: pki.state_dir: state_dir ':(top)state' must be a plain relative path: names of letters, "
        "digits, '.', '_' and '-', not starting with '.' or '-', joined by '/'"),
    "state_dir under a hidden directory": (
        '[pki]\nstate_dir = "x/.git"\n' + ROOT,
        "pki.toml:2: pki.state_dir: state_dir 'x/.git' must be a plain relative path: names of letters, digits, "
        "'.', '_' and '-', not starting with '.' or '-', joined by '/'"),
    # usages no certificate can have (issue 13.1)
    "cert sign on a certificate": (
        leaf('usages = ["cert sign", "digital signature"]'),
        "pki.toml:5: certificate.w.usages: usage 'cert sign' is for authorities: a certificate (CA:FALSE) "
        "cannot have it"),
    "encipher only without key agreement, in a profile": (
        '[profile.p]\nusages = ["encipher only", "digital signature"]\n' + ROOT,
        "pki.toml:2: profile.p.usages: usage 'encipher only' needs 'key agreement' (alone it leaves a key "
        "usage with no bit set)"),
    # pki.toml's new keys
    "[pki] id not of the id alphabet": (
        '[pki]\nid = "My-PKI"\n' + ROOT,
        "pki.toml:2: pki.id: id must be 8 to 32 lowercase letters and digits (pki init writes one), not 'My-PKI'"),
    "lint_ignore with something that is no finding id": (
        leaf('lint_ignore = ["pkix.ok", "rm -rf"]'),
        "pki.toml:5: certificate.w.lint_ignore: bad lint finding id 'rm -rf': write pkilint's id, like "
        "'pkix.invalid_domain_name_syntax'"),
    # a date that its offset takes past year 9999 in UTC: apply failed with "unexpected OverflowError" (review F10)
    "revocation date past 9999 in UTC": (
        leaf('revoked = { reason = "superseded", date = 9999-12-31T23:00:00-05:00 }'),
        "pki.toml:5: certificate.w.revoked: revocation date 9999-12-31T23:00:00-05:00 is after "
        "9999-12-31T23:59:59Z in UTC, which a CRL cannot hold (RFC 5280 GeneralizedTime)"),
    "revocation date before 1950 in UTC": (
        leaf('revoked = { reason = "superseded", date = 1950-01-01T00:30:00+01:00 }'),
        "pki.toml:5: certificate.w.revoked: revocation date 1950-01-01T00:30:00+01:00 is before 1950, which a "
        "CRL cannot hold (RFC 5280 UTCTime)"),
    # TOML that would exhaust the parser's recursion
    "arrays nested 5,000 deep": (
        ROOT + "[defaults]\nx = " + "[" * 5000 + "]" * 5000 + "\n",
        "pki.toml:4: syntax: inline arrays/tables are nested more than the allowed 400 levels"),
    "a key of 2,000 parts": (
        ROOT + "x" + ".x" * 2000 + " = 1\n",
        "pki.toml:3: syntax: key has more than the allowed 1000 parts"),
}

# Control characters: refused in every key and string, shown escaped (never raw) in the message.
CONTROL = {
    "ESC in a common name": (leaf(r'common_name = "a\u001b[31mred"'), "5: certificate.w.common_name: 'a\\x1b[31mred'"),
    "CR in a subject": (root(r'subject = { O = "Example\rEvil" }'), "3: authority.root.subject: 'Example\\rEvil'"),
    "LF in state_dir": ('[pki]\nstate_dir = "st\\nate"\n' + ROOT, "2: pki.state_dir: 'st\\nate'"),
    "DEL in a host": (host(r"a\u007f.example"), "5: certificate.w.hosts: 'a\\x7f.example'"),
    "C1 (NEL) in a profile name": ('[profile."p\\u0085"]\nvalidity = "1d"\n' + ROOT, "1: profile: name 'p\\x85'"),
    "bidi override in a common name": (leaf(r'common_name = "abc\u202etxt.exe"'),
                                       "5: certificate.w.common_name: 'abc\\u202etxt.exe'"),
    "NUL in a backend option": ('[backend.f]\nplugin = "local"\npath = ".pki/k\\u0000"\n' + ROOT,
                                "3: backend.f.path: '.pki/k\\x00'"),
    "ESC in an entry name": (ROOT + '[certificate."w\\u001b[2J"]\nissuer = "root"\n', "3: certificate: name 'w\\x1b[2J'"),
    "ESC in a crl_url": (root(r'crl_url = "http://a/\u001b]0;x\u0007"'), "3: authority.root.crl_url: 'http://a/\\x1b]0;x\\x07'"),
    "zero-width space in a common name": (leaf(r'common_name = "admin\u200b"'),
                                          "5: certificate.w.common_name: 'admin\\u200b'"),
    "BOM in a subject": (root(r'subject = { OU = "\ufeffops" }'), "3: authority.root.subject: '\\ufeffops'"),
    "TAB in a name constraint": (root(r'name_constraints = { excluded = ["a.example\t"] }'),
                                 "3: authority.root.name_constraints: 'a.example\\t'"),
}


def check_refused(repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                  expected: str | re.Pattern[str]) -> None:
    """validate, plan and apply: the same one line, exit 1, nothing written."""
    monkeypatch.chdir(repo)
    before = head(repo), listing(repo)
    for args in (["validate"], ["plan"], ["plan", "--format", "json"], ["apply", "--auto-approve"]):
        code, out, err = run_main(capsys, *args)
        assert (code, out) == (1, ""), (args, out, err)
        line = err.rstrip("\n")
        assert "\n" not in line and "Traceback" not in line, (args, err)
        if isinstance(expected, str):
            assert line == expected, args
        else:
            assert expected.fullmatch(line), (args, line)
    assert (head(repo), listing(repo)) == before


def listing(repo: Path) -> list[str]:
    """Every path in the work tree but .git, not following symlinks."""
    out = []
    for top, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d != ".git"]
        out += [os.path.relpath(os.path.join(top, n), repo) for n in dirs + files]
    return sorted(out)


@pytest.mark.parametrize("toml, expected", list(CASES.values()), ids=list(CASES))
def test_refused_before_apply(tmp_path, env, capsys, monkeypatch, toml, expected):
    repo = new_repo(tmp_path / "repo", toml)
    check_refused(repo, capsys, monkeypatch, expected)


@pytest.mark.parametrize("toml, shown", list(CONTROL.values()), ids=list(CONTROL))
def test_control_characters_are_refused_and_shown_escaped(tmp_path, env, capsys, monkeypatch, toml, shown):
    repo = new_repo(tmp_path / "repo", toml)
    monkeypatch.chdir(repo)
    code, out, err = run_main(capsys, "validate")
    assert (code, out) == (1, "")
    assert err.startswith(f"pki.toml:{shown}"), err
    assert "holds a control character" in err
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b\u202e\ufeff]", err)  # one newline ends the line
    check_refused(repo, capsys, monkeypatch, err.rstrip("\n"))


def chain(n: int) -> str:
    """n authorities, each issuing the next, written leaf end first (ordering them recursed once per level)."""
    tables = ['[authority.a0]\ncommon_name = "A0"\n']
    tables += [f'[authority.a{i}]\nissuer = "a{i - 1}"\ncommon_name = "A{i}"\n' for i in range(1, n)]
    return "".join(reversed(tables))


def test_a_chain_longer_than_a_verifier_follows_is_refused(tmp_path, env, capsys, monkeypatch):
    """1,500 authorities in a chain: a RecursionError before; now the first one too deep is named, once
    (and validation stays linear: each entry's ancestors are walked at most 101 deep)."""
    repo = new_repo(tmp_path / "repo", chain(1500))
    line = (repo / "pki.toml").read_text().splitlines().index('issuer = "a100"') + 1
    check_refused(repo, capsys, monkeypatch,
                  f"pki.toml:{line}: authority.a101.issuer: authority.a101 is 101 authorities below its root; at most "
                  "100, longer than any chain a verifier follows")


def test_a_chain_of_100_below_the_root_is_valid(tmp_path, env, capsys, monkeypatch):
    repo = new_repo(tmp_path / "repo", chain(101))
    monkeypatch.chdir(repo)
    code, out, err = run_main(capsys, "validate")
    assert (code, err) == (0, ""), err
    assert out.startswith("pki.toml is valid: 101 authorities")


# -- files pki.toml names --------------------------------------------------------------------------

CSR_ENTRY = ROOT + '[certificate.gw]\nissuer = "root"\ncsr = "{path}"\n'


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A CSR-looking file and a directory outside the repository."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "gw.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\n")
    return d


@pytest.mark.parametrize("path, setup, expected", [
    ("csrs", lambda repo, out: (repo / "csrs").mkdir(), "csrs is a directory"),
    ("csrs/gw.csr", lambda repo, out: None, "csrs/gw.csr not found"),
    ("gw.csr", lambda repo, out: os.symlink(out / "gw.csr", repo / "gw.csr"),
     "gw.csr is a symbolic link: pkiascode does not follow them"),
    ("csrs/gw.csr", lambda repo, out: os.symlink(out, repo / "csrs"),
     "csrs is a symbolic link: pkiascode does not follow them"),
    ("csrs/gw.csr", lambda repo, out: (repo / "csrs").write_text("a file"), "csrs is not a directory"),
    ("gw.csr", lambda repo, out: (repo / "gw.csr").write_bytes(b"0" * (256 * 1024 + 1)),
     "gw.csr is 262145 bytes; at most 262144 are read"),
    ("", lambda repo, out: None, "csr must be a path inside the repository, relative to pki.toml"),
    (".", lambda repo, out: None, "csr must be a path inside the repository, relative to pki.toml"),
    ("../outside/gw.csr", lambda repo, out: None, "csr must be a path inside the repository, relative to pki.toml"),
    (".pki/keys/root.pem", lambda repo, out: None, "csr must not be under .pki/ (git's files, pkiascode's keys)"),
    (".git/config", lambda repo, out: None, "csr must not be under .git/ (git's files, pkiascode's keys)"),
], ids=["a directory", "missing", "a symlink out of the repository", "through a symlinked directory",
        "through a file", "too big", "empty", "the directory of pki.toml", "outside the repository",
        "the key store", "git's files"])
def test_csr_must_be_a_regular_file_inside_reached_through_no_symlink(tmp_path, env, capsys, monkeypatch, outside,
                                                                      path, setup, expected):
    repo = new_repo(tmp_path / "repo", CSR_ENTRY.format(path=path))
    setup(repo, outside)
    check_refused(repo, capsys, monkeypatch, f"pki.toml:5: certificate.gw.csr: {expected}")


def test_csr_that_is_a_fifo_is_refused_not_read(tmp_path, env):
    """Reading a FIFO would wait forever (or /dev/zero fill memory): a CSR is opened only once it is
    known to be a regular file. In a subprocess, so that the old behaviour fails by its timeout."""
    repo = new_repo(tmp_path / "repo", CSR_ENTRY.format(path="gw.csr"))
    os.mkfifo(repo / "gw.csr")
    r = run_pki(repo, "validate", timeout=60)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "pki.toml:5: certificate.gw.csr: gw.csr is not a regular file\n"


def test_a_revoked_csr_entry_needs_no_file(tmp_path, env, capsys, monkeypatch):
    """Once revoked, a CSR entry's file may be deleted: nothing reads it."""
    repo = new_repo(tmp_path / "repo", CSR_ENTRY.format(path="gone.csr") + "revoked = true\n")
    monkeypatch.chdir(repo)
    code, _, err = run_main(capsys, "validate")
    assert (code, err) == (0, "")


@pytest.mark.parametrize("setup, expected", [
    (lambda repo, out: os.symlink(out, repo / "state"), "state is a symbolic link: pkiascode does not follow them"),
    (lambda repo, out: (repo / "state").write_text("a file"), "state is not a directory"),
    (lambda repo, out: ((repo / "var").mkdir(), os.symlink(out, repo / "var" / "state")),
     "var/state is a symbolic link: pkiascode does not follow them"),
], ids=["a symlink out of the repository", "a file", "a symlink below a directory"])
def test_state_dir_must_be_a_directory_reached_through_no_symlink(tmp_path, env, capsys, monkeypatch, outside,
                                                                  setup, expected):
    state_dir = "var/state" if "var/" in expected else "state"
    repo = new_repo(tmp_path / "repo", f'[pki]\nstate_dir = "{state_dir}"\n' + ROOT)
    setup(repo, outside)
    before = sorted(p.name for p in outside.iterdir())
    check_refused(repo, capsys, monkeypatch, f"pki.toml:2: pki.state_dir: {expected}")
    assert sorted(p.name for p in outside.iterdir()) == before


def test_state_dir_is_normalised_to_a_plain_path(tmp_path, env, capsys, monkeypatch):
    repo = new_repo(tmp_path / "repo", '[pki]\nstate_dir = "./pki-state/"\n' + ROOT)
    monkeypatch.chdir(repo)
    code, out, err = run_main(capsys, "apply", "--auto-approve")
    assert code == 0, err
    assert (repo / "pki-state" / "inventory.json").is_file()
    assert git(repo, "ls-files").split() == ["pki-state/audit-signatures.json", "pki-state/audit.jsonl",
                                             "pki-state/certs/root.pem",
                                             "pki-state/crl/root.crl", "pki-state/inventory.json"]


# -- what reaches the terminal from other files ---------------------------------------------------

def test_a_csr_subject_with_control_characters_is_shown_escaped(tmp_path, env):
    """The CSR's subject (a requester wrote it) is quoted in the mismatch error: escaped, one line."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    evil = "gw\x1b]0;pwned\x07\r\x1b[2K"
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, evil)]))
           .sign(key, hashes.SHA256()))
    repo = new_repo(tmp_path / "repo", CSR_ENTRY.format(path="gw.csr"))
    (repo / "gw.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    r = run_pki(repo, "validate", timeout=60)
    assert (r.returncode, r.stdout) == (1, "")
    assert "\\x1b]0;pwned\\x07\\x0d\\x1b[2K" in r.stderr
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", r.stderr)
    assert r.stderr.count("\n") == 1


def test_every_pki_error_is_printable():
    from pkiascode.errors import ConfigError, PkiError, StateError, printable

    assert printable("a\x1b[31mb\r\nc\x85d\u202ee\x7f") == "a\\x1b[31mb\\x0d\\x0ac\\x85d\\u202ee\\x7f"
    assert str(StateError("object 'x\x1b[2J' is damaged")) == "object 'x\\x1b[2J' is damaged"
    assert str(ConfigError("pki.toml", 3, 'certificate."a\nb"', "bad\tvalue")) == \
        'pki.toml:3: certificate."a\\x0ab": bad\\x09value'
    assert str(PkiError("plain text, unicode é ü 日本")) == "plain text, unicode é ü 日本"
    assert printable("zero\u200bwidth, soft\u00adhyphen, tag \U000e0041") == \
        "zero\\u200bwidth, soft\\xadhyphen, tag \\U000e0041"


def test_read_inside_reads_regular_files_below_its_base_only(tmp_path, outside):
    """The reader for files pki.toml names (a CSR): what validate checks is what is read."""
    from pkiascode.config import read_inside

    base = tmp_path / "repo"
    (base / "csrs").mkdir(parents=True)
    (base / "csrs" / "a.csr").write_bytes(b"x" * 10)
    assert read_inside(base, "csrs/a.csr", max_bytes=10) == b"x" * 10
    assert read_inside(base, "./csrs//a.csr", max_bytes=10) == b"x" * 10
    os.symlink(outside / "gw.csr", base / "csrs" / "link.csr")
    os.symlink(outside, base / "linked")
    for rel, why in [("csrs/a.csr", "csrs/a.csr is 10 bytes; at most 9 are read"),
                     ("csrs/link.csr", "csrs/link.csr is a symbolic link: pkiascode does not follow them"),
                     ("linked/gw.csr", "linked is a symbolic link: pkiascode does not follow them"),
                     ("csrs", "csrs is a directory"),
                     ("../outside/gw.csr", "../outside/gw.csr is not a path inside the repository"),
                     (str(outside / "gw.csr"), f"{outside / 'gw.csr'} is not a path inside the repository")]:
        with pytest.raises(ValueError) as e:
            read_inside(base, rel, max_bytes=9 if rel == "csrs/a.csr" else 100)
        assert str(e.value) == why
