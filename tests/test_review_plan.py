"""Pull-request review (issue 12), end to end through the real ``pki``: an offline plan that needs no
secrets and contacts no key store (a real OpenBao for the apply, a trap listener for the plan), a
markdown plan a reviewer can approve from, `pki plan --base` for a branch behind its base, and
`pki show --file` as git's diff driver for CRLs."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

from helpers import (
    SMALL_PKI, Pki, clean_env, commit_all, edit_toml, git, inventory, new_repo, write_project,
)

OFFLINE = "key stores not checked"


# -- offline: no token, an address that must not be called --------------------------------------

class Trap:
    """A TCP listener on 127.0.0.1 that counts the connections made to it (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def bao() -> Iterator[object]:
    from vault.conftest import _server  # the suite's real OpenBao (tests/vault/conftest.py)

    with _server(dev=True) as server:
        yield server


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


VAULT_PKI = '[backend.vault]\nplugin = "vault"\nprefix = "PREFIX"\n\n' + \
    SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "vault"\n', 1)


@pytest.mark.vault
def test_offline_plan_of_a_vault_project_needs_no_token_and_calls_no_one(tmp_path, bao, trap):
    repo = new_repo(tmp_path / "repo", VAULT_PKI.replace("PREFIX", f"review-{id(trap) % 10**8}"), commit=True)
    Pki(repo, clean_env(VAULT_ADDR=bao.address, VAULT_TOKEN=bao.token)).apply()
    edit_toml(repo, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text()
                                   + '\n[certificate.api]\nissuer = "inter"\ncommon_name = "api"\n')
    # the pull-request job: no token anywhere, and the address is a listener that counts calls
    pr = Pki(repo, clean_env(VAULT_ADDR=trap.address, HOME=str(tmp_path / "home")))

    data = pr.plan_json("--offline")
    assert data["offline"] is True and any(OFFLINE in w for w in data["warnings"])
    assert sorted((c["action"], c["name"]) for c in data["changes"]) == [("create", "api"), ("reissue", "server")]
    text = pr.ok("plan", "--offline").stdout
    assert OFFLINE in text and "certificate.api will be created" in text
    md = pr.ok("plan", "--offline", "--format", "markdown").stdout
    assert md.startswith("<!-- pkiascode plan -->\n") and "**Offline plan: key stores not checked.**" in md
    assert "| SANs | DNS: `localhost`; IP: `127.0.0.1` | DNS: `localhost`; IP: `127.0.0.1`, `::1` |" in md
    assert pr("plan", "--offline", "--detailed-exitcode", expect=2).returncode == 2
    assert trap.connections == 0

    # without --offline it needs a token; given one, it calls the store (the trap catches that)
    assert "VAULT_TOKEN" in pr("plan", expect=1).stderr
    pr("plan", env={"VAULT_TOKEN": "not-a-secret"}, expect=1)
    assert trap.connections > 0


def test_offline_plan_refuses_to_be_saved(tmp_path, env):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    r = Pki(repo)("plan", "--offline", "--out", "p.json", expect=1)
    assert "--out" in r.stderr and not (repo / "p.json").exists()


# -- the markdown plan of a real pull request ----------------------------------------------------

def test_markdown_plan_of_a_pull_request(applied):
    repo, pki = applied
    edit_toml(repo, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "server.test"]')
    edit_toml(repo, 'common_name = "client-1"\n', 'common_name = "client-1"\nkey = "rsa-2048"\n')
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text() + textwrap_leaf())
    md = pki.ok("plan", "--format", "markdown").stdout
    first, second = md.splitlines()[:2]
    assert (first, second) == ("<!-- pkiascode plan -->", "### pkiascode plan")
    assert "**Plan: 1 to create, 1 to reissue, 1 to rekey.**" in md
    assert "| SANs | DNS: `localhost`; IP: `127.0.0.1` | DNS: `localhost`, `server.test`; IP: `127.0.0.1` |" in md
    assert "| key | `ecdsa-p256 (local)` | `rsa-2048 (local)` |" in md
    assert "- the old key of `certificate.client` (rekey)" in md
    assert "| subject | `O=pkiascode tests, CN=api` |" in md
    assert "| SANs | DNS: `api.test`; IP: `10.0.0.1`; email: `ops@api.test` |" in md
    assert "| issuer | `inter` |" in md and "| key | `ecdsa-p384 (local)` |" in md
    assert "| issuer chain | `inter` → `root` |" in md and "| exportable | `true` |" in md
    api = md.split("create `certificate.api`")[1]
    assert re.search(r"\| validity \| `90d` \|\n\| not after \| `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ` \|", api)
    # the expiry outlook: the 90-day leaves are changed by this plan, nothing else is due
    assert "**Expiry outlook** (next 90 days after " in md and "Nothing else falls due in the next 90 days." in md
    assert "<details" not in md and len(md) < 65536


def textwrap_leaf() -> str:
    return ('\n[certificate.api]\nissuer = "inter"\ncommon_name = "api"\nkey = "ecdsa-p384"\n'
            'hosts = ["api.test", "10.0.0.1", "ops@api.test"]\n')


# -- a branch behind its base --------------------------------------------------------------------

def test_a_branch_behind_its_base_plans_against_the_base_state(applied):
    repo, pki = applied
    git(repo, "branch", "pr")                    # the pull request starts here ...
    pki.apply("--replace", "client")             # ... and main moves on: client gets a new key
    main_client = inventory(repo)["client"]["key"]["ref"]

    git(repo, "checkout", "-q", "pr")
    edit_toml(repo, 'hosts = ["localhost", "127.0.0.1"]', 'hosts = ["localhost", "127.0.0.1", "::1"]')
    commit_all(repo, "server: ::1")
    assert inventory(repo)["client"]["key"]["ref"] != main_client  # the branch's state is behind

    # without --base: the branch's state names a client key main has replaced (and deleted)
    behind = pki("plan", expect=1).stderr
    assert behind.startswith("Error: certificate.client: its key ") and "is missing from backend local" in behind

    # with --base main: only the change this branch makes, and a warning that state/ differs
    data = pki.plan_json("--base", "main")
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("reissue", "server")]
    assert any("state/ differs from main's" in w for w in data["warnings"])
    offline = pki.plan_json("--base", "main", "--offline")
    assert [(c["action"], c["name"]) for c in offline["changes"]] == [("reissue", "server")]
    assert offline["offline"] is True

    # up to date with main: no warning
    git(repo, "merge", "-q", "--no-edit", "main")
    data = pki.plan_json("--base", "main")
    assert [(c["action"], c["name"]) for c in data["changes"]] == [("reissue", "server")]
    assert not any("differs" in w for w in data["warnings"])


# -- pki show --file and the CRL diff driver -----------------------------------------------------

def test_init_sets_up_a_crl_diff_driver_that_git_diff_uses(tmp_path, env):
    repo = tmp_path / "repo"
    pki = Pki(repo)
    out = Pki(tmp_path).ok("init", "repo").stdout
    assert 'git config diff.pki-crl.textconv "pki show --file"' in out
    assert "state/crl/*.crl diff=pki-crl" in (repo / ".gitattributes").read_text().splitlines()
    write_project(repo, SMALL_PKI, gitignore=False)
    commit_all(repo, "init")
    pki.apply()
    git(repo, "config", "diff.pki-crl.textconv", "pki show --file")
    edit_toml(repo, 'common_name = "client-1"\n', 'common_name = "client-1"\nrevoked = { reason = "superseded" }\n')
    commit_all(repo, "revoke client")
    pki.apply()
    diff = git(repo, "diff", "HEAD~1", "HEAD", "--", "state/crl/inter.crl")
    serial = inventory(repo)["client"]["serial"]
    assert f"+  serial {serial} revoked " in diff and "(superseded)" in diff
    assert "-Number: 1" in diff and "+Number: 2" in diff
    assert "BEGIN X509 CRL" not in diff


def test_show_file_prints_a_certificate_and_a_crl(applied, tmp_path):
    repo, pki = applied
    cert = pki.ok("show", "--file", str(repo / "state/certs/server.pem")).stdout
    assert "Subject: CN=localhost,O=pkiascode tests" in cert
    assert "SANs: DNS:localhost, IP:127.0.0.1" in cert
    assert f"SHA-256: {inventory(repo)['server']['sha256']}" in cert
    crl = pki.ok("show", "--file", str(repo / "state/crl/inter.crl")).stdout
    assert "CRL of: CN=Test Intermediate CA,O=pkiascode tests" in crl and "Revoked: 0" in crl
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    r = pki("show", "--file", str(junk), expect=1)
    assert "is not a certificate or CRL" in r.stderr and "\n" not in r.stderr.strip()
    assert "pass NAME or --file PATH" in pki("show", expect=1).stderr


@pytest.mark.parametrize("example", [(), ("--example", "kubernetes-the-hard-way")], ids=["minimal", "kthw"])
def test_init_writes_a_random_pki_id(tmp_path, env, example):
    Pki(tmp_path).ok("init", "p", *example)
    text = (tmp_path / "p/pki.toml").read_text()
    (pki_id,) = re.findall(r'^id = "([a-z0-9]{12})"', text, flags=re.M)
    assert text.index("[pki]") < text.index(pki_id)
    Pki(tmp_path / "p").ok("validate")
    Pki(tmp_path).ok("init", "q", *example)
    assert pki_id not in (tmp_path / "q/pki.toml").read_text()
