"""Threat: files a pull request puts where pkiascode keeps this machine's own (review R3).

``.pki/`` (the journal, the memo) and the local key directories are never in git: a file force-added
there (``git add -f``) arrives in every fresh clone as if this machine had written it. A committed
transaction was completed, and signed, by the next apply; a committed key file let a pull request
hold a key "in the store". And two stores over one directory each took the other's keys for
orphans, so ``pki prune`` deleted the keys state uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from helpers import (
    SMALL_PKI, Pki, assert_one_line, commit_all, commit_count, edit_toml, git, key_files, new_repo, tree_snapshot,
)


def _clone(origin: Path, where: Path, pki: Pki) -> tuple[Path, Pki]:
    git(origin.parent, "clone", "-q", str(origin), str(where))
    return where, Pki(where, pki.env)


def test_a_committed_transaction_is_refused_in_a_fresh_clone(applied, tmp_path):
    """The attacker's pull request carries the transaction of an apply killed after writing it (made
    where they could sign, here a copy of the repository): the clone's plan and apply refuse it."""
    repo, pki = applied
    scratch = tmp_path / "scratch"
    git(tmp_path, "clone", "-q", str(repo), str(scratch))
    (scratch / ".pki").mkdir(mode=0o700)  # the origin's keys sign in the scratch copy
    shutil.copytree(repo / ".pki/keys", scratch / ".pki/keys")
    edit_toml(scratch, "[certificate.client]", '[certificate.evil]\nissuer = "inter"\ncommon_name = "evil"\n\n'
              "[certificate.client]")
    Pki(scratch, pki.env)("apply", "--auto-approve", env={"PKI_TEST_CRASH_AT": "after-txn"}, expect=None)
    txn = scratch / ".pki/journal/txn.json"
    assert txn.exists()
    (repo / ".pki/journal").mkdir(exist_ok=True)
    shutil.copy(txn, repo / ".pki/journal/txn.json")
    git(repo, "add", "-f", ".pki/journal/txn.json")
    git(repo, "commit", "-qm", "a pull request")

    clone, ci = _clone(repo, tmp_path / "clone", pki)
    state, commits = tree_snapshot(clone / "state"), commit_count(clone)
    for args in (["plan"], ["apply", "--auto-approve"]):
        line = assert_one_line(ci(*args, expect=1).stderr.strip())
        assert line.startswith("Error: git tracks .pki/journal/txn.json: .pki/ holds this machine's own files"), line
    assert tree_snapshot(clone / "state") == state and commit_count(clone) == commits
    assert not (clone / "state/certs/evil.pem").exists()


def test_a_committed_key_file_is_refused(applied):
    repo, pki = applied
    ref = sorted(key_files(repo))[0]
    git(repo, "add", "-f", f".pki/keys/{ref}")
    git(repo, "commit", "-qm", "a pull request")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert line.startswith(f"Error: git tracks .pki/keys/{ref}: .pki/ holds"), line


def test_a_store_over_the_built_in_directory_takes_its_place(tmp_path, env):
    """The README's `[backend.files]` over `.pki/keys`: no built-in `local` store beside it, so `pki
    keys` lists each key once and `pki prune` finds no orphan (it deleted the root's key)."""
    toml = '[backend.files]\nplugin = "local"\n\n' + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "files"\n')
    repo = new_repo(tmp_path / "repo", toml, commit=True)
    pki = Pki(repo, env)
    pki.apply()
    rows = json.loads(pki.ok("keys", "--format", "json").stdout)
    assert {r["backend"] for r in rows} == {"files"} and not [r for r in rows if r["status"] == "orphan"], rows
    keys = key_files(repo)
    assert "No orphan keys." in pki.ok("prune", "--auto-approve").stdout
    assert key_files(repo) == keys
    assert pki.plan_exit() == 0


def test_two_stores_over_one_directory_are_a_config_error(tmp_path, env):
    toml = ('[backend.a]\nplugin = "local"\npath = "keys"\n\n[backend.b]\nplugin = "local"\npath = "./keys"\n\n'
            + SMALL_PKI)
    repo = new_repo(tmp_path / "repo", toml)
    line = assert_one_line(Pki(repo, env)("plan", expect=1).stderr.strip())
    assert line == "pki.toml:7: backend.b.path: keys is backend a's directory too: each store has a directory of its own"


def test_a_key_directory_named_like_pathspec_magic_is_checked_literally(applied):
    """``:/k`` is a directory ``:`` with ``k`` in it, not git's "top of the repository" (review R4 H2)."""
    repo, pki = applied
    edit_toml(repo, "[defaults]\n", '[backend.aux]\nplugin = "local"\npath = ":/k"\n\n[defaults]\n')
    (repo / ".gitignore").write_text(".pki/\n:/k/\n")
    (repo / ":/k").mkdir(parents=True)
    (repo / ":/k/audit-log-0badc0de.noexport.pem").write_text("not a key\n")
    git(repo, "add", "-f", ".gitignore", "pki.toml", ":(literal):/k/audit-log-0badc0de.noexport.pem")
    git(repo, "commit", "-qm", "a pull request")
    line = assert_one_line(pki("plan", expect=1).stderr.strip())
    assert line.startswith("Error: git tracks :/k/audit-log-0badc0de.noexport.pem: :/k/ holds"), line


def test_a_linked_pki_toml_is_refused(applied):
    """A pull request moves the project into another directory and leaves a link where pki.toml was:
    the history of pki.toml's path would not be the project's (review R4 H2)."""
    repo, pki = applied
    git(repo, "mv", "pki.toml", "moved.toml")
    (repo / "pki.toml").symlink_to("moved.toml")
    commit_all(repo, "a pull request")
    for args in (["plan"], ["apply", "--auto-approve"], ["keys"]):
        line = assert_one_line(pki(*args, expect=1).stderr.strip())
        assert line.endswith("pki.toml is a symbolic link: pkiascode reads pki.toml and its directory only as they "
                             "are in the repository, never through a link"), line


def test_keys_of_a_store_pki_toml_no_longer_defines_are_no_orphans(applied):
    """The README's [backend.files] over .pki/keys added to a PKI made with the built-in store: state
    names backend local, which pki.toml no longer defines; keys and prune refuse, nothing is
    deleted (review R4 H4: prune deleted the root's key)."""
    repo, pki = applied
    edit_toml(repo, "[defaults]\n", '[backend.files]\nplugin = "local"\n\n[defaults]\nbackend = "files"\n')
    commit_all(repo, "the README's example")
    keys = key_files(repo)
    for args in (["keys"], ["prune", "--auto-approve"]):
        line = assert_one_line(pki(*args, expect=1).stderr.strip())
        assert "state names keys in backend local, which pki.toml does not define" in line, line
    assert key_files(repo) == keys


def test_a_directory_made_to_look_like_a_bare_repository_is_refused(tmp_path, env):
    """Review R6 B1: a pull request commits HEAD, objects/ and refs/ into the PKI's subdirectory; git
    then takes it for a bare repository and pkiascode saw no repository at all (no history check, no
    tracked-file check). It fails closed now."""
    top = new_repo(tmp_path / "repo", "", commit=False)
    (top / "pki.toml").unlink()
    pki_dir = top / "pki"
    pki_dir.mkdir()
    (pki_dir / "pki.toml").write_text(SMALL_PKI)
    (top / ".gitignore").write_text(".pki/\npki/.pki/\n")
    commit_all(top, "a PKI in pki/")
    pki = Pki(pki_dir, env)
    pki.apply()
    (pki_dir / "HEAD").write_text("ref: refs/heads/main\n")
    for d in ("objects", "refs"):
        (pki_dir / d).mkdir()
        (pki_dir / d / ".keep").write_text("")
    commit_all(top, "a pull request")
    for args in (["plan"], ["plan", "--offline"], ["apply", "--auto-approve", "--no-commit"], ["audit", "verify"]):
        line = assert_one_line(pki(*args, expect=1).stderr.strip())
        assert "but git does not see that work tree from there" in line, line


def test_a_file_name_that_is_not_utf8_in_history_is_no_error(applied):
    """Review R6 B2: one such name anywhere in history made every plan an unexpected error."""
    repo, pki = applied
    name = b"caf\xe9.txt"
    with open(os.path.join(os.fsencode(repo), name), "wb") as f:
        f.write(b"x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a file")
    shutil.rmtree(repo / ".pki/cache", ignore_errors=True)
    assert pki.plan_exit() == 0
    pki.ok("audit", "verify")


def test_prune_keeps_a_key_that_a_committed_state_named(applied):
    """Review R6 B3: a pull request rolls state/ back to before an authority existed (a rollback to
    an older signed state is not detectable): its key became an orphan, and prune deleted a live
    authority's key. A key a committed state named is deleted only once the audit log records an
    apply retiring it."""
    repo, pki = applied
    ref = _rolled_back_past_a_new_authority(repo, pki)
    commit_all(repo, "a pull request: state and pki.toml as they were")
    r = pki("prune", "--auto-approve", expect=0)
    assert f"local:{ref} is no state's key now, but a committed state named it" in r.stderr, r
    assert (repo / ".pki/keys" / ref).exists(), "prune deleted a key a committed state named"


def test_prune_trusts_a_retirement_only_under_a_signed_head(applied):
    """Review R7 P1: the rollback above with one more (hash-chained, unsigned) audit line saying an
    apply retired the authority's key: prune took it for a retirement and deleted the key. Prune now
    checks the log as a plan does first, and refuses."""
    from pkiascode import audit

    repo, pki = applied
    ref = _rolled_back_past_a_new_authority(repo, pki)
    log = repo / "state/audit.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    line = audit.event("rekey", "authority", "inter", time="2026-12-07T04:00:00Z", actor="ci", serial=None,
                       sha256=None, not_after=None, backend="local", plan=None, retired_key=["local", ref])
    with log.open("ab") as f:
        f.write(audit.render_lines(audit.chain([line], prev=last["hash"], seq=last["seq"])))
    commit_all(repo, "a pull request: state as it was, and a retirement")
    line = assert_one_line(pki("prune", "--auto-approve", expect=1).stderr.strip())
    assert "lines after the last signature were not written by an apply" in line and line.endswith("nothing deleted")
    assert (repo / ".pki/keys" / ref).exists(), "prune deleted a key on an unsigned line's word"


def test_import_signs_no_line_it_did_not_check(applied, tmp_path):
    """Review R8 S3: an unsigned (hash-chained) line a pull request appended, which plan refuses, was
    covered by the head that a later `pki import` signed, and so looked genuine. Import checks state
    as a plan does first, and a head is signed only right after the last signed one's lines and the
    run's own."""
    from pkiascode import audit

    from helpers import openssl_ca

    repo, pki = applied
    log = repo / "state/audit.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    line = audit.event("update_crl", "authority", "inter", time="2026-12-07T04:00:00Z", actor="ci", serial=None,
                       sha256=None, not_after=None, backend="local", plan=None)
    with log.open("ab") as f:
        f.write(audit.render_lines(audit.chain([line], prev=last["hash"], seq=last["seq"])))
    commit_all(repo, "a pull request: one more line")
    heads = json.loads((repo / "state/audit-signatures.json").read_text())["heads"]
    r = pki("import", str(openssl_ca(tmp_path / "old", "legacy")), expect=1)
    assert "lines after the last signature were not written by an apply" in assert_one_line(r.stderr.strip()), r
    assert json.loads((repo / "state/audit-signatures.json").read_text())["heads"] == heads


def _rolled_back_past_a_new_authority(repo: Path, pki: Pki) -> str:
    """An apply adds authority.inter2; then state/ and pki.toml as they were before it (uncommitted).
    Returns inter2's key reference."""
    before = git(repo, "rev-parse", "HEAD").strip()
    edit_toml(repo, "[certificate.client]", '[authority.inter2]\nissuer = "root"\ncommon_name = "Inter 2"\n\n'
              "[certificate.client]")
    commit_all(repo, "inter2")
    pki.apply()
    ref = json.loads((repo / "state/inventory.json").read_text())["objects"]["inter2"]["key"]["ref"]
    git(repo, "checkout", "-q", before, "--", "state", "pki.toml")
    return ref
