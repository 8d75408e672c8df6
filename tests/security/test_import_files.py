"""Threat: the directory given to ``pki import`` holds links and special files (review F16, F12).

``NAME-key.pem`` as a symbolic link out of the directory was read through (a key from elsewhere
adopted); a FIFO named like a certificate or key made ``pki import`` wait forever; a file name with
a bidirectional override (U+202E) or a C1 control (U+009B) passed the check for control characters
and was printed raw in a skip note.

Now files are opened without following links and without waiting (``O_NOFOLLOW|O_NONBLOCK``),
regular files only, size-capped: a certificate file that is a link or a FIFO is skipped with a note;
a key that is one refuses the import in one line (a certificate is adopted only with its key);
names with any control character or invisible mark are refused, escaped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, head, inventory, new_repo, openssl_ca, require_tool


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    require_tool("openssl")
    return openssl_ca(tmp_path / "old")


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki]:
    directory = new_repo(tmp_path / "repo", SMALL_PKI.split("[authority.root]")[0], commit=True)
    return directory, Pki(directory)


def _nothing_imported(directory: Path, first: str | None) -> None:
    assert head(directory) == first and not (directory / "state" / "inventory.json").exists()
    assert not list((directory / ".pki" / "keys").glob("*.pem")) if (directory / ".pki" / "keys").exists() else True


def test_a_key_that_is_a_symlink_out_of_the_directory_is_not_read(existing, repo, tmp_path):
    directory, pki = repo
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (existing / "ca.key").rename(elsewhere / "secret.key")
    (existing / "ca.key").symlink_to(elsewhere / "secret.key")
    first = head(directory)
    r = pki("import", str(existing), expect=1, timeout=60)
    line = assert_one_line(r.stderr.strip())
    assert "ca.key is a symbolic link, not a regular file" in line, line
    _nothing_imported(directory, first)


def test_a_key_that_is_a_fifo_does_not_hang_the_import(existing, repo):
    directory, pki = repo
    (existing / "ca.key").unlink()
    os.mkfifo(existing / "ca.key")
    first = head(directory)
    r = pki("import", str(existing), expect=1, timeout=30)
    assert "ca.key is a FIFO, not a regular file" in assert_one_line(r.stderr.strip())
    _nothing_imported(directory, first)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_certificate_file_that_is_a_link_or_fifo_is_skipped_with_a_note(existing, repo, tmp_path, kind):
    directory, pki = repo
    other = openssl_ca(tmp_path / "other", "far")
    if kind == "symlink":
        (existing / "far.crt").symlink_to(other / "far.crt")
    else:
        os.mkfifo(existing / "far.crt")
    (existing / "far.key").write_bytes((other / "far.key").read_bytes())
    r = pki("import", str(existing), expect=0, timeout=60)
    what = "a symbolic link" if kind == "symlink" else "a FIFO"
    assert f"skipped far.crt: {what}, not a regular file" in r.stdout
    assert set(inventory(directory)) == {"ca"}


@pytest.mark.parametrize("name", ["rlo\u202egpj.pem", "csi\u009b2J.crt", "zw\u200bsp.pem"])
def test_a_file_name_with_a_bidi_override_or_c1_control_is_refused_escaped(existing, repo, name):
    directory, pki = repo
    (existing / name).write_bytes((existing / "ca.crt").read_bytes())
    first = head(directory)
    r = pki("import", str(existing), expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "control character" in line
    assert not any(ch in r.stderr + r.stdout for ch in ("\u202e", "\u009b", "\u200b")), line
    _nothing_imported(directory, first)


def test_a_skip_note_is_escaped(existing, repo, monkeypatch):
    """The notes `find_pairs` gives go through `errors.printable` (file names only reach them once
    the control-character check has let them through; a name the check misses stays escaped)."""
    from pkiascode import adopt

    monkeypatch.setattr(adopt, "control_character", lambda text: None)
    odd = existing / "odd\u202e.pem"
    os.mkfifo(odd)
    notes: list[str] = []
    assert [n for n, _, _ in adopt.find_pairs(existing, notes)] == ["ca"]
    assert notes == ["skipped odd\\u202e.pem: a FIFO, not a regular file"]
