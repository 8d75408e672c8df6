"""Threat: a pull request forges the audit log's trust anchor and un-revokes a compromised certificate
(second review, findings F1 and F3-F6), against real git repositories, the real local key store and the
real ``pki`` command.

The base: root → inter → server, client, with ``client`` revoked for key_compromise, applied and
signed. Each attacking pull request drops the revocation from pki.toml, re-chains state/audit.jsonl
without the revoke line, clears the inventory's revocation and deletes inter's CRL; what differs is
how it makes the forged log look signed:

- F1: state/audit-signatures.json whose keys[0] is the attacker's key and keys[1] the real audit key,
  "endorsed" by the attacker's key from past the log's end, arriving through a side branch forked
  before any state existed (git's history simplification then shows that branch's commit as the
  file's first), merged by a merge commit or by fast-forward;
- F3: an unendorsed pin appended for a key the store does hold, a leaf's (whose private key the
  attacker has, as ``pki export`` gives a service owner), signing the forged lines;
- F4: the F1 forgery in a state directory moved by the same commit (``[pki] state_dir``).

Online plan and apply refuse, in one line; apply commits nothing and writes no CRL without the
revoked serial. A forged file that pins the attacker's key alone makes the real audit key look lost:
the rekey of a lost key (``--rekey-missing``) must not carry that forgery on either. Also (F5) a
hostile line type in an unsigned log is a one-line error naming the file, and (F6) a lost audit key,
with nothing else to do, is said by plan and rekeyed by ``--rekey-missing`` or ``--replace @audit``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from helpers import Pki, applied_repo, assert_one_line, commit_all, copy_repo, edit_toml, git, head, load_key, new_repo

from pkiascode import audit, auditsign

REVOKED = 'revoked = { reason = "key_compromise" }\n'  # the pki.toml line that revokes client
SIGS = "audit-signatures.json"
T = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def _base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SMALL_PKI applied, then client revoked (key_compromise) and applied: made once per module."""
    repo = applied_repo(tmp_path_factory.mktemp("anchor") / "repo")
    edit_toml(repo, 'common_name = "client-1"\n', 'common_name = "client-1"\n' + REVOKED)
    commit_all(repo, "revoke client")
    Pki(repo).apply()
    assert Pki(repo).plan_exit() == 0
    return repo


@pytest.fixture
def base(_base: Path, tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki, int]:
    """(a copy of the base repository, its pki, client's serial) with client's serial on inter's CRL."""
    repo = copy_repo(_base, tmp_path / "repo")
    serial = int(json.loads((repo / "state/inventory.json").read_text())["objects"]["client"]["serial"], 16)
    assert serial in _crl_serials(repo / "state/crl/inter.crl")
    return repo, Pki(repo, env), serial


def _crl_serials(path: Path) -> set[int]:
    return {r.serial_number for r in x509.load_pem_x509_crl(path.read_bytes())}


def _spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _sign(key, data: bytes) -> str:
    sig = key.sign(data) if isinstance(key, ed25519.Ed25519PrivateKey) else key.sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(sig).decode()


def _write_inventory(state: Path, inv: dict) -> None:
    (state / "inventory.json").write_text(json.dumps(inv, indent=2, sort_keys=True) + "\n")


def _unrevoke(state: Path, lines: list[dict]) -> dict:
    """The inventory of ``state`` with client not revoked and its head at ``lines[-1]``; inter's CRL gone."""
    inv = json.loads((state / "inventory.json").read_text())
    inv["revocations"] = []
    inv["objects"]["client"]["revoked"] = None
    inv["objects"]["inter"]["crl"]["revoked"] = 0
    inv["audit_head"] = {"seq": lines[-1]["seq"], "hash": lines[-1]["hash"]}
    _write_inventory(state, inv)
    (state / "crl/inter.crl").unlink()
    return inv


def forge_anchor(repo: Path, only_the_attackers_key: bool = False) -> bytes:
    """The F1 forgery (review2/f1/forge.py): the log re-chained without client's revoke line, the
    inventory and CRL to match, and a signatures file (returned, not written) whose keys[0] is the
    attacker's ed25519 key and keys[1] the real audit key "endorsed" by it from past the log's end,
    with the head signed by the attacker (``only_the_attackers_key``: keys[0] alone)."""
    path = repo / "state/audit.jsonl"
    lines = [json.loads(t) for t in path.read_text().splitlines()]
    legit = json.loads((repo / "state" / SIGS).read_text())
    kept = [dict(t) for t in lines if not (t["action"] == "revoke" and t["name"] == "client")]
    assert len(kept) == len(lines) - 1
    prev, out = audit.GENESIS, []
    for n, line in enumerate(kept, 1):
        line.pop("hash")
        line.update(seq=n, prev=prev)
        if line["action"] == "update_crl" and "reasons" in line:
            line["reasons"] = ["CRL refresh"]
        line["hash"] = prev = audit.line_hash(line)
        out.append(line)
    path.write_bytes(audit.render_lines(out))
    _unrevoke(repo / "state", out)
    attacker = ed25519.Ed25519PrivateKey.generate()
    der = _spki(attacker)
    afp = hashlib.sha256(der).hexdigest()
    apin = {"fingerprint": afp, "public_key": base64.b64encode(der).decode(), "algorithm": "ed25519",
            "backend": "local", "ref": "audit-log-00000000.noexport.pem", "since_seq": 1, "time": T,
            "endorsement": None}
    lpin = dict(legit["keys"][-1], since_seq=out[-1]["seq"] + 1)
    lpin["endorsement"] = _sign(attacker, auditsign.pin_message(lpin, afp))
    top = {"seq": out[-1]["seq"], "hash": out[-1]["hash"], "time": T, "key": afp}
    top["signature"] = _sign(attacker, auditsign.head_message(top))
    keys = [apin] if only_the_attackers_key else [apin, lpin]
    return auditsign.render({"format_version": 1, "keys": keys, "heads": [top]})


def _assert_refused(repo: Path, pki: Pki, serial: int, state: str = "state", says: str | None = "audit") -> None:
    """Online plan and apply refuse, plan in one line (saying ``says``); apply commits nothing and
    writes no CRL of inter that leaves client's serial out."""
    before = head(repo)
    r = pki("plan", expect=None)
    assert r.returncode == 1, f"the forged audit log was planned:\n{r}"
    line = assert_one_line(r.stderr.strip())
    assert says is None or says in line, r
    r = pki("apply", "--auto-approve", expect=None)
    assert r.returncode != 0, f"the forged audit log was applied:\n{r}"
    assert head(repo) == before, "apply committed the forged state"
    crl = repo / state / "crl/inter.crl"
    assert not crl.exists() or serial in _crl_serials(crl), "inter's CRL no longer lists client"
    assert git(repo, "status", "--porcelain", "--", state) == "", "apply left changes in state"


# -- F1: the first pin swapped through a merge ------------------------------------------------------

def _merge_through_a_side_branch(repo: Path, merge: str, only_the_attackers_key: bool = False) -> bytes:
    """The F1 pull request, merged into main by ``merge``: the forgery committed with the legitimate
    signatures file, then the forged file added on a side branch from the first commit (before any
    state existed) and merged into the pull request. Returns the forged signatures file."""
    init = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    git(repo, "checkout", "-q", "-b", "pr")
    edit_toml(repo, REVOKED, "")
    forged = forge_anchor(repo, only_the_attackers_key)
    commit_all(repo, "tidy client entry")  # the pull request keeps the legitimate signatures file here
    git(repo, "checkout", "-q", "-b", "side", init)
    (repo / "state").mkdir()
    (repo / "state" / SIGS).write_bytes(forged)
    git(repo, "add", f"state/{SIGS}")
    git(repo, "commit", "-q", "-m", "add signatures")
    git(repo, "checkout", "-q", "pr")
    git(repo, "merge", "-q", "side", "-m", "merge side", check=False)  # add/add conflict: theirs
    (repo / "state" / SIGS).write_bytes(forged)
    git(repo, "add", f"state/{SIGS}")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", "merge side")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", merge, "pr", *(["-m", "Merge pull request #7"] if merge == "--no-ff" else []))
    assert (repo / "state" / SIGS).read_bytes() == forged and not (repo / "state/crl/inter.crl").exists()
    return forged


@pytest.mark.parametrize("merge", ["--no-ff", "--ff-only"])
def test_a_pin_swapped_by_a_branch_from_before_any_state_is_refused(base, merge):
    repo, pki, serial = base
    _merge_through_a_side_branch(repo, merge)
    _assert_refused(repo, pki, serial)
    assert pki("audit", "verify", expect=None).returncode == 1, "pki audit verify passed the forged log"


@pytest.mark.parametrize("how", ["merge", "state_dir"])
def test_a_swapped_first_pin_is_not_taken_for_a_lost_audit_key(base, how):
    """The forged file pins the attacker's key alone (under a ref the store does not hold), arriving
    through a side branch (F1) or in a moved state directory (F4): the store's audit key then looks
    lost, and a rekey without its endorsement (``--rekey-missing``) would carry the forged log on. The
    first pin git's history records is the real key's, so plan and that apply refuse."""
    repo, pki, serial = base
    state = "state"
    if how == "merge":
        _merge_through_a_side_branch(repo, "--no-ff", only_the_attackers_key=True)
    else:
        state = "pki-state"
        _move_state_with_the_forgery(repo, only_the_attackers_key=True)
    before = head(repo)
    for args in (["plan"], ["plan", "--rekey-missing"]):
        r = pki(*args, expect=None)
        assert r.returncode == 1, f"the forged first pin was planned:\n{r}"
        assert_one_line(r.stderr.strip())
    r = pki("apply", "--auto-approve", "--rekey-missing", expect=None)
    assert r.returncode != 0, f"the forged first pin was applied:\n{r}"
    assert head(repo) == before, "apply committed the forged state"
    crl = repo / state / "crl/inter.crl"
    assert not crl.exists() or serial in _crl_serials(crl), "inter's CRL no longer lists client"


# -- F3: a leaf's key pinned as the audit key ------------------------------------------------------

def test_a_leaf_key_pinned_as_the_audit_key_is_refused(base, tmp_path):
    """The store holds the pinned key, but it is the server certificate's key, which its owner exported:
    no audit key at all."""
    repo, pki, serial = base
    pki.ok("export", "server", "--dir", str(tmp_path / "svc"))
    leaf = load_key(tmp_path / "svc/server-key.pem")
    edit_toml(repo, REVOKED, "")
    state = repo / "state"
    inv = json.loads((state / "inventory.json").read_text())
    lines = [json.loads(t) for t in (state / "audit.jsonl").read_text().splitlines()]
    objs = inv["objects"]

    def ev(action: str, name: str, **kw) -> dict:
        o = objs[name]
        return audit.event(action, o["kind"], name, time=T, actor="ci", serial=o["serial"], sha256=o["sha256"],
                           not_after=o["not_after"], backend="local", plan=None, **kw)

    new = audit.chain([ev("revoke", "inter", reason="superseded", retired=True), ev("create", "inter"),
                       ev("create", "client")], prev=lines[-1]["hash"], seq=lines[-1]["seq"])
    with (state / "audit.jsonl").open("ab") as f:
        f.write(audit.render_lines(new))
    _unrevoke(state, new)
    sigs = json.loads((state / SIGS).read_text())
    der = _spki(leaf)
    fp = hashlib.sha256(der).hexdigest()
    assert objs["server"]["key"]["ref"] not in {k["ref"] for k in sigs["keys"]}
    sigs["keys"].append({"fingerprint": fp, "public_key": base64.b64encode(der).decode(), "algorithm": "ecdsa-p256",
                         "backend": "local", "ref": objs["server"]["key"]["ref"], "since_seq": new[0]["seq"],
                         "time": T, "endorsement": None})
    top = {"seq": new[-1]["seq"], "hash": new[-1]["hash"], "time": T, "key": fp}
    top["signature"] = _sign(leaf, auditsign.head_message(top))
    sigs["heads"].append(top)
    (state / SIGS).write_bytes(auditsign.render(sigs))
    commit_all(repo, "client: tidy")
    _assert_refused(repo, pki, serial)


# -- F4: the forgery in a moved state directory -----------------------------------------------------

def _move_state_with_the_forgery(repo: Path, only_the_attackers_key: bool = False) -> None:
    """The F4 pull request, one commit (so any merge style): ``[pki] state_dir = "pki-state"``, state/
    moved there, with the F1 forgery in it."""
    edit_toml(repo, REVOKED, "")
    (repo / "pki.toml").write_text('[pki]\nstate_dir = "pki-state"\n\n' + (repo / "pki.toml").read_text())
    forged = forge_anchor(repo, only_the_attackers_key)
    (repo / "state" / SIGS).write_bytes(forged)
    shutil.move(repo / "state", repo / "pki-state")
    commit_all(repo, "move state under pki-state/, tidy client")
    assert git(repo, "ls-files", "state") == ""


def test_a_forged_anchor_in_a_moved_state_dir_is_refused(base):
    repo, pki, serial = base
    _move_state_with_the_forgery(repo)
    _assert_refused(repo, pki, serial, state="pki-state", says=None)


@pytest.mark.parametrize("how", ["signatures deleted", "project moved"])
def test_a_moved_state_without_its_pin_is_refused(base, how):
    """Review R5: the forgery moved where no pki.toml of history put the state directory, either
    without any signatures file (then a log without signed heads only warned, and apply pinned a new
    key over the forged log) or with the whole project moved into a subdirectory by ``git mv`` (a
    rename, which git's log does not list as an add unless told)."""
    repo, pki, serial = base
    edit_toml(repo, REVOKED, "")
    forged = forge_anchor(repo, only_the_attackers_key=True)
    if how == "signatures deleted":
        (repo / "state" / SIGS).unlink()
        shutil.move(repo / "state", repo / "s2")
        (repo / "pki.toml").write_text('[pki]\nstate_dir = "s2"\n\n' + (repo / "pki.toml").read_text())
        commit_all(repo, "tidy")
        _assert_refused(repo, pki, serial, state="s2", says="missing or without keys, but commit")
    else:
        (repo / "state" / SIGS).write_bytes(forged)
        (repo / "pki").mkdir()
        for name in ("pki.toml", "state"):
            shutil.move(repo / name, repo / "pki" / name)
        commit_all(repo, "the PKI in its own directory")
        assert "R" in git(repo, "show", "--stat", "--format=", "-M", "--name-status", "HEAD")  # a rename to git
        _assert_refused(repo / "pki", Pki(repo / "pki", pki.env), serial, says="the pinned key was swapped")


# -- F5: a hostile line type in an unsigned log -----------------------------------------------------

ROOT_ONLY = '[authority.root]\ncommon_name = "Root"\nkey = "ecdsa-p256"\n'


@pytest.fixture(scope="module")
def _unsigned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root applied, its signatures file never committed (a log from before signed heads)."""
    repo = new_repo(tmp_path_factory.mktemp("unsigned") / "repo", ROOT_ONLY, commit=True)
    Pki(repo).apply()
    git(repo, "rm", "-q", f"state/{SIGS}")
    git(repo, "commit", "-q", "--amend", "--no-edit")
    assert git(repo, "log", "--all", "--format=%h", "--", f"state/{SIGS}") == ""
    assert Pki(repo).plan_exit() == 0
    return repo


@pytest.mark.parametrize("field, value", [("name", ["x"]), ("name", {"x": 1}), ("action", ["revoke"])],
                         ids=["name-list", "name-object", "action-list"])
def test_a_hostile_line_type_in_an_unsigned_log_is_one_line_naming_the_log(_unsigned, tmp_path, env, field, value):
    repo = copy_repo(_unsigned, tmp_path / "repo")
    pki = Pki(repo, env)
    lines = [json.loads(t) for t in (repo / "state/audit.jsonl").read_text().splitlines()]
    ev = audit.event("revoke", "certificate", "x", time=T, actor="a", serial="01", sha256=None, not_after=None,
                     backend="local", plan=None, reason="key_compromise")
    ev[field] = value
    new = audit.chain([ev], prev=lines[-1]["hash"], seq=lines[-1]["seq"])
    with (repo / "state/audit.jsonl").open("ab") as f:
        f.write(audit.render_lines(new))
    inv = json.loads((repo / "state/inventory.json").read_text())
    inv["audit_head"] = {"seq": new[-1]["seq"], "hash": new[-1]["hash"]}
    _write_inventory(repo / "state", inv)
    for args in (["plan"], ["audit", "verify"]):
        r = pki(*args, expect=None)
        assert r.returncode == 1, r
        assert "audit.jsonl" in assert_one_line(r.stderr.strip()), r
        assert "unexpected" not in r.output.lower(), r


# -- F6: the audit key lost, nothing else to do -----------------------------------------------------

@pytest.mark.parametrize("remedy", [("--rekey-missing",), ("--replace", "@audit")], ids=["rekey-missing", "replace"])
def test_a_lost_audit_key_is_planned_and_rekeyed(base, remedy):
    repo, pki, _ = base
    ref = json.loads((repo / "state" / SIGS).read_text())["keys"][-1]["ref"]
    (repo / ".pki/keys" / ref).unlink()
    # said by plan as a warning (a fresh clone's plan still shows what else it would do; an apply
    # with changes stops before any, `auditsign.check_ready`)
    r = pki("plan", expect=0)
    assert "missing" in r.stdout and "--replace @audit" in r.stdout, f"plan did not say the audit key is missing:\n{r}"
    r = pki("plan", *remedy, expect=None)
    assert r.returncode == 0 and "audit" in r.stdout, r
    before = head(repo)
    pki.apply(*remedy)
    assert head(repo) != before
    sigs = json.loads((repo / "state" / SIGS).read_text())
    assert len(sigs["keys"]) == 2 and (repo / ".pki/keys" / sigs["keys"][-1]["ref"]).exists()
    # the new pin has no endorsement (the lost key cannot make one): trusted only as the operator says
    assert "is not endorsed" in pki("plan", expect=1).stderr
    assert pki.plan_exit("--trust-pin", sigs["keys"][-1]["fingerprint"]) == 0, pki("plan")


def test_the_reviewed_rekey_of_a_present_audit_key_then_plans_nothing(base):
    repo, pki, _ = base
    pki.apply("--replace", "@audit")
    sigs = json.loads((repo / "state" / SIGS).read_text())
    assert len(sigs["keys"]) == 2 and sigs["keys"][1]["endorsement"]
    assert pki.plan_exit() == 0, pki("plan")
    pki.ok("audit", "verify")


# -- review R4 H3: a file of that name elsewhere in history wedges nothing --------------------------

def test_a_file_of_that_name_that_pkiascode_did_not_write_wedges_nothing(base):
    """A merged pull request added ``docs/audit-signatures.json`` (not JSON) and removed it again (an
    empty net diff): plan and verify still pass, since it pins nothing (review R4 H3: it was fatal)."""
    repo, pki, _ = base
    _add_and_remove_in_a_merged_pr(repo, b"{")
    assert pki.plan_exit() == 0, pki("plan")
    pki.ok("audit", "verify")


def test_another_pin_anywhere_in_history_is_a_conflict_the_operator_settles(base):
    """The same with a signatures file pinning another key: every commit that adds a file of that
    name counts, wherever it is (a pull request that moves the project elsewhere must not start a new
    history, review R5), so plan refuses, in one line naming the commit, until the operator, having
    reviewed it, trusts this PKI's first pin."""
    repo, pki, _ = base
    der = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = {"fingerprint": hashlib.sha256(der).hexdigest(), "public_key": base64.b64encode(der).decode(),
           "algorithm": "ed25519", "backend": "local", "ref": "audit-log-0badc0de.noexport.pem", "since_seq": 1,
           "time": "2026-12-01T00:00:00Z", "endorsement": None}
    _add_and_remove_in_a_merged_pr(repo, auditsign.render({"format_version": 1, "keys": [pin], "heads": []}))
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    ours = json.loads((repo / "state" / SIGS).read_text())["keys"][0]["fingerprint"]
    assert f"(docs/{SIGS}): the pinned key was swapped, or that file is another PKI's" in line, line
    assert line.endswith(f"--trust-pin {ours}); restore state/ from git (`git checkout -- state`) before planning")
    assert pki.plan_exit("--trust-pin", ours) == 0
    pki.ok("audit", "verify", "--trust-pin", ours)


def _add_and_remove_in_a_merged_pr(repo: Path, content: bytes) -> None:
    git(repo, "checkout", "-q", "-b", "pr")
    (repo / "docs").mkdir()
    (repo / "docs" / SIGS).write_bytes(content)
    commit_all(repo, "docs")
    git(repo, "rm", "-q", f"docs/{SIGS}")
    commit_all(repo, "no docs")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "pr", "-m", "Merge pull request #8")
    shutil.rmtree(repo / ".pki/cache", ignore_errors=True)
