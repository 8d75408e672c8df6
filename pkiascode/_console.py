"""The ``pki`` command's entry point: process-wide settings first, then the CLI.

A ``pki`` run is short and makes thousands of small objects that live until it ends (parsed
pki.toml, records, certificates): Python's cyclic garbage collector would scan them again and again
(about 5% of an apply of 1,000 certificates) to find nothing, so it runs rarely here, and what a bulk
apply's signing worker shares with it stays frozen (`pkiascode.apply`). This is set for the ``pki``
process only, never for a program that imports pkiascode.

``pki apply`` on a large pki.toml that has no cached parse (see `pkiascode.config.load_config`)
starts parsing it in a forked process before importing anything heavy: on 2 cores the file is
parsed while the CLI imports click and cryptography, and `load_config` then waits for that process
and reads the cache it wrote. Anything unusual (no ``fork``, a small or unreadable file, a parse
already cached, an interrupted ``pki import`` pending, command-line options this does not follow)
starts nothing, and the file is parsed in the foreground as always. The background process prints
nothing: mistakes are found and reported by the foreground parse, with their line.

This module is imported first and must stay cheap: no pkiascode module above the standard library.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys

from . import __version__

#: pki.toml files at least this large are parsed in the background by ``pki apply``
BACKGROUND_PARSE_MIN = 64 * 1024

_background: dict[str, int] = {}  # digest -> pid of the process parsing it
_cli = False


def tune() -> None:
    """The process-wide settings of a ``pki`` run (the benchmark's in-process runs call this too)."""
    global _cli
    gc.set_threshold(100_000, 50, 1000)
    _cli = True


def is_cli_process() -> bool:
    """Whether this process is a ``pki`` command (short-lived, `tune`d), not a program using pkiascode."""
    return _cli


def config_digest(data: bytes) -> str:
    """What the parse cache is keyed by: pki.toml's bytes and this version of pkiascode."""
    return hashlib.sha256(data + __version__.encode()).hexdigest()


def config_cache_name(digest: str) -> str:
    """The file in ``.pki/cache`` that holds the parse of the pki.toml with this digest."""
    return f"config-{digest[:32]}.pickle"


def _apply_config(args: list[str]) -> str | None:
    """The pki.toml a ``pki [-C DIR] [--config FILE] apply [-C DIR] [--config FILE] ...`` command
    line names (as click reads it: the last of each option counts; ``-C`` after the command is
    relative to the one before), or None when the command is not apply or the line is unusual."""
    directory = {False: ".", True: "."}  # before the command, after it
    config: dict[bool, str | None] = {False: None, True: None}
    command = None
    i = 0
    while i < len(args):
        arg, after = args[i], command is not None
        if arg in ("-C", "--config"):
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 2
        elif arg.startswith("--config="):
            arg, value = "--config", arg.split("=", 1)[1]
            i += 1
        elif arg.startswith("-C") and not arg.startswith("--"):
            arg, value = "-C", arg[2:]
            i += 1
        else:
            if arg in ("-h", "--help", "--version") or arg == "--":
                return None
            if not arg.startswith("-") and command is None:
                command = arg
                if command != "apply":
                    return None
            i += 1
            continue
        if not value:
            return None
        if arg == "-C":
            directory[after] = value
        else:
            config[after] = value
    if command != "apply":
        return None
    return os.path.join(directory[False], directory[True], config[True] or config[False] or "pki.toml")


def parse_in_background(config: str) -> None:
    """Fork a process that parses ``config`` into the parse cache, if that is worth it (see above)."""
    if not hasattr(os, "fork") or _background:
        return
    try:
        if os.stat(config).st_size < BACKGROUND_PARSE_MIN:
            return
        with open(config, "rb") as f:
            data = f.read()
    except OSError:
        return
    base = os.path.dirname(os.path.abspath(config))
    digest = config_digest(data)
    if os.path.exists(os.path.join(base, ".pki", "cache", config_cache_name(digest))) \
            or os.path.exists(os.path.join(base, ".pki", "journal", "txn.json")):
        return
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            from pathlib import Path

            from .config import load_config  # (only what parsing needs: not Project and its planner)
            from .plugins import Plugins

            load_config(Path(config), options_for=Plugins().options, cache_dir=Path(base, ".pki", "cache"))
        finally:
            os._exit(0)
    _background[digest] = pid


def wait_for_background_parse(digest: str) -> None:
    """Wait for the background parse of the pki.toml with this digest, if one was started."""
    pid = _background.pop(digest, None)
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main() -> None:
    tune()
    config = _apply_config(sys.argv[1:])
    if config is not None:
        parse_in_background(config)
    from .cli import main as cli_main

    cli_main()
