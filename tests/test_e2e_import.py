"""End to end: ``pki import`` adopts a PKI made by a real CFSSL (as Kubernetes the Hard Way's old
docs did) and by the openssl CLI (as its current ``ca.conf`` does), without reissuing; then a
one-SAN change reissues only that certificate, signed by the adopted authority key."""

from __future__ import annotations

import json
import re
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from helpers import Repo, aki, crl_serials, load_cert, openssl, require_tool, run, ski, spki_der, tree_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("openssl_and_git")]


HEADER = """\
# Cluster PKI, adopted from the hand-made one.
# Comments like this one must survive `pki import`.

[pki]
commit = true   # commit state/ on apply

# Defaults for everything new.
[defaults]
key = "ecdsa-p256"
validity = "365d"   # one year
"""


# -- building the PKIs to adopt -----------------------------------------------------------------

def cfssl_kthw(directory: Path) -> dict[str, dict]:
    """The CA and certificates of KTHW's 04-certificate-authority.md (CFSSL era), trimmed: cfssl gencert
    -initca, then gencert -ca -config -profile=kubernetes, each piped into cfssljson -bare."""
    require_tool("cfssl")
    require_tool("cfssljson")
    directory.mkdir(parents=True)
    (directory / "ca-config.json").write_text(json.dumps({"signing": {
        "default": {"expiry": "8760h"},
        "profiles": {"kubernetes": {"usages": ["signing", "key encipherment", "server auth", "client auth"],
                                    "expiry": "8760h"}}}}))

    def csr(cn: str, o: str, ou: str = "Kubernetes The Hard Way", algo: str = "rsa") -> str:
        return json.dumps({"CN": cn, "key": {"algo": algo, "size": 2048 if algo == "rsa" else 256},
                           "names": [{"C": "US", "L": "Portland", "O": o, "OU": ou, "ST": "Oregon"}]})

    specs = {
        "admin": {"csr": csr("admin", "system:masters"), "hostname": None},
        "worker-0": {"csr": csr("system:node:worker-0", "system:nodes"),
                     "hostname": "worker-0,35.200.1.10,10.240.0.20"},
        "kubernetes": {"csr": csr("kubernetes", "Kubernetes"),
                       "hostname": "10.32.0.1,10.240.0.10,127.0.0.1,kubernetes,kubernetes.default,"
                                   "kubernetes.default.svc.cluster.local"},
        # KTHW's keys were all RSA; one ECDSA key shows a mixed PKI adopts too
        "kube-proxy": {"csr": csr("system:kube-proxy", "system:node-proxier", algo="ecdsa"), "hostname": None},
    }
    (directory / "ca-csr.json").write_text(csr("Kubernetes", "Kubernetes", ou="CA"))
    out = run(["cfssl", "gencert", "-initca", "ca-csr.json"], cwd=directory, timeout=60).stdout
    run(["cfssljson", "-bare", "ca"], cwd=directory, input=out, timeout=60)
    for name, spec in specs.items():
        (directory / f"{name}-csr.json").write_text(spec["csr"])
        args = ["cfssl", "gencert", "-ca=ca.pem", "-ca-key=ca-key.pem", "-config=ca-config.json",
                "-profile=kubernetes"]
        if spec["hostname"]:
            args.append(f"-hostname={spec['hostname']}")
        out = run(args + [f"{name}-csr.json"], cwd=directory, timeout=60).stdout
        run(["cfssljson", "-bare", name], cwd=directory, input=out, timeout=60)
    assert (directory / "ca.pem").exists() and (directory / "ca-key.pem").exists() and (directory / "ca.csr").exists()
    return specs


CA_CONF = """\
[req]
distinguished_name = req_distinguished_name
prompt             = no
x509_extensions    = ca_x509_extensions

[ca_x509_extensions]
basicConstraints = CA:TRUE
keyUsage         = cRLSign, keyCertSign

[req_distinguished_name]
C   = US
ST  = Washington
L   = Seattle
CN  = CA

[admin]
distinguished_name = admin_distinguished_name
prompt             = no
req_extensions     = default_req_extensions

[admin_distinguished_name]
CN = admin
O  = system:masters

[node-0]
distinguished_name = node-0_distinguished_name
prompt             = no
req_extensions     = node-0_req_extensions

[node-0_req_extensions]
basicConstraints     = CA:FALSE
extendedKeyUsage     = clientAuth, serverAuth
keyUsage             = critical, digitalSignature, keyEncipherment
nsCertType           = client
nsComment            = "Node-0 Certificate"
subjectAltName       = DNS:node-0, IP:127.0.0.1
subjectKeyIdentifier = hash

[node-0_distinguished_name]
CN = system:node:node-0
O  = system:nodes
C  = US
ST = Washington
L  = Seattle

[kube-api-server]
distinguished_name = kube-api-server_distinguished_name
prompt             = no
req_extensions     = kube-api-server_req_extensions

[kube-api-server_req_extensions]
basicConstraints     = CA:FALSE
extendedKeyUsage     = clientAuth, serverAuth
keyUsage             = critical, digitalSignature, keyEncipherment
nsCertType           = client, server
nsComment            = "Kube API Server Certificate"
subjectAltName       = @kube-api-server_alt_names
subjectKeyIdentifier = hash

[kube-api-server_alt_names]
IP.0  = 127.0.0.1
IP.1  = 10.32.0.1
DNS.0 = kubernetes
DNS.1 = kubernetes.default
DNS.2 = kubernetes.default.svc
DNS.3 = kubernetes.default.svc.cluster
DNS.4 = kubernetes.svc.cluster.local
DNS.5 = server.kubernetes.local
DNS.6 = api-server.kubernetes.local

[kube-api-server_distinguished_name]
CN = kubernetes
C  = US
ST = Washington
L  = Seattle

[default_req_extensions]
basicConstraints     = CA:FALSE
extendedKeyUsage     = clientAuth
keyUsage             = critical, digitalSignature, keyEncipherment
nsCertType           = client
nsComment            = "Admin Client Certificate"
subjectKeyIdentifier = hash
"""


def openssl_kthw(directory: Path, names: tuple[str, ...] = ("admin", "node-0", "kube-api-server")) -> None:
    """KTHW's current 04-certificate-authority.md: openssl genrsa, req -x509 for the CA, then req + x509 -req
    -copy_extensions copyall for each certificate (2048-bit RSA here instead of 4096, for speed)."""
    directory.mkdir(parents=True)
    (directory / "ca.conf").write_text(CA_CONF)
    openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
    openssl("req", "-x509", "-new", "-sha512", "-noenc", "-key", "ca.key", "-days", "3653", "-config", "ca.conf",
            "-out", "ca.crt", cwd=directory)
    for name in names:
        openssl("genrsa", "-out", f"{name}.key", "2048", cwd=directory)
        openssl("req", "-new", "-key", f"{name}.key", "-sha256", "-config", "ca.conf", "-section", name,
                "-out", f"{name}.csr", cwd=directory)
        openssl("x509", "-req", "-days", "3653", "-in", f"{name}.csr", "-copy_extensions", "copyall", "-sha256",
                "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt", cwd=directory)


def openssl_ecdsa_pki(directory: Path, *, leaf: str = "leaf", stranger: bool = False) -> Path:
    """A small ECDSA CA and one leaf, made with the openssl CLI; with ``stranger``, a key of no
    certificate beside them (for the refusal tests). Returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca", leaf) + (("stranger",) if stranger else ()):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key",
                cwd=directory)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Refusal Test CA", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", "ca.crt", cwd=directory)
    openssl("req", "-new", "-key", f"{leaf}.key", "-subj", f"/CN={leaf}", "-out", f"{leaf}.csr", cwd=directory)
    (directory / "leaf.ext").write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:leaf.example.test\n"
                                        "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "20", "-extfile", "leaf.ext", "-out", f"{leaf}.crt", cwd=directory)
    (directory / "leaf.ext").unlink()
    return directory


# -- the shared adoption checks -------------------------------------------------------------------

def check_adopted_as_is(repo: Repo, src: Path, files: dict[str, tuple[str, str]], *, toml_before: str) -> None:
    """``files``: entry name → (certificate file, key file) in ``src``."""
    # the tables are in pki.toml, and everything that was there before is still there, comments included
    text = repo.read_toml()
    for line in toml_before.splitlines():
        assert line in text.splitlines(), f"lost from pki.toml: {line!r}\n{text}"
    for name in files:
        assert re.search(rf"^\[(authority|certificate)\.{re.escape(name)}\]", text, flags=re.M), text
    repo.pki("validate")

    # state holds the very certificates (no reissue), the keys are in the backend, 0600
    inv = repo.inventory()
    assert set(inv) == set(files)
    for name, (cert_file, key_file) in files.items():
        original = load_cert(src / cert_file)
        adopted = repo.cert(name)
        assert adopted == original, f"{name} was reissued instead of adopted"
        assert inv[name]["serial"] == format(original.serial_number, "x")
        stored = repo.key_file(name)
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        stored_key = serialization.load_pem_private_key(stored.read_bytes(), None)
        src_key = serialization.load_pem_private_key((src / key_file).read_bytes(), None)
        assert spki_der(stored_key) == spki_der(src_key)
        assert b"PRIVATE KEY" not in repo.cert_path(name).read_bytes()
    assert not [p for p in repo.state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]

    # the audit log records each import; the chain is intact; state/ is committed
    imports = {e["name"]: e for e in repo.audit() if e["action"] == "import"}
    assert set(imports) == set(files)
    for name, e in imports.items():
        assert e["serial"] == inv[name]["serial"] and e["sha256"] == inv[name]["sha256"]
    assert "hash chain intact" in repo.pki("audit", "verify").stdout
    assert repo.git("log", "-1", "--format=%s").startswith("pki import:")
    assert repo.git("status", "--porcelain", "--", "state") == ""

    # and nothing to do
    r = repo.pki("plan", "--detailed-exitcode", expect=0)
    assert "No changes" in r.stdout


def check_one_san_change(repo: Repo, src: Path, files: dict[str, tuple[str, str]], *, ca: str, ca_file: str,
                         name: str, old_host: str, new_host: str) -> None:
    repo.edit_toml(f'"{old_host}"', f'"{new_host}"')
    plan = repo.plan_json()
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("reissue", name)], plan
    assert plan["changes"][0]["diff"]["hosts"]["after"] == \
        [new_host if h == old_host else h for h in plan["changes"][0]["diff"]["hosts"]["before"]]
    repo.apply()

    original_ca = load_cert(src / ca_file)
    new = repo.cert(name)
    assert new.serial_number != load_cert(src / files[name][0]).serial_number
    assert aki(new) == ski(original_ca), "the new certificate must be signed by the adopted authority key"
    assert new.issuer == original_ca.subject
    sans = [str(v) for v in new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.DNSName)] + \
           [str(v) for v in new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.IPAddress)]
    assert new_host in sans and old_host not in sans
    # a reissue keeps the adopted key
    src_key = serialization.load_pem_private_key((src / files[name][1]).read_bytes(), None)
    assert spki_der(new) == spki_der(src_key)
    # verifies against the ORIGINAL CA file
    p = openssl("verify", "-CAfile", src / ca_file, repo.cert_path(name), expect=None)
    assert p.returncode == 0, p.stdout + p.stderr
    # and nothing else changed
    for other, (cert_file, _) in files.items():
        if other != name:
            assert repo.cert(other) == load_cert(src / cert_file), f"{other} changed too"
    repo.pki("plan", "--detailed-exitcode", expect=0)


def check_revocation_by_adopted_key(repo: Repo, src: Path, *, ca: str, ca_file: str, revoke: str,
                                    keep: str) -> None:
    serial = repo.cert(revoke).serial_number
    repo.edit_toml(f"[certificate.{revoke}]", f'[certificate.{revoke}]\nrevoked = {{ reason = "key_compromise" }}')
    repo.apply()
    assert serial in crl_serials(repo.crl(ca))
    out = openssl("crl", "-in", repo.crl_path(ca), "-noout", "-verify", "-CAfile", src / ca_file).output
    assert "verify OK" in out
    p = openssl("verify", "-crl_check", "-CAfile", src / ca_file, "-CRLfile", repo.crl_path(ca), repo.cert_path(revoke),
                expect=None)
    assert p.returncode != 0 and "certificate revoked" in p.stdout + p.stderr
    p = openssl("verify", "-crl_check", "-CAfile", src / ca_file, "-CRLfile", repo.crl_path(ca), repo.cert_path(keep),
                expect=None)
    assert p.returncode == 0, p.stdout + p.stderr


# -- the tests --------------------------------------------------------------------------------------

def test_import_a_pki_made_by_cfssl_then_change_one_san(tmp_path: Path) -> None:
    src = tmp_path / "kthw-cfssl"
    specs = cfssl_kthw(src)
    repo = Repo.create(tmp_path / "repo", HEADER)
    r = repo.pki("import", str(src))
    assert "imported authority.ca from ca.pem" in r.stdout
    for name in specs:
        assert f"imported certificate.{name} from {name}.pem" in r.stdout
    files = {"ca": ("ca.pem", "ca-key.pem")} | {n: (f"{n}.pem", f"{n}-key.pem") for n in specs}
    check_adopted_as_is(repo, src, files, toml_before=HEADER)
    rec = repo.inventory()
    assert rec["ca"]["key"]["algorithm"] == "rsa-2048" and rec["kube-proxy"]["key"]["algorithm"] == "ecdsa-p256"
    assert rec["worker-0"]["issuer"] == "ca"
    out = openssl("crl", "-in", repo.crl_path("ca"), "-noout", "-verify", "-CAfile", src / "ca.pem").output
    assert "verify OK" in out

    check_one_san_change(repo, src, files, ca="ca", ca_file="ca.pem", name="worker-0",
                         old_host="10.240.0.20", new_host="10.240.0.21")
    check_revocation_by_adopted_key(repo, src, ca="ca", ca_file="ca.pem", revoke="admin", keep="kubernetes")
    assert "hash chain intact" in repo.pki("audit", "verify").stdout


def test_import_a_pki_made_by_the_openssl_cli_then_change_one_san(tmp_path: Path) -> None:
    src = tmp_path / "kthw-openssl"
    openssl_kthw(src)
    repo = Repo.create(tmp_path / "repo", HEADER)
    r = repo.pki("import", str(src))
    assert "imported authority.ca from ca.crt" in r.stdout
    files = {n: (f"{n}.crt", f"{n}.key") for n in ("ca", "admin", "node-0", "kube-api-server")}
    check_adopted_as_is(repo, src, files, toml_before=HEADER)
    text = repo.read_toml()
    assert 'common_name = "system:node:node-0"' in text

    check_one_san_change(repo, src, files, ca="ca", ca_file="ca.crt", name="kube-api-server",
                         old_host="api-server.kubernetes.local", new_host="api.kubernetes.local")
    check_revocation_by_adopted_key(repo, src, ca="ca", ca_file="ca.crt", revoke="node-0", keep="admin")


def test_import_leaves_signed_by_an_authority_adopted_earlier(tmp_path: Path) -> None:
    src = openssl_ecdsa_pki(tmp_path / "first", stranger=True)
    repo = Repo.create(tmp_path / "repo", HEADER)
    repo.pki("import", str(src))
    later = tmp_path / "later"
    later.mkdir()
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", later / "late.key")
    openssl("req", "-new", "-key", later / "late.key", "-subj", "/CN=late", "-out", later / "late.csr")
    (later / "ext").write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:late.example.test\n")
    openssl("x509", "-req", "-in", later / "late.csr", "-CA", src / "ca.crt", "-CAkey", src / "ca.key",
            "-CAcreateserial", "-days", "20", "-extfile", later / "ext", "-out", later / "late.crt")
    r = repo.pki("import", str(later))
    assert "imported certificate.late" in r.stdout
    assert repo.record("late")["issuer"] == "ca"
    assert repo.cert("late") == load_cert(later / "late.crt")
    repo.pki("plan", "--detailed-exitcode", expect=0)


@pytest.mark.parametrize("case", ["key does not match", "issuer missing"])
def test_import_refusals_leave_pki_toml_and_state_unchanged(tmp_path: Path, case: str) -> None:
    repo = Repo.create(tmp_path / "repo", HEADER + """
[authority.existing]   # already managed
common_name = "Existing CA"
""")
    repo.apply()
    src = openssl_ecdsa_pki(tmp_path / "src", stranger=True)
    if case == "key does not match":
        (src / "leaf.key").write_bytes((src / "stranger.key").read_bytes())
        expected = re.compile(r"^(?:Error: )?.*leaf\.key does not match leaf\.crt: the key's public half differs",
                              flags=re.M)
    else:
        for f in ("ca.crt", "ca.key"):
            (src / f).unlink()
        expected = re.compile(r"^(?:Error: )?.*leaf\.crt: incomplete chain: its issuer CN=Refusal Test CA is not among "
                              r"the imported certificates nor in state", flags=re.M)
    (src / "stranger.key").unlink()
    toml = repo.toml_path.read_bytes()
    state = tree_snapshot(repo.state)
    keys = repo.key_files()
    head = repo.head()

    r = repo.pki("import", str(src), expect=1)
    assert expected.search(r.stderr), r
    assert len(r.stderr.strip().splitlines()) == 1, "one readable line"
    assert "PRIVATE KEY" not in r.stderr + r.stdout
    assert repo.toml_path.read_bytes() == toml
    assert tree_snapshot(repo.state) == state
    assert repo.key_files() == keys
    assert repo.head() == head
    assert repo.git("status", "--porcelain") == ""
    repo.pki("plan", "--detailed-exitcode", expect=0)


def test_import_keeps_comments_and_existing_tables(tmp_path: Path) -> None:
    toml = HEADER + """
# The root we already manage.
[authority.root]   # keep me
common_name = "Managed Root"   # trailing comment
validity = "10y"

# A leaf we already manage.
[certificate.web]
issuer = "root"   # issued by the managed root
common_name = "web"
hosts = ["web.example.test"]   # one host
"""
    repo = Repo.create(tmp_path / "repo", toml)
    repo.apply()
    src = openssl_ecdsa_pki(tmp_path / "src")
    repo.pki("import", str(src))
    text = repo.read_toml()
    for line in toml.splitlines():
        assert line in text.splitlines(), f"lost: {line!r}\n{text}"
    comments = [line for line in toml.splitlines() if "#" in line]
    assert [line for line in text.splitlines() if line in comments] == comments, "comments kept in order"
    # a pki.toml without [pki] id gets one (issue 11.4)
    assert "id =" not in toml and re.fullmatch(r"[a-z0-9]{12}", tomllib.loads(text)["pki"]["id"]), text
    # the managed entries are untouched, the imported ones adopted: nothing to do
    plan = repo.plan_json()
    assert plan["changes"] == [], plan


def test_import_keeps_a_comment_next_to_the_table_it_describes(tmp_path: Path) -> None:
    toml = HEADER + """
[authority.root]
common_name = "Managed Root"

# A leaf we already manage.
[certificate.web]
issuer = "root"
common_name = "web"
"""
    repo = Repo.create(tmp_path / "repo", toml)
    repo.apply()
    src = openssl_ecdsa_pki(tmp_path / "src")
    repo.pki("import", str(src))
    lines = [line for line in repo.read_toml().splitlines() if line.strip()]
    i = lines.index("# A leaf we already manage.")
    assert lines[i + 1] == "[certificate.web]", "\n".join(lines)


def test_import_a_short_lived_certificate_under_a_longer_default_renew_before(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "repo", HEADER + 'renew_before = "30d"\n')
    src = openssl_ecdsa_pki(tmp_path / "src")  # the leaf is valid for 20 days
    r = repo.pki("import", str(src), expect=None)
    assert r.returncode == 0, r
    assert repo.cert("leaf") == load_cert(src / "leaf.crt")
    repo.pki("plan", "--detailed-exitcode", expect=0)
