"""Threat: the directory given to ``pki import`` is input too (issue 10, late validation: "a newline
in an imported file's name", "pki import reads files of any size into memory").

A file over 1 MiB is skipped with a message, never read whole; a file name with a control character
is refused in one line before anything is made.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SMALL_PKI, Pki, assert_one_line, head, inventory, new_repo, openssl_ca, require_tool


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    """An openssl-made CA (ca.crt + ca.key), as a script would leave it."""
    require_tool("openssl")
    return openssl_ca(tmp_path / "old", common_name="Old CA")


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Pki]:
    directory = new_repo(tmp_path / "repo", SMALL_PKI.split("[authority.root]")[0], commit=True)
    return directory, Pki(directory)


def test_a_file_over_the_size_limit_is_skipped_with_a_message(existing, repo):
    directory, pki = repo
    huge = existing / "huge.pem"
    with open(huge, "wb") as f:
        f.write(b"-----BEGIN CERTIFICATE-----\n")
        f.truncate(2 * 1024 * 1024)
    r = pki("import", str(existing), expect=0)
    assert "skipped huge.pem: larger than 1024 KiB" in r.stdout
    assert set(inventory(directory)) == {"ca"}


@pytest.mark.parametrize("name", ["evil\nname.pem", "esc\x1b[31m.crt", "cr\r.pem"])
def test_a_file_name_with_a_control_character_is_refused(existing, repo, name):
    directory, pki = repo
    (existing / name).write_bytes((existing / "ca.crt").read_bytes())
    first = head(directory)
    r = pki("import", str(existing), expect=1)
    line = assert_one_line(r.stderr.strip())
    assert "control character" in line and "\x1b" not in line
    assert head(directory) == first and not (directory / "state").exists()
