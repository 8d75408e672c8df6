"""The local key store treats every name it is handed as input (issue 10.2, 10 "late validation",
13.3): its directory stays inside the repository, key references and journalled requests from any
file must have the store's own shape, symbolic links are never followed, modes do not depend on the
umask, and an authority's key is not exported unless its entry says ``exportable = true``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, key_ref, new_repo, spki_der
from pkiascode.backend import KeyRef, KeyRequest, StoreContext
from pkiascode.errors import BackendError, BackendUnavailable, KeyNotExportable
from pkiascode.keytypes import KeyType
from pkiascode_local import LocalKeyStore


def store_in(repo: Path, **settings: str) -> LocalKeyStore:
    return LocalKeyStore("files", settings, StoreContext(repo, repo / ".pki"))


def leaf(name: str = "web", suffix: str | None = None) -> KeyRequest:
    return KeyRequest(name, KeyType.ECDSA_P256, authority=False, exportable=True, suffix=suffix)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the repository that nothing may read or delete."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim-00000000.pem"
    target.write_text("precious\n")
    return target


# -- the key directory ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["../keys", "/tmp/pki-keys", "~/keys", ".pki/../../keys"])
def test_a_path_outside_the_repository_is_a_config_error(path):
    problems = dict(LocalKeyStore.validate({"path": path}))
    assert problems["path"].startswith(f"{path!r} is outside the repository")


@pytest.mark.parametrize("path", [".", "./", "./."])
def test_the_repository_itself_is_not_a_key_directory(tmp_path, path):
    assert dict(LocalKeyStore.validate({"path": path}))["path"].startswith(f"{path!r} is the directory of pki.toml")
    os.chmod(tmp_path, 0o755)
    with pytest.raises(BackendError, match="not below pki.toml's directory"):
        store_in(tmp_path, path=path).generate(leaf())
    assert mode(tmp_path) == 0o755


def test_pki_validate_refuses_it_and_touches_nothing_there(tmp_path, env):
    outside = tmp_path / "keys"
    outside.mkdir(mode=0o755)
    os.chmod(outside, 0o755)
    (outside / ".old-12345678.pem.tmp").write_text("someone else's file")
    os.utime(outside / ".old-12345678.pem.tmp", (0, 0))
    repo = new_repo(tmp_path / "repo", '[backend.files]\nplugin = "local"\npath = "../keys"\n\n' + SMALL_PKI)
    pki = Pki(repo)
    for command in (("validate",), ("plan",), ("apply", "--auto-approve")):
        r = pki(*command, expect=1)
        line = assert_one_line(r.stderr.strip())
        assert line.startswith("pki.toml:3: backend.files.path: '../keys' is outside the repository"), line
    assert mode(outside) == 0o755  # not chmod-ed
    assert sorted(p.name for p in outside.iterdir()) == [".old-12345678.pem.tmp"]  # not cleaned


def test_a_key_directory_reached_through_a_symlink_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.chmod(outside, 0o755)
    stale = outside / ".old-12345678.pem.tmp"
    stale.write_text("x")
    os.utime(stale, (0, 0))
    (repo / ".pki").symlink_to(outside)  # .pki/keys would be elsewhere/keys
    (outside / "keys").mkdir()
    os.chmod(outside / "keys", 0o755)
    (outside / "keys" / stale.name).write_text("x")
    os.utime(outside / "keys" / stale.name, (0, 0))
    store = store_in(repo)
    with pytest.raises(BackendUnavailable, match=r"'\.pki' is not a directory \(a symbolic link is never followed\)"):
        store.generate(leaf())
    assert mode(outside / "keys") == 0o755 and (outside / "keys" / stale.name).exists()
    assert list((outside / "keys").iterdir()) == [outside / "keys" / stale.name]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=["000", "022", "077"])
def test_modes_do_not_depend_on_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = store_in(tmp_path)
        ref = store.generate(leaf())
        assert mode(tmp_path / ".pki") == 0o700 and mode(tmp_path / ".pki/keys") == 0o700
        assert mode(tmp_path / ".pki/keys" / ref.id) == 0o600
    finally:
        os.umask(old)


# -- names from the inventory and the key journal ---------------------------------------------------

FORGED = ["../../outside/victim-00000000.pem", "../outside/victim-00000000.pem", "/etc/passwd",
          "victim-00000000.pem/..", ".victim-00000000.pem.tmp", "web-0000000.pem", "web-00000000.pem\n",
          "Web-00000000.pem", "web-00000000.PEM"]


@pytest.mark.parametrize("key_id", FORGED)
def test_a_forged_key_reference_reads_and_deletes_nothing(tmp_path, victim, key_id):
    repo = tmp_path / "repo"
    repo.mkdir()
    store = store_in(repo)
    store.generate(leaf())  # the directory exists: the forged name is the only thing wrong
    ref = KeyRef("files", key_id)
    for action in (store.signer, store.export, store.release, store.public_key, store.delete):
        with pytest.raises(BackendError, match="invalid key reference") as info:
            action(ref)
        assert_one_line(str(info.value))
    assert store.missing([ref]) == {ref} and not store.is_exportable(ref)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name,suffix", [("../../outside/victim", "00000000"), ("web", "../../x"),
                                         ("web", "00000000.pem"), ("/etc/passwd", "00000000"), ("web", "0000000g")])
def test_a_forged_journal_request_discards_nothing_outside(tmp_path, victim, name, suffix):
    repo = tmp_path / "repo"
    repo.mkdir()
    store = store_in(repo)
    kept = store.generate(leaf())
    request = KeyRequest(name, KeyType.ECDSA_P256, authority=False, exportable=True, suffix=suffix)
    with pytest.raises(BackendError, match="invalid key request"):
        store.discard(request)
    with pytest.raises(BackendError, match="invalid key request"):
        store.generate(request)
    assert victim.read_text() == "precious\n" and store.exists(kept)


def test_a_symlink_named_like_a_key_is_not_followed(tmp_path, victim):
    repo = tmp_path / "repo"
    repo.mkdir()
    store = store_in(repo)
    store.generate(leaf())
    link = repo / ".pki/keys/root-12345678.pem"
    link.symlink_to(victim)
    ref = KeyRef("files", link.name)
    for action in (store.signer, store.export, store.release):
        with pytest.raises(BackendError, match="not a regular file"):
            action(ref)
    store.delete(ref)  # removes the link, never its target
    assert not os.path.lexists(link) and victim.read_text() == "precious\n"


def test_list_keys_lists_only_key_files(tmp_path):
    store = store_in(tmp_path)
    a, b = store.generate(leaf("a")), store.generate(KeyRequest("root", KeyType.ED25519, True, False))
    keys = tmp_path / ".pki/keys"
    (keys / "notes.txt").write_text("x")
    (keys / "x-12345678.pem").symlink_to(keys / a.id)
    (keys / "sub-12345678.pem").mkdir()
    listed = {r.id for r in store.list_keys()}
    assert {a.id, b.id} <= listed and "notes.txt" not in listed
    assert b.id.endswith(".noexport.pem")


# -- exportability (issue 13.3) ----------------------------------------------------------------------

def test_an_authority_key_is_exported_only_when_its_entry_says_so(tmp_path, env):
    repo = new_repo(tmp_path / "repo", SMALL_PKI, commit=True)
    pki = Pki(repo)
    pki.apply()
    assert key_ref(repo, "root").endswith(".noexport.pem") and not key_ref(repo, "server").endswith(".noexport.pem")
    out = tmp_path / "out"
    for authority in ("root", "inter"):
        r = pki("export", authority, "--dir", str(out), expect=1)
        assert_one_line(r.stderr.strip())
        assert "cannot leave backend" in r.stderr
        assert not (out / f"{authority}-key.pem").exists()
    pki.ok("export", "root", "--dir", str(out), "--no-key")
    assert (out / "root.pem").exists() and not (out / "root-key.pem").exists()
    pki.ok("export", "server", "--dir", str(out))
    assert mode(out / "server-key.pem") == 0o600

    # an authority whose entry says exportable = true from the start
    repo2 = new_repo(tmp_path / "repo2", SMALL_PKI.replace('common_name = "Test Root CA"\n',
                                                           'common_name = "Test Root CA"\nexportable = true\n'),
                     commit=True)
    pki2 = Pki(repo2)
    pki2.apply()
    assert not key_ref(repo2, "root").endswith(".noexport.pem")
    pki2.ok("export", "root", "--dir", str(tmp_path / "out2"))
    assert (tmp_path / "out2/root-key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_exportability_is_in_the_reference_and_cannot_be_asked_away(tmp_path):
    store = store_in(tmp_path)
    root = store.generate(KeyRequest("root", KeyType.ECDSA_P256, authority=True, exportable=False))
    assert root.id.endswith(".noexport.pem") and not store.is_exportable(root)
    # a fresh store (another run) decides from the reference alone, as the inventory records it
    fresh = store_in(tmp_path)
    assert not fresh.is_exportable(root)
    with pytest.raises(KeyNotExportable, match="exportable = false"):
        fresh.export(root)
    # it may still move to a store that keeps it inside (move_key)
    assert spki_der(fresh.release(root)) == spki_der(store.public_key(root))


def test_another_pkis_key_files_are_out_of_reach(tmp_path):
    """Review finding F3 for the local store: a reference is a bare file name in this PKI's own key
    directory, so no reference, in any spelling, reaches a key of another PKI beside or inside it."""
    a, b = tmp_path / "a", tmp_path / "a" / "nested"
    b.mkdir(parents=True)
    (b / "pki.toml").write_text("")
    theirs = store_in(b).generate(leaf("root"))
    path = b / ".pki" / "keys" / theirs.id
    mine = store_in(a)
    mine.generate(leaf())
    for key_id in (f"nested/.pki/keys/{theirs.id}", f"../a/nested/.pki/keys/{theirs.id}", str(path)):
        ref = KeyRef("files", key_id)
        for action in (mine.signer, mine.export, mine.release, mine.public_key, mine.delete):
            with pytest.raises(BackendError, match="invalid key reference"):
                action(ref)
        assert mine.missing([ref]) == {ref}
    assert mine.missing([theirs]) == {theirs}  # the bare name: looked for in a's own directory only
    mine.delete(theirs)
    assert path.exists()
    # a key directory of a's that passes through the nested PKI's directory is refused
    into = store_in(a, path="nested/.pki/keys")
    with pytest.raises(BackendUnavailable, match="holds another PKI's pki.toml"):
        into.delete(KeyRef("files", theirs.id))
    with pytest.raises(BackendUnavailable, match="holds another PKI's pki.toml"):
        into.generate(leaf())
    assert path.exists()
