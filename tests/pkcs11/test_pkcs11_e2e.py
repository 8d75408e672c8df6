"""End to end through the real `pki` command, in temporary git repositories, against real SoftHSM2.

Every scenario gets a SoftHSM2 of its own (`conftest.PrivateHSM`: its own configuration, token
directory and token), used only by child processes: the `pki` CLI, OpenSC's ``pkcs11-tool`` and a
small python-pkcs11 inspector (`INSPECT`). So each scenario starts from an empty token, and the
tokens of the ``softhsm`` fixture that this process has loaded are never touched.

1. A root on the token (RSA-2048, ECDSA P-256, Ed25519) issuing an intermediate on the token and two
   leaves, one local and one on the token: the chains `pki export` writes verify with
   ``openssl verify`` (CRLs signed on the token included), and a TLS handshake works with the local
   leaf issued by the HSM-held intermediate.
2. The private keys `pki apply` generated cannot be read off the token: through PKCS#11 (attributes,
   reading the secret values, changing the flags, wrapping the key) and as ``pkcs11-tool`` shows them.
3. A local root moves into the token: the certificate stays, the inventory says ``imported``, and
   what the root signs afterwards chains to the unchanged certificate.
4. Every fault is one ``Error:`` line on stderr, exit code 1, nothing committed, nothing changed in
   state/, the local key store or on the token, and the PIN nowhere in the output.
   Token full: SoftHSM2 keeps each object in a file and has no quota, so CKR_DEVICE_MEMORY cannot be
   provoked with it. Filling the file system (RLIMIT_FSIZE) does not give CKR_DEVICE_MEMORY either:
   SoftHSM2 truncates its own token.object and answers every later call with CKR_GENERAL_ERROR (the
   token is ruined). The message for CKR_DEVICE_MEMORY is covered by test_pkcs11_backend.py's
   ``test_error_mapping``.
5. A key deleted from the token is drift: `pki plan` plans a rekey naming the missing key, and
   `pki apply` repairs it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from helpers import (
    Result, audit_key_refs, concat, crl_reason_of, git, inventory, key_files, key_ref, load_key, openssl, require_tool,
    run, run_pki,
    spki_der, state_cert, state_crl, subject_of, tls_handshake, tree_snapshot,
)

pytestmark = [pytest.mark.pkcs11, pytest.mark.slow]

WRONG_PIN = "Wrong-Pin-4711"  # not hex: it cannot turn up by chance in a serial or a fingerprint
REF = re.compile(r"pki-(?P<name>[a-z0-9._-]+)-[0-9a-f]{8}/[0-9a-f]{32}")


# -- running things -------------------------------------------------------------------------------

def pki(repo: Path, hsm: Any, *args: str, env: dict[str, str] | None = None, expect: int | None = 0) -> Result:
    """``pki --no-color ARGS`` in ``repo`` as a child process; never any PIN in what it prints."""
    result = run_pki(repo, "--no-color", *args, env=env if env is not None else hsm.env(), expect=expect,
                     timeout=300)
    for secret in (hsm.pin, WRONG_PIN):
        assert secret not in result.output, f"a PIN is in the output of {result}"
    return result


def backend_table(hsm: Any, **settings: str | None) -> str:
    values = {"plugin": "pkcs11", "module": hsm.module, "token": hsm.token, **settings}
    return "[backend.hsm]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items() if v is not None)


def init_repo(path: Path, hsm: Any, toml: str) -> Path:
    """A project made by ``pki init`` in ``path``, then given ``toml``."""
    path.mkdir(parents=True)
    pki(path, hsm, "init", ".")
    (path / "pki.toml").write_text(toml)
    return path


# -- looking at the token -------------------------------------------------------------------------

def pkcs11_tool(hsm: Any, *args: str, conf: str | None = None) -> str:
    """OpenSC's ``pkcs11-tool ARGS``, logged in to the token; its stdout."""
    return run([require_tool("pkcs11-tool"), "--module", hsm.module, "--token-label", hsm.token, "--login",
                "--pin", hsm.pin, *args], env=hsm.env(conf=conf), timeout=60).stdout


class TokenObject(NamedTuple):
    kind: str  # "Private Key", "Public Key", ...
    key_type: str
    label: str
    id: str
    usage: str
    access: str


def token_objects(hsm: Any, conf: str | None = None) -> list[TokenObject]:
    """Every object on the token, as ``pkcs11-tool --login --list-objects`` shows it."""
    out = pkcs11_tool(hsm, "--list-objects", conf=conf)
    found = []
    for block in re.split(r"^(?=\S)", out, flags=re.M):
        head = re.match(r"(Private Key|Public Key|Secret Key|Certificate|Data) Object;?\s*(\S*)", block)
        if head is None:
            continue

        def field(name: str) -> str:
            m = re.search(rf"^\s+{name}:\s*(.*?)\s*$", block, re.M)
            return m.group(1) if m else ""

        found.append(TokenObject(head.group(1), head.group(2), field("label"), field("ID"), field("Usage"),
                                 field("Access")))
    return sorted(found)


def pairs_on_token(hsm: Any, *, audit: bool = False) -> set[str]:
    """``LABEL/ID`` of every key pair on the token (both halves present); without ``audit``, but the
    audit log's signing key (``pki-audit-log-…``, made by the first apply of a PKI whose root is here)."""
    objs = token_objects(hsm)
    privates = {f"{o.label}/{o.id}" for o in objs if o.kind == "Private Key"}
    publics = {f"{o.label}/{o.id}" for o in objs if o.kind == "Public Key"}
    return {p for p in privates & publics if audit or not re.match(r"pki-audit-log-[0-9a-f]{8}/", p)}


# python-pkcs11 in a child process: this process has SoftHSM2 loaded with another configuration.
INSPECT = r"""
import hashlib, json, os, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e

module, label, refs, challenge = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), bytes.fromhex(sys.argv[4])
SECRETS = {KeyType.RSA: [Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.PRIME_2, Attribute.EXPONENT_1,
                         Attribute.EXPONENT_2, Attribute.COEFFICIENT],
           KeyType.EC: [Attribute.VALUE], KeyType.EC_EDWARDS: [Attribute.VALUE]}
FLAGS = ["TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE", "LOCAL",
         "SIGN", "DECRYPT", "UNWRAP", "DERIVE"]

def outcome(fn):
    try:
        fn()
    except p11e.PKCS11Error as exc:
        return type(exc).__name__
    return "allowed"

out = {}
token = pkcs11.lib(module).get_token(token_label=label)
with token.open(rw=True, user_pin=os.environ["PKI_PKCS11_PIN"]) as session:
    wrapping_key = session.generate_key(KeyType.AES, 256, store=False,
                                        capabilities=MechanismFlag.WRAP | MechanismFlag.ENCRYPT)
    for ref in refs:
        key_label, key_id = ref.split("/")
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key_label,
                                          Attribute.ID: bytes.fromhex(key_id)}))
        if len(found) != 1:
            out[ref] = {"found": len(found)}
            continue
        key = found[0]
        kind = key[Attribute.KEY_TYPE]
        info = {"found": 1, "key_type": kind.name}
        info.update({flag: key[getattr(Attribute, flag)] for flag in FLAGS})
        info["read"] = {a.name: outcome(lambda a=a: key[a]) for a in SECRETS[kind]}
        info["set EXTRACTABLE true"] = outcome(lambda: key.__setitem__(Attribute.EXTRACTABLE, True))
        info["set SENSITIVE false"] = outcome(lambda: key.__setitem__(Attribute.SENSITIVE, False))
        info["wrap"] = outcome(lambda: wrapping_key.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD))
        # and it signs, on the token: the parent checks the signature against the certificate
        if kind == KeyType.RSA:
            signature = key.sign(challenge, mechanism=Mechanism.SHA256_RSA_PKCS)
        elif kind == KeyType.EC:
            signature = key.sign(hashlib.sha256(challenge).digest(), mechanism=Mechanism.ECDSA)
        else:
            signature = key.sign(challenge, mechanism=Mechanism.EDDSA)
        info["signature"] = signature.hex()
        out[ref] = info
print(json.dumps(out))
"""

DELETE = r"""
import os, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass

module, label, ref, what = sys.argv[1:5]
key_label, key_id = ref.split("/")
token = pkcs11.lib(module).get_token(token_label=label)
with token.open(rw=True, user_pin=os.environ["PKI_PKCS11_PIN"]) as session:
    cls = ObjectClass.PUBLIC_KEY if what == "public" else ObjectClass.PRIVATE_KEY
    found = list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: key_label,
                                      Attribute.ID: bytes.fromhex(key_id)}))
    assert len(found) == 1, found
    found[0].destroy()
"""


def inspect_keys(hsm: Any, refs: list[str], challenge: bytes) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", INSPECT, hsm.module, hsm.token, json.dumps(refs), challenge.hex()],
                          env=hsm.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def verify_token_signature(certificate: x509.Certificate, signature_hex: str, challenge: bytes) -> None:
    """The signature the token made with the key verifies with the certificate's public key."""
    public = certificate.public_key()
    signature = bytes.fromhex(signature_hex)
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public, ec.EllipticCurvePublicKey):
        half = len(signature) // 2
        der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
        public.verify(der, challenge, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, challenge)


def assert_never_leaves_the_token(info: dict[str, Any], *, generated: bool) -> None:
    assert info["found"] == 1
    assert info["TOKEN"] is True and info["PRIVATE"] is True
    assert info["SENSITIVE"] is True and info["EXTRACTABLE"] is False
    assert info["SIGN"] is True
    assert info["DECRYPT"] is False and info["UNWRAP"] is False and info["DERIVE"] is False
    if generated:  # made on the token, never outside it
        assert info["LOCAL"] is True and info["ALWAYS_SENSITIVE"] is True and info["NEVER_EXTRACTABLE"] is True
    else:  # honest flags for an imported key: it existed outside the token before
        assert info["LOCAL"] is False and info["NEVER_EXTRACTABLE"] is False
    assert info["read"] and set(info["read"].values()) == {"AttributeSensitive"}, info["read"]
    assert info["set EXTRACTABLE true"] != "allowed"
    assert info["set SENSITIVE false"] != "allowed"
    assert info["wrap"] == "KeyUnextractable"


def assert_tool_shows_non_extractable(hsm: Any, ref: str, *, generated: bool) -> None:
    label, key_id = ref.split("/")
    objs = [o for o in token_objects(hsm) if o.label == label and o.id == key_id]
    assert sorted(o.kind for o in objs) == ["Private Key", "Public Key"], objs
    private = next(o for o in objs if o.kind == "Private Key")
    access = set(private.access.split(", "))
    assert "sensitive" in access and "extractable" not in access, private
    if generated:
        assert {"always sensitive", "never extractable", "local"} <= access, private
    assert private.usage == "sign", private


# -- 1 and 2: a hierarchy on the token --------------------------------------------------------------

# root key → (intermediate key, key of the leaf on the token)
HIERARCHIES = {
    "rsa-2048": ("ecdsa-p384", "ecdsa-p256"),
    "ecdsa-p256": ("rsa-3072", "ecdsa-p384"),
    "ed25519": ("ecdsa-p384", "ed25519"),
}
SIGNATURE = {
    "rsa-2048": SignatureAlgorithmOID.RSA_WITH_SHA256, "rsa-3072": SignatureAlgorithmOID.RSA_WITH_SHA256,
    "ecdsa-p256": SignatureAlgorithmOID.ECDSA_WITH_SHA256, "ecdsa-p384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    "ed25519": SignatureAlgorithmOID.ED25519,
}


def hierarchy_toml(hsm: Any, root: str, intermediate: str, leaf: str) -> str:
    return backend_table(hsm) + f"""
[defaults]
subject = {{ O = "pkiascode e2e" }}

[authority.root]
common_name = "E2E Root CA {root}"
key = "{root}"
backend = "hsm"
path_length = 1

[authority.intermediate]
issuer = "root"
common_name = "E2E Intermediate CA"
key = "{intermediate}"
backend = "hsm"
path_length = 0

[certificate.web]
issuer = "intermediate"
common_name = "localhost"
hosts = ["localhost", "127.0.0.1"]
key = "ecdsa-p256"

[certificate.signer]
issuer = "intermediate"
common_name = "leaf on the token"
key = "{leaf}"
backend = "hsm"
usages = ["digital signature", "client auth"]
"""


class Hierarchy(NamedTuple):
    root_key: str
    hsm: Any
    repo: Path
    apply: Result
    out: Path  # what `pki export` wrote


@pytest.fixture(scope="module", params=list(HIERARCHIES))
def hierarchy(request, private_hsm_factory, tmp_path_factory) -> Hierarchy:
    root_key = request.param
    base = tmp_path_factory.mktemp(f"hierarchy-{root_key}")
    hsm = private_hsm_factory(base / "softhsm")
    repo = init_repo(base / "repo", hsm, hierarchy_toml(hsm, root_key, *HIERARCHIES[root_key]))
    applied = pki(repo, hsm, "apply", "--auto-approve")
    out = base / "export"
    for name in ("root", "intermediate", "signer"):
        pki(repo, hsm, "export", name, "--dir", str(out), "--no-key")
    pki(repo, hsm, "export", "web", "--dir", str(out))
    return Hierarchy(root_key, hsm, repo, applied, out)


def test_apply_makes_the_authority_keys_on_the_token_and_commits_only_public_state(hierarchy):
    h = hierarchy
    intermediate_key, leaf_key = HIERARCHIES[h.root_key]
    assert re.search(r"^Apply complete: 4 created\. Committed [0-9a-f]{12}\.$", h.apply.stdout, re.M), h.apply

    inv = inventory(h.repo)
    for name, key in (("root", h.root_key), ("intermediate", intermediate_key), ("signer", leaf_key)):
        k = inv[name]["key"]
        assert (k["algorithm"], k["backend"], k["plugin"], k["origin"], k["exportable"]) == \
               (key, "hsm", "pkcs11", "generated", False), (name, k)
        assert (m := REF.fullmatch(k["ref"])) and m["name"] == name, k["ref"]
    assert (inv["web"]["key"]["backend"], inv["web"]["key"]["exportable"]) == ("local", True)
    # exactly the three key pairs the inventory names are on the token, the audit log's, and nothing else
    assert pairs_on_token(h.hsm, audit=True) == {inv[n]["key"]["ref"] for n in ("root", "intermediate", "signer")} \
        | audit_key_refs(h.repo)
    assert len(audit_key_refs(h.repo)) == 1
    assert len(token_objects(h.hsm)) == 8
    # the local leaf key is in .pki/keys, and only there
    assert [p.name for p in (h.repo / ".pki/keys").iterdir()] == [inv["web"]["key"]["ref"]]

    # each certificate carries the key made for it and is signed with its issuer's algorithm
    root, intermediate, web, signer = (state_cert(h.repo, n) for n in ("root", "intermediate", "web", "signer"))
    assert root.signature_algorithm_oid == SIGNATURE[h.root_key]
    assert intermediate.signature_algorithm_oid == SIGNATURE[h.root_key]
    assert web.signature_algorithm_oid == signer.signature_algorithm_oid == SIGNATURE[intermediate_key]
    assert spki_der(intermediate) != spki_der(root)

    # one commit, of state/ only; no key material and no PIN anywhere in the repository
    assert git(h.repo, "log", "--format=%s").splitlines() == ["pki apply: 4 created"]
    committed = git(h.repo, "show", "--name-only", "--format=", "HEAD").split()
    assert committed and all(p.startswith("state/") for p in committed), committed
    assert {"state/certs/root.pem", "state/crl/root.crl", "state/crl/intermediate.crl"} <= set(committed)
    history = git(h.repo, "log", "-p", "--all")
    assert "PRIVATE KEY" not in history and h.hsm.pin not in history
    for path in h.repo.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert h.hsm.pin.encode() not in path.read_bytes(), path

    assert "No changes." in pki(h.repo, h.hsm, "plan", "--detailed-exitcode").stdout  # exit 0: no drift
    pki(h.repo, h.hsm, "audit", "verify")
    listed = {r["name"]: r["backend"] for r in json.loads(pki(h.repo, h.hsm, "list", "--format", "json").stdout)}
    assert listed == {"root": "hsm", "intermediate": "hsm", "signer": "hsm", "web": "local"}


def test_exported_chains_verify_with_openssl(hierarchy, tmp_path):
    h, out = hierarchy, hierarchy.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}{suffix}" for n in ("root", "intermediate", "signer", "web") for suffix in (".pem", "-ca.pem")]
        + ["web-key.pem"])
    assert (out / "web-key.pem").stat().st_mode & 0o777 == 0o600
    assert spki_der(load_key(out / "web-key.pem")) == spki_der(state_cert(h.repo, "web"))
    for name in ("root", "intermediate", "web", "signer"):
        assert (out / f"{name}.pem").read_bytes() == (h.repo / f"state/certs/{name}.pem").read_bytes()
    assert (out / "web-ca.pem").read_bytes() == (out / "intermediate.pem").read_bytes() + (out / "root.pem").read_bytes()

    # the chains, signed on the token, with the CRLs signed on the token
    strict = ["verify", "-x509_strict", "-CAfile", "root.pem"]
    assert openssl(*strict, "intermediate.pem", cwd=out).output.strip() == "intermediate.pem: OK"
    crls = ["-crl_check_all", "-CRLfile", str(h.repo / "state/crl/root.crl"),
            "-CRLfile", str(h.repo / "state/crl/intermediate.crl")]
    assert openssl(*strict, *crls, "-untrusted", "web-ca.pem", "-purpose", "sslserver", "web.pem",
                   cwd=out).output.strip() == "web.pem: OK"
    assert openssl(*strict, *crls, "-untrusted", "signer-ca.pem", "-purpose", "sslclient", "signer.pem",
                   cwd=out).output.strip() == "signer.pem: OK"
    # (and the verification is real: without the intermediate, the leaf does not verify)
    assert "unable to get local issuer certificate" in openssl(*strict, "web.pem", cwd=out, expect=2).output

    # a key on the token cannot be exported; nothing is written
    refused = pki(h.repo, h.hsm, "export", "intermediate", "--dir", str(tmp_path / "keys"), expect=1)
    assert refused.stderr.splitlines() == [
        "Error: the key of authority.intermediate cannot leave backend hsm (pkcs11); export the certificate and "
        "chain with --no-key"]
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_tls_handshake_with_a_local_leaf_of_the_hsm_intermediate(hierarchy, tmp_path):
    out = hierarchy.out
    fullchain = concat(tmp_path / "web-fullchain.pem", out / "web.pem", out / "intermediate.pem")
    # the client verifies the chain and the name
    outcome = tls_handshake(server_cert=fullchain, server_key=out / "web-key.pem", client_cafile=out / "root.pem",
                            server_hostname="localhost")
    assert outcome.ok, outcome
    assert outcome.version.startswith("TLSv1.")
    assert subject_of(outcome.server_cert)["commonName"] == "localhost"
    assert subject_of(outcome.server_cert, "issuer")["commonName"] == "E2E Intermediate CA"


def test_keys_made_by_apply_cannot_be_read_from_the_token(hierarchy):
    h = hierarchy
    refs = {name: key_ref(h.repo, name) for name in ("root", "intermediate", "signer")}
    challenge = hashlib.sha256(h.repo.name.encode()).digest() + b" signed on the token"
    found = inspect_keys(h.hsm, list(refs.values()), challenge)
    for name, ref in refs.items():
        info = found[ref]
        assert_never_leaves_the_token(info, generated=True)
        # the key that signs on the token is the key of the committed certificate
        verify_token_signature(state_cert(h.repo, name), info["signature"], challenge)
        assert_tool_shows_non_extractable(h.hsm, ref, generated=True)
    p11_type = {"rsa": "RSA", "ecdsa": "EC", "ed25519": "EC_EDWARDS"}
    keys = dict(zip(("root", "intermediate", "signer"), (h.root_key, *HIERARCHIES[h.root_key])))
    assert {n: found[r]["key_type"] for n, r in refs.items()} == {n: p11_type[k.split("-")[0]] for n, k in keys.items()}


# -- 3: a local root moves into the token -----------------------------------------------------------

MOVE_TOML = """
[authority.root]
common_name = "Moving Root CA"
key = "{key}"
validity = "10y"

[authority.intermediate]
issuer = "root"
common_name = "Intermediate made before the move"

[certificate.before]
issuer = "intermediate"
common_name = "before.internal"
hosts = ["before.internal"]
"""


@pytest.mark.parametrize("key", ["rsa-2048", "ed25519"])
def test_a_local_root_moves_into_the_token_and_its_certificate_stays(private_hsm, tmp_path, key):
    hsm = private_hsm
    toml = backend_table(hsm) + MOVE_TOML.format(key=key)
    repo = init_repo(tmp_path / "repo", hsm, toml)
    pki(repo, hsm, "apply", "--auto-approve")
    before = inventory(repo)["root"]
    root_pem = (repo / "state/certs/root.pem").read_bytes()
    (tmp_path / "original-root.pem").write_bytes(root_pem)
    local_keys = repo / ".pki/keys"
    assert sorted(p.name.split("-")[0] for p in local_keys.iterdir()) == ["audit", "before", "intermediate", "root"]

    moved_toml = toml.replace(f'key = "{key}"\n', f'key = "{key}"\nbackend = "hsm"\n')
    (repo / "pki.toml").write_text(moved_toml)
    plan = json.loads(pki(repo, hsm, "plan", "--format", "json").stdout)
    assert [(c["action"], c["name"], c["reasons"]) for c in plan["changes"]] == \
           [("move_key", "root", ["backend changes local → hsm"])]
    applied = pki(repo, hsm, "apply", "--auto-approve")
    assert "Apply complete: 1 moved." in applied.stdout

    # the certificate stays; the inventory records the key on the token, imported
    assert (repo / "state/certs/root.pem").read_bytes() == root_pem
    after = inventory(repo)["root"]
    assert (after["serial"], after["sha256"], after["not_after"]) == \
           (before["serial"], before["sha256"], before["not_after"])
    assert {k: after["key"][k] for k in ("algorithm", "backend", "plugin", "origin", "exportable")} == \
           {"algorithm": key, "backend": "hsm", "plugin": "pkcs11", "origin": "imported", "exportable": False}
    ref = after["key"]["ref"]
    assert REF.fullmatch(ref) and REF.fullmatch(ref)["name"] == "root"
    assert pairs_on_token(hsm) == {ref}
    assert sorted(p.name.split("-")[0] for p in local_keys.iterdir()) == ["audit", "before", "intermediate"]
    assert f"in backend hsm ({ref}, imported, non-exportable)" in pki(repo, hsm, "show", "root").stdout
    last = json.loads((repo / "state/audit.jsonl").read_text().splitlines()[-1])
    assert (last["action"], last["name"], last["backend"], last["moved_from"]) == ("move_key", "root", "hsm", "local")
    pki(repo, hsm, "audit", "verify")

    # imported as sensitive and non-extractable; it signs for the unchanged certificate
    challenge = b"moved " + key.encode()
    info = inspect_keys(hsm, [ref], challenge)[ref]
    assert_never_leaves_the_token(info, generated=False)
    verify_token_signature(state_cert(repo, "root"), info["signature"], challenge)
    assert_tool_shows_non_extractable(hsm, ref, generated=False)

    # what the root signs now is signed on the token and chains to the UNCHANGED root certificate
    (repo / "pki.toml").write_text(moved_toml + """
[authority.second]
issuer = "root"
common_name = "Intermediate made after the move"

[certificate.after]
issuer = "second"
common_name = "after.internal"
hosts = ["after.internal"]
""")
    pki(repo, hsm, "apply", "--auto-approve")
    assert (repo / "state/certs/root.pem").read_bytes() == root_pem
    out = tmp_path / "out"
    pki(repo, hsm, "export", "after", "--dir", str(out))
    pki(repo, hsm, "export", "before", "--dir", str(out))
    for leaf in ("after", "before"):
        assert openssl("verify", "-x509_strict", "-CAfile", str(tmp_path / "original-root.pem"),
                       "-untrusted", f"{leaf}-ca.pem", f"{leaf}.pem", cwd=out).output.strip() == f"{leaf}.pem: OK"
    assert state_cert(repo, "second").signature_algorithm_oid == SIGNATURE[key]
    assert "No changes." in pki(repo, hsm, "plan", "--detailed-exitcode").stdout
    refused = pki(repo, hsm, "export", "root", "--dir", str(tmp_path / "root-out"), expect=1)
    assert refused.stderr.splitlines() == ["Error: the key of authority.root cannot leave backend hsm (pkcs11); "
                                           "export the certificate and chain with --no-key"]


# -- 4: faults ------------------------------------------------------------------------------------

FAULT_BASE = """
[authority.root]
common_name = "Fault Root CA"
key = "ecdsa-p256"
backend = "hsm"

[certificate.svc]
issuer = "root"
common_name = "svc.internal"
hosts = ["svc.internal"]
key = "ed25519"
"""
EXTRA_ON_TOKEN = '\n[certificate.extra]\nissuer = "root"\ncommon_name = "extra"\nbackend = "hsm"\n'


@pytest.fixture(scope="module")
def fault_base(private_hsm_factory, tmp_path_factory) -> tuple[Any, Path]:
    """A repository with a root on the token (and a local leaf), applied and committed."""
    base = tmp_path_factory.mktemp("faults")
    hsm = private_hsm_factory(base / "softhsm")
    repo = init_repo(base / "repo", hsm, backend_table(hsm) + FAULT_BASE)
    pki(repo, hsm, "apply", "--auto-approve")
    return hsm, repo


class Fault(NamedTuple):
    toml: Callable[[Any, Path], str]  # (hsm, tmp_path) → pki.toml
    env: Callable[[Any], dict[str, str]]  # hsm → environment of the `pki` child
    commands: tuple[tuple[str, ...], ...]
    message: Callable[[Any, Path], str]  # (hsm, tmp_path) → the one line on stderr


def _toml(**backend: str | None) -> Callable[[Any, Path], str]:
    def make(hsm: Any, tmp_path: Path) -> str:
        settings = {k: (v.format(tmp=tmp_path) if v else v) for k, v in backend.items()}
        return backend_table(hsm, **settings) + FAULT_BASE + EXTRA_ON_TOKEN
    return make


def _moved_svc(hsm: Any, tmp_path: Path) -> str:
    return backend_table(hsm) + FAULT_BASE.replace('key = "ed25519"\n', 'key = "ed25519"\nbackend = "hsm"\n')


BOTH = (("plan",), ("apply", "--auto-approve"))
APPLY = (("apply", "--auto-approve"),)

FAULTS = {
    "module-not-found": Fault(
        _toml(module="{tmp}-elsewhere/no-such-dir/libsofthsm2.so"), lambda hsm: hsm.env(), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: PKCS#11 module {tmp}-elsewhere/no-such-dir/libsofthsm2.so not found; "
                         "install it (SoftHSM2: apt install softhsm2) or set module = \"/path/to/pkcs11-module.so\" "
                         "in [backend.hsm]"),
    "module-not-a-pkcs11-library": Fault(
        _toml(module="/etc/passwd"), lambda hsm: hsm.env(), BOTH,
        lambda hsm, tmp: "Error: backend hsm: cannot load PKCS#11 module /etc/passwd: "),  # + the loader's words
    "module-inside-the-repository": Fault(  # a commit (a pull request) could replace it: never loaded
        _toml(module="{tmp}/pki.toml"), lambda hsm: hsm.env(), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: refusing PKCS#11 module {tmp}/pki.toml: it is inside the repository "
                         f"{tmp}, where a commit could replace it; install the module outside it (or name it in an "
                         "environment variable with module_env)"),
    "token-not-found": Fault(
        _toml(token="no-such-token"), lambda hsm: hsm.env(), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: no token labelled 'no-such-token' in {hsm.module} (found: "
                         f"'{hsm.token}'); create it (SoftHSM2: softhsm2-util --init-token --free --label "
                         "no-such-token) or fix token = in [backend.hsm]"),
    "wrong-pin": Fault(
        _toml(), lambda hsm: hsm.env(PKI_PKCS11_PIN=WRONG_PIN), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: login to PKCS#11 token '{hsm.token}' failed: the PIN in "
                         "$PKI_PKCS11_PIN is wrong"),
    "pin-env-unset": Fault(
        _toml(), lambda hsm: hsm.env(PKI_PKCS11_PIN=None), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: set $PKI_PKCS11_PIN to the user PIN of PKCS#11 token '{hsm.token}'"),
    "pin-env-empty": Fault(
        _toml(), lambda hsm: hsm.env(PKI_PKCS11_PIN=""), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: set $PKI_PKCS11_PIN to the user PIN of PKCS#11 token '{hsm.token}'"),
    "own-pin-env-unset": Fault(  # $PKI_PKCS11_PIN holds the right PIN, but pin_env names another variable
        _toml(pin_env="CI_HSM_PIN"), lambda hsm: hsm.env(), BOTH,
        lambda hsm, tmp: f"Error: backend hsm: set $CI_HSM_PIN to the user PIN of PKCS#11 token '{hsm.token}'"),
    "token-cannot-make-ed25519": Fault(
        lambda hsm, tmp: backend_table(hsm) + FAULT_BASE + EXTRA_ON_TOKEN.replace("backend", 'key = "ed25519"\nbackend'),
        lambda hsm: hsm.env(conf=hsm.restricted_conf("CKM_EC_EDWARDS_KEY_PAIR_GEN", "CKM_EDDSA")), APPLY,
        lambda hsm, tmp: f"Error: backend hsm: PKCS#11 token '{hsm.token}' cannot make ed25519 keys: it lacks "
                         "CKM_EC_EDWARDS_KEY_PAIR_GEN; choose another key type or another backend"),
    "token-cannot-take-an-ed25519-key": Fault(  # moving the local Ed25519 leaf key onto the token
        _moved_svc, lambda hsm: hsm.env(conf=hsm.restricted_conf("CKM_EC_EDWARDS_KEY_PAIR_GEN", "CKM_EDDSA")), APPLY,
        lambda hsm, tmp: f"Error: backend hsm: PKCS#11 token '{hsm.token}' cannot sign with ed25519 keys: it lacks "
                         "CKM_EDDSA; choose another key type or another backend"),
    "token-cannot-sign-with-the-root": Fault(  # a new local leaf, but the token lost CKM_ECDSA
        lambda hsm, tmp: backend_table(hsm) + FAULT_BASE + EXTRA_ON_TOKEN.replace('backend = "hsm"\n', ""),
        lambda hsm: hsm.env(conf=hsm.restricted_conf("CKM_ECDSA")), APPLY,
        lambda hsm, tmp: f"Error: backend hsm: PKCS#11 token '{hsm.token}' cannot sign with ecdsa-p256 keys: it "
                         "lacks CKM_ECDSA and CKM_ECDSA_SHA256; choose another key type or another backend"),
}


def snapshot(repo: Path, hsm: Any) -> dict[str, Any]:
    """What a failed command must leave as it was: commits, state/, the local keys, the token."""
    return {"commits": git(repo, "rev-list", "HEAD").split(), "status": git(repo, "status", "--porcelain", "state"),
            "state": tree_snapshot(repo / "state"), "keys": sorted(key_files(repo)), "token": token_objects(hsm)}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_one_line_and_changes_nothing(fault_base, tmp_path, fault):
    hsm, base_repo = fault_base
    case = FAULTS[fault]
    repo = tmp_path / "repo"
    shutil.copytree(base_repo, repo, symlinks=True)
    (repo / "pki.toml").write_text(case.toml(hsm, tmp_path / "repo"))
    before = snapshot(repo, hsm)
    expected = case.message(hsm, tmp_path / "repo")
    for command in case.commands:
        run = pki(repo, hsm, *command, env=case.env(hsm), expect=1)
        lines = run.stderr.splitlines()
        assert len(lines) == 1, str(run)
        if expected.endswith(": "):
            assert lines[0].startswith(expected), str(run)
        else:
            assert lines[0] == expected, str(run)
    assert snapshot(repo, hsm) == before
    assert not (repo / ".pki/journal/txn.json").exists()


def test_after_a_wrong_pin_the_right_one_still_works(fault_base, tmp_path):
    """SoftHSM2 does not lock the PIN; what matters here: a failed login leaves nothing behind that
    stops the next run (no stale lock, no half-open journal)."""
    hsm, base_repo = fault_base
    repo = tmp_path / "repo"
    shutil.copytree(base_repo, repo, symlinks=True)
    (repo / "pki.toml").write_text(backend_table(hsm) + FAULT_BASE + EXTRA_ON_TOKEN)
    pki(repo, hsm, "apply", "--auto-approve", env=hsm.env(PKI_PKCS11_PIN=WRONG_PIN), expect=1)
    applied = pki(repo, hsm, "apply", "--auto-approve")
    assert "Apply complete: 1 created." in applied.stdout
    ref = key_ref(repo, "extra")
    assert ref in pairs_on_token(hsm)
    pki(repo, hsm, "apply", "--auto-approve", env=hsm.env(), expect=0)  # nothing to do
    # leave the shared token as the other fault tests expect it
    subprocess.run([sys.executable, "-c", DELETE, hsm.module, hsm.token, ref, "private"], env=hsm.env(), check=True)
    subprocess.run([sys.executable, "-c", DELETE, hsm.module, hsm.token, ref, "public"], env=hsm.env(), check=True)


# -- 5: drift -------------------------------------------------------------------------------------

DRIFT_TOML = """
[authority.root]
common_name = "Drift Root CA"
backend = "hsm"

[authority.intermediate]
issuer = "root"
common_name = "Drift Intermediate CA"
backend = "hsm"

[certificate.svc]
issuer = "intermediate"
common_name = "svc on the token"
backend = "hsm"

[certificate.web]
issuer = "intermediate"
common_name = "web.internal"
hosts = ["web.internal"]
"""


def test_a_key_deleted_from_the_token_is_drift_and_apply_repairs_it(private_hsm, tmp_path):
    hsm = private_hsm
    repo = init_repo(tmp_path / "repo", hsm, backend_table(hsm) + DRIFT_TOML)
    pki(repo, hsm, "apply", "--auto-approve")
    refs = {name: key_ref(repo, name) for name in ("root", "intermediate", "svc")}
    assert pairs_on_token(hsm) == set(refs.values())

    # the intermediate's private key goes with pkcs11-tool; svc's public key with python-pkcs11
    label, key_id = refs["intermediate"].split("/")
    pkcs11_tool(hsm, "--delete-object", "--type", "privkey", "--id", key_id, "--label", label)
    subprocess.run([sys.executable, "-c", DELETE, hsm.module, hsm.token, refs["svc"], "public"],
                   env=hsm.env(), check=True)
    assert pairs_on_token(hsm) == {refs["root"]}

    # a missing key is a plan error naming it, not a plan to replace it (issue 11.5) ...
    refused = pki(repo, hsm, "plan", expect=1)
    assert f"its key {refs['intermediate']} is missing from backend hsm" in refused.stderr
    assert "--rekey-missing" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # ... unless asked for
    plan_run = pki(repo, hsm, "plan", "--rekey-missing", "--format", "json", "--detailed-exitcode", expect=2)
    changes = {c["name"]: c for c in json.loads(plan_run.stdout)["changes"]}
    assert set(changes) == {"intermediate", "svc", "web"}  # the root is fine
    assert changes["intermediate"]["action"] == "rekey"
    assert changes["intermediate"]["reasons"] == [f"its key {refs['intermediate']} is missing from backend hsm"]
    assert changes["svc"]["action"] == "rekey"
    assert f"its key {refs['svc']} is missing from backend hsm" in changes["svc"]["reasons"]
    assert changes["web"]["action"] == "reissue"
    assert changes["web"]["reasons"] == ["issuer key changed (authority.intermediate gets a new key)"]
    text = pki(repo, hsm, "plan", "--rekey-missing").stdout
    assert f"because its key {refs['intermediate']} is missing from backend hsm" in text

    applied = pki(repo, hsm, "apply", "--auto-approve", "--rekey-missing")
    assert "Apply complete: 1 reissued, 2 rekeyed." in applied.stdout
    assert f"rekey authority.intermediate: its key {refs['intermediate']} is missing from backend hsm" in \
        git(repo, "log", "-1", "--format=%B")
    new = {name: key_ref(repo, name) for name in ("root", "intermediate", "svc")}
    assert new["root"] == refs["root"]
    assert new["intermediate"] != refs["intermediate"] and new["svc"] != refs["svc"]
    # the new pairs are there, and the halves the deleted keys left behind are gone
    assert pairs_on_token(hsm) == set(new.values())
    assert len(token_objects(hsm)) == 8  # (and the audit log's key pair)
    assert "No changes." in pki(repo, hsm, "plan", "--detailed-exitcode").stdout

    out = tmp_path / "out"
    for name in ("root", "svc"):
        pki(repo, hsm, "export", name, "--dir", str(out), "--no-key")
    pki(repo, hsm, "export", "web", "--dir", str(out))
    for leaf in ("svc", "web"):
        assert openssl("verify", "-CAfile", "root.pem", "-untrusted", f"{leaf}-ca.pem", f"{leaf}.pem",
                       cwd=out).output.strip() == f"{leaf}.pem: OK"


# -- an apply killed half-way -----------------------------------------------------------------------

def test_an_apply_killed_half_way_leaves_no_stray_key_on_the_token(private_hsm, tmp_path):
    """Killed after making keys on the token: the next apply deletes them. Killed after the commit of
    a --replace: the next apply deletes the old key from the token."""
    hsm = private_hsm
    repo = init_repo(tmp_path / "repo", hsm, backend_table(hsm) + """
[authority.root]
common_name = "Crash Root CA"
backend = "hsm"

[certificate.leaf]
issuer = "root"
common_name = "leaf on the token"
backend = "hsm"
""")
    pki(repo, hsm, "apply", "--auto-approve", env=hsm.env(PKI_TEST_CRASH_AT="after-keys"), expect=137)
    assert len(pairs_on_token(hsm)) == 2  # made and journaled, not in state
    assert git(repo, "rev-list", "--all") == ""
    run = pki(repo, hsm, "apply", "--auto-approve")
    assert "deleted 2 key(s) left by an interrupted apply" in run.stderr.splitlines()
    assert "Apply complete: 2 created." in run.stdout
    refs = {name: key_ref(repo, name) for name in ("root", "leaf")}
    assert pairs_on_token(hsm) == set(refs.values())

    pki(repo, hsm, "apply", "--auto-approve", "--replace", "leaf", env=hsm.env(PKI_TEST_CRASH_AT="after-commit"),
        expect=137)
    assert git(repo, "log", "-1", "--format=%s").startswith("pki apply: 1 rekeyed")
    new_leaf = key_ref(repo, "leaf")
    assert new_leaf != refs["leaf"]
    assert pairs_on_token(hsm) == {refs["root"], refs["leaf"], new_leaf}  # the old key is deleted only later
    pki(repo, hsm, "apply", "--auto-approve")
    assert pairs_on_token(hsm) == {refs["root"], new_leaf}
    assert len(token_objects(hsm)) == 6  # (and the audit log's key pair)
    assert "No changes." in pki(repo, hsm, "plan", "--detailed-exitcode").stdout


def test_revoking_a_leaf_on_the_token_and_removing_it(private_hsm, tmp_path):
    """The CRL signed on the token lists a revoked leaf; the leaf's key stays on the token while the
    entry is listed (README: "an entry revoked but still listed keeps its key until it is removed")
    and is deleted from the token when the entry leaves pki.toml."""
    hsm = private_hsm
    toml = backend_table(hsm) + """
[authority.root]
common_name = "Revoking Root CA"
key = "ecdsa-p384"
backend = "hsm"

[certificate.leaf]
issuer = "root"
common_name = "leaf on the token"
backend = "hsm"
"""
    repo = init_repo(tmp_path / "repo", hsm, toml)
    pki(repo, hsm, "apply", "--auto-approve")
    refs = {name: key_ref(repo, name) for name in ("root", "leaf")}
    out = tmp_path / "out"
    pki(repo, hsm, "export", "leaf", "--dir", str(out), "--no-key")
    crl_check = ["verify", "-crl_check", "-CAfile", "leaf-ca.pem", "-CRLfile", str(repo / "state/crl/root.crl")]
    assert openssl(*crl_check, "leaf.pem", cwd=out).output.strip() == "leaf.pem: OK"

    (repo / "pki.toml").write_text(toml + 'revoked = { reason = "key_compromise" }\n')
    assert "Apply complete: 1 revoked, 1 CRL updated." in pki(repo, hsm, "apply", "--auto-approve").stdout
    crl = state_crl(repo, "root")
    assert crl.is_signature_valid(state_cert(repo, "root").public_key())
    assert crl.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    assert crl_reason_of(crl, state_cert(repo, "leaf").serial_number) == x509.ReasonFlags.key_compromise
    assert "certificate revoked" in openssl(*crl_check, "leaf.pem", cwd=out, expect=2).output
    assert pairs_on_token(hsm) == set(refs.values())  # still listed: the key stays
    assert "No changes." in pki(repo, hsm, "plan", "--detailed-exitcode").stdout

    (repo / "pki.toml").write_text(toml[:toml.index("[certificate.leaf]")])
    pki(repo, hsm, "apply", "--auto-approve")
    assert not (repo / "state/certs/leaf.pem").exists()
    assert pairs_on_token(hsm) == {refs["root"]}  # removed: its key is gone from the token
    assert len(token_objects(hsm)) == 4  # (and the audit log's key pair)
    assert "No changes." in pki(repo, hsm, "plan", "--detailed-exitcode").stdout


# -- bugs -----------------------------------------------------------------------------------------

def test_a_long_entry_name_works_on_the_token(private_hsm, tmp_path):
    hsm = private_hsm
    name = "n" * 64  # the longest name pki.toml allows
    toml = backend_table(hsm) + f"""
[authority.root]
common_name = "Root"
backend = "hsm"

[certificate.{name}]
issuer = "root"
common_name = "long"
backend = "hsm"
"""
    repo = init_repo(tmp_path / "repo", hsm, toml)
    run = pki(repo, hsm, "apply", "--auto-approve", expect=None)
    if run.returncode != 0:
        assert token_objects(hsm) == [], f"the failed apply left keys on the token\n{run}"
    assert run.returncode == 0, str(run)
    assert pairs_on_token(hsm) == {key_ref(repo, "root"), key_ref(repo, name)}


def test_validate_lists_every_mistake_in_the_backend_table(private_hsm, tmp_path):
    hsm = private_hsm
    repo = init_repo(tmp_path / "repo", hsm, """[backend.hsm]
plugin = "pkcs11"
module = ""
pin_env = "NOT A NAME"

[authority.root]
common_name = "Root"
backend = "hsm"
""")
    run = pki(repo, hsm, "validate", expect=1)
    lines = run.stderr.splitlines()
    assert [re.match(r"pki\.toml:\d+: (backend\.hsm\.\w+): ", line).group(1) for line in lines] == \
           ["backend.hsm.token", "backend.hsm.module", "backend.hsm.pin_env"], str(run)
