"""Logging in to Vault from a pipeline (issue 11.6), against a real OpenBao: AppRole, JWT (a token
this test signs, checked by OpenBao against ``jwt_validation_pubkeys``), ``~/.vault-token``; the
``auth`` table is checked key by key; no secret ever appears in a message."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import Pki, approle_login_mount, assert_one_line, clean_env, jwt_login_mount, new_repo, sign_jwt
from pkiascode.backend import KeyRequest, StoreContext
from pkiascode.errors import BackendUnavailable
from pkiascode.keytypes import KeyType
from pkiascode.testing import self_signed, verify_signed_by

from pkiascode_vault import PLAN_POLICY_FILE, POLICY_FILE, VaultKeyStore

pytestmark = pytest.mark.vault

ROOT = KeyRequest("root", KeyType.ECDSA_P256, authority=True, exportable=False)
LEAF = KeyRequest("web", KeyType.ECDSA_P256, authority=False, exportable=True)


@pytest.fixture
def no_token(vault_env, monkeypatch, tmp_path):
    """No $VAULT_TOKEN and a home without ~/.vault-token: only the auth table can log in."""
    monkeypatch.delenv("VAULT_TOKEN")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    vault_env.api("PUT", "sys/policies/acl/pki-apply", {"policy": Path(POLICY_FILE).read_text()})
    return vault_env


def works(store: VaultKeyStore) -> None:
    """The store is logged in with the apply policy: check, make and sign, lock, delete."""
    store.check()
    root, web = store.generate(ROOT), store.generate(LEAF)
    verify_signed_by(self_signed(store.signer(root), store.public_key(root)), store.public_key(root))
    assert store.export(web)
    with store.lock("state", {"actor": "ci", "host": "runner", "pid": "1"}):
        pass
    for ref in (root, web):
        store.delete(ref)


# -- AppRole ---------------------------------------------------------------------------------------------

@pytest.fixture
def approle(no_token, monkeypatch):
    mount, role_id, secret_id = approle_login_mount(no_token)
    monkeypatch.setenv("CI_VAULT_ROLE_ID", role_id)
    monkeypatch.setenv("CI_VAULT_SECRET_ID", secret_id)
    return mount, role_id, secret_id


def test_approle_login(approle, make_store, tmp_path):
    mount, role_id, secret_id = approle
    auth = {"method": "approle", "mount": mount, "role_id_env": "CI_VAULT_ROLE_ID",
            "secret_id_env": "CI_VAULT_SECRET_ID"}
    assert VaultKeyStore.validate({"auth": auth}) == []
    # scoped by a [pki] id: the policy's pki/+/... rules
    store = VaultKeyStore("vault", {"prefix": "pki", "auth": auth}, StoreContext(tmp_path, tmp_path / ".pki", "ci1"))
    try:
        works(store)
        assert secret_id not in repr(store._client) and store._client.token() != secret_id
    finally:
        store.close()


def test_a_refused_approle_login_is_one_line_without_the_secrets(approle, make_store, monkeypatch):
    mount, role_id, secret_id = approle
    monkeypatch.setenv("CI_VAULT_SECRET_ID", "0f6b3c1e-5b40-4c36-9b9c-" + secrets.token_hex(6))
    store = make_store(prefix="pki", auth={"method": "approle", "mount": mount, "role_id_env": "CI_VAULT_ROLE_ID",
                                           "secret_id_env": "CI_VAULT_SECRET_ID"})
    with pytest.raises(BackendUnavailable) as info:
        store.check()
    line = assert_one_line(str(info.value), role_id, secret_id, os.environ["CI_VAULT_SECRET_ID"])
    assert line.startswith(f"backend vault: Vault at {store.address} refused the approle login at "
                           f"auth/{mount}/login ("), line
    monkeypatch.delenv("CI_VAULT_SECRET_ID")
    with pytest.raises(BackendUnavailable, match=r"set \$CI_VAULT_SECRET_ID to the AppRole secret_id"):
        make_store(prefix="pki", auth={"method": "approle", "mount": mount, "role_id_env": "CI_VAULT_ROLE_ID",
                                       "secret_id_env": "CI_VAULT_SECRET_ID"}).check()


# -- JWT (GitHub Actions, GitLab CI id_tokens) ------------------------------------------------------------

@pytest.fixture
def jwt_issuer(no_token):
    """An auth/jwt mount that trusts one RSA key (as OpenBao would trust a CI's OIDC keys)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mount = jwt_login_mount(no_token, key, issuer="https://ci.example.test", audience="pkiascode", user_claim="sub",
                            bound={"ref": "refs/heads/main"})
    return mount, key


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": "https://ci.example.test", "sub": "repo:example/pki:ref:refs/heads/main", "aud": "pkiascode",
            "ref": "refs/heads/main", "iat": now, "nbf": now - 5, "exp": now + 300, **extra}


def test_jwt_login(jwt_issuer, make_store, monkeypatch):
    mount, key = jwt_issuer
    token = sign_jwt(key, claims())
    monkeypatch.setenv("CI_JOB_JWT", token)
    works(make_store(prefix="pki", auth={"method": "jwt", "mount": mount, "role": "pki-apply", "jwt_env": "CI_JOB_JWT"}))


def test_a_jwt_the_role_does_not_accept_is_refused(jwt_issuer, make_store, monkeypatch):
    mount, key = jwt_issuer
    auth = {"method": "jwt", "mount": mount, "role": "pki-apply", "jwt_env": "CI_JOB_JWT"}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (sign_jwt(key, claims(ref="refs/heads/feature")),  # a branch the role is not bound to
                  sign_jwt(other, claims())):  # signed by someone else
        monkeypatch.setenv("CI_JOB_JWT", token)
        with pytest.raises(BackendUnavailable) as info:
            make_store(prefix="pki", auth=auth).check()
        line = assert_one_line(str(info.value), token, token.split(".")[2])
        assert f"refused the jwt login at auth/{mount}/login" in line


# -- a token: $VAULT_TOKEN, then ~/.vault-token ---------------------------------------------------------

def test_token_from_the_vault_token_file(no_token, make_store, monkeypatch, tmp_path):
    home = Path(os.environ["HOME"])
    (home / ".vault-token").write_text(no_token.token + "\n")  # as `vault login` writes it
    works(make_store(prefix="pki"))
    works(make_store(prefix="pki", auth={"method": "token"}))
    # $VAULT_TOKEN comes first
    monkeypatch.setenv("VAULT_TOKEN", "s.not-the-right-one-" + secrets.token_hex(8))
    with pytest.raises(BackendUnavailable, match=r"rejected the token in \$VAULT_TOKEN"):
        make_store(prefix="pki").check()
    monkeypatch.delenv("VAULT_TOKEN")
    (home / ".vault-token").write_text("s.expired-or-wrong-" + secrets.token_hex(8))
    with pytest.raises(BackendUnavailable, match=r"rejected the token in ~/.vault-token"):
        make_store(prefix="pki").check()


def test_kubernetes_reads_the_service_account_token_file(no_token, make_store, tmp_path):
    auth = {"method": "kubernetes", "role": "pki-apply", "token_file": str(tmp_path / "sa-token")}
    with pytest.raises(BackendUnavailable, match=r"the token file .*sa-token does not exist"):
        make_store(prefix="pki", auth=auth).check()
    jwt = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_hex(24)
    (tmp_path / "sa-token").write_text(jwt)
    with pytest.raises(BackendUnavailable) as info:  # no kubernetes auth at auth/kubernetes here
        make_store(prefix="pki", auth=auth).check()
    line = assert_one_line(str(info.value), jwt)
    assert "refused the kubernetes login at auth/kubernetes/login" in line


# -- the auth table --------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth,message", [
    ({"method": "approle", "role_id_env": "A", "secret_id_env": "B", "role_id": "x"},
     "auth.role_id: unknown key for method 'approle' (did you mean role_id_env?)"),
    ({"method": "approle", "role_id_env": "A", "secret_id": "s3cr3t", "secret_id_env": "B"},
     "auth.secret_id: unknown key for method 'approle' (did you mean secret_id_env?) (a secret is never "
     "written in pki.toml: name its environment variable or file)"),
    ({"method": "jwt", "role": "r", "jwt": "eyJ...", "jwt_env": "J"},
     "auth.jwt: unknown key for method 'jwt' (did you mean jwt_env?)"),
    ({"method": "jwt", "role": "r"}, "auth.jwt_env is required for method 'jwt'"),
    ({"method": "approle", "secret_id_env": "B"}, "auth.role_id_env is required for method 'approle'"),
    ({"method": "token", "mount": "x"}, "auth.mount: unknown key for method 'token'"),
    ({"method": "oidc"}, "auth.method must be one of 'token', 'approle', 'jwt', 'kubernetes', not 'oidc'"),
    ({"method": "jwt", "role": "r", "jwt_env": "NOT A NAME"}, "auth.jwt_env must name an environment variable"),
    ({"method": "kubernetes", "role": "r", "token_file": "token"}, "auth.token_file must be an absolute path"),
    ({"method": "approle", "role_id_env": "A", "secret_id_env": "B", "mount": "../sys"},
     "auth.mount must be the path the auth method is enabled at"),
])
def test_auth_table_is_checked_key_by_key(auth, message):
    problems = VaultKeyStore.validate({"auth": auth})
    assert [o for o, _ in problems] == ["auth"] and problems[0][1].startswith(message), problems


def test_pki_validate_names_the_line_and_the_key(tmp_path, env):
    repo = new_repo(tmp_path / "repo", '[backend.vault]\nplugin = "vault"\n'
                                       'auth = { method = "approle", role_id_env = "A", secret_idd_env = "B" }\n\n'
                                       '[authority.root]\ncommon_name = "Root"\nbackend = "vault"\n')
    r = Pki(repo, clean_env())("validate", expect=1)
    lines = r.stderr.strip().splitlines()
    assert [assert_one_line(line) for line in lines] == [
        "pki.toml:3: backend.vault.auth: auth.secret_idd_env: unknown key for method 'approle' (did you mean "
        "secret_id_env?); it takes method, mount, role_id_env, secret_id_env",
        "pki.toml:3: backend.vault.auth: auth.secret_id_env is required for method 'approle'"], r.stderr


# -- the read-only policy --------------------------------------------------------------------------------

@pytest.mark.parametrize("pki_id", [None, "plan0id1"], ids=["unscoped", "scoped"])
def test_the_plan_policy_sees_keys_and_nothing_more(vault_env, monkeypatch, tmp_path, pki_id):
    from pkiascode.errors import BackendError, LockError

    context = StoreContext(tmp_path, tmp_path / ".pki", pki_id)
    writer = VaultKeyStore("vault", {"prefix": "pki"}, context)  # the root token of vault_env
    root, web = writer.generate(ROOT), writer.generate(LEAF)
    token = vault_env.make_token(Path(PLAN_POLICY_FILE).read_text(), name="pki-plan")
    monkeypatch.setenv("VAULT_TOKEN", token)
    reader = VaultKeyStore("vault", {"prefix": "pki"}, context)
    try:
        reader.check()
        assert reader.missing([root, web]) == set()
        assert {root, web} <= set(reader.list_keys())
        assert reader.public_key(root)  # a Transit key's public half
        for action in (lambda: reader.export(web), lambda: reader.generate(LEAF), lambda: reader.delete(web),
                       lambda: reader.signer(root).sign(b"x", ec.ECDSA(hashes.SHA256()))):
            with pytest.raises(BackendError, match="permission denied"):
                action()
        with pytest.raises((BackendError, LockError)):
            with reader.lock("state", {"actor": "pr", "host": "runner", "pid": "1"}):
                pass
        assert writer.missing([root, web]) == set()  # nothing deleted
    finally:
        for ref in (root, web):
            writer.delete(ref)
        reader.close()
        writer.close()
