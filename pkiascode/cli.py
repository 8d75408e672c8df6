"""The ``pki`` command. Parses options, calls the core, renders. Nothing more.

Exit codes are decided in `exit_code` and in `main`: 0 success (or no changes), 1 any error,
2 changes present (``pki plan --detailed-exitcode`` only). ``pki apply --push`` exits 0 once its
commit is on the remote branch (or there was nothing to do), 1 on any error: among them a HEAD that
is not the upstream's tip and a rejected push, after which everything is as it was.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .errors import ConfigError, PkiError, PlanError, printable
from .model import parse_time, utc_now

__all__ = ["cli", "main", "exit_code", "parse_when"]

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def exit_code(has_changes: bool, detailed: bool) -> int:
    """``terraform plan -detailed-exitcode``: 0 nothing to do, 2 changes (1 is any error)."""
    return EXIT_CHANGES if detailed and has_changes else EXIT_OK


def parse_when(text: str | None, now: dt.datetime) -> dt.datetime:
    """``2027-06-01``, an ISO date-time, or ``+90d`` / ``-1d`` relative to now."""
    if not text:
        return now
    from .names import parse_duration

    t = text.strip()
    if t[:1] in "+-":
        try:
            seconds = parse_duration(t[1:])
        except ValueError as e:
            raise PkiError(f"--at {text}: {e}") from None
        return now + dt.timedelta(seconds=seconds if t[0] == "+" else -seconds)
    try:
        return parse_time(t)
    except ValueError:
        raise PkiError(f"--at {text}: use an ISO date (2027-06-01), a date-time, or +90d") from None


class Ctx:
    def __init__(self, config: str, no_color: bool) -> None:
        self.config = Path(config)
        self.no_color = no_color
        self._project: Any = None
        #: --trust-pin of plan and apply (the project adds $PKI_TRUST_PIN)
        self.trust_pins: tuple[str, ...] = ()

    @property
    def project(self) -> Any:
        if self._project is None:
            from .project import Project

            self._project = Project(self.config, trusted_pins=self.trust_pins)
        return self._project

    def color(self, stream: Any = None) -> bool:
        stream = stream or sys.stdout
        return not self.no_color and "NO_COLOR" not in os.environ and stream.isatty()

    def close(self) -> None:
        if self._project is not None:
            self._project.close()


def _chdir(directory: str) -> None:
    """``-C DIR``: run as if started there."""
    try:
        os.chdir(directory)
    except OSError as e:
        raise PkiError(f"-C {directory}: {e.strerror}") from None


def pass_ctx(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the `Ctx`, and accept the global options after the command too (``pki plan --no-color``)."""

    @click.option("-C", "sub_directory", metavar="DIR", hidden=True)
    @click.option("--config", "sub_config", metavar="FILE", hidden=True)
    @click.option("--no-color", "sub_no_color", is_flag=True, hidden=True)
    @click.option("--debug", "sub_debug", is_flag=True, hidden=True)
    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx: click.Context, *args: Any, sub_directory: str | None, sub_config: str | None,
                sub_no_color: bool, sub_debug: bool, **kwargs: Any) -> Any:
        c = ctx.find_object(Ctx)
        assert c is not None
        if sub_directory:
            _chdir(sub_directory)
        if sub_config:
            c.config = Path(sub_config)
        c.no_color = c.no_color or sub_no_color
        return f(c, *args, **kwargs)

    return wrapper


def at_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--at", "at", metavar="WHEN",
                        help="Plan as of another time: an ISO date (2027-06-01) or +90d.")(f)


def trust_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--trust-pin", "trust_pins", multiple=True, metavar="FINGERPRINT",
                        help="Accept this audit key's pin without its predecessor's endorsement (a reviewed "
                             "rekey after the old key was lost; repeatable; also $PKI_TRUST_PIN).")(f)


def replace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--rekey-missing", is_flag=True,
                     help="A key missing from its store gets a new key and certificate (without it: an error).")(f)
    return click.option("--replace", "replace", multiple=True, metavar="NAME",
                        help="New key and certificate for NAME; the old one is revoked (repeatable).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pki")
@click.option("-C", "directory", metavar="DIR", help="Run as if started in DIR.")
@click.option("--config", default="pki.toml", show_default=True, metavar="FILE", help="The pki.toml to use.")
@click.option("--no-color", is_flag=True, help="No colour, even on a terminal.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, config: str, no_color: bool, debug: bool) -> None:
    """pkiascode: PKI as code. A declarative pki.toml, a reviewable plan, keys kept out of git."""
    if directory:
        _chdir(directory)
    obj = Ctx(config, no_color)  # (--debug is read by `main`, before click)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# -- init / validate -----------------------------------------------------------------------------

@cli.command()
@click.argument("directory", default=".", metavar="[DIR]")
@click.option("--example", type=click.Choice(["kubernetes-the-hard-way"]), help="Start from an example PKI.")
def init(directory: str, example: str | None) -> None:
    """Create pki.toml, state/ and a .gitignore for .pki/; git init if needed."""
    from .scaffold import init_project

    for line in init_project(Path(directory), example=example):
        click.echo(line)
    click.echo("Next: review pki.toml, then `pki plan`.")


@cli.command()
@pass_ctx
def validate(c: Ctx) -> None:
    """Check pki.toml (and any CSRs it names). Exit 0 if valid, 1 if not."""
    project = c.project
    try:
        desired = project.desired()
        project.csrs()
    except ConfigError as e:
        for err in getattr(e, "all_errors", [e]):
            click.echo(str(err), err=True)
        sys.exit(EXIT_ERROR)
    kinds = [e.kind.value for e in desired.entries.values()]
    n_auth, n_cert = kinds.count("authority"), kinds.count("certificate")
    used = sorted({e.store for e in desired.entries.values()})
    click.echo(f"{project.config_path.name} is valid: {n_auth} authorit{'y' if n_auth == 1 else 'ies'}, "
               f"{n_cert} certificate{'s' if n_cert != 1 else ''}, backends: {', '.join(used) or 'none'}")


# -- plan / apply --------------------------------------------------------------------------------

@cli.command()
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Save the plan for `pki apply FILE`.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 when nothing to do, 2 when there are changes.")
@click.option("--offline", is_flag=True,
              help="Contact no key store (no credentials needed); assume the keys state names exist.")
@click.option("--base", "base", metavar="REF",
              help="Plan against the state/ of git revision REF (e.g. origin/main): the change after merge.")
@at_option
@replace_option
@trust_option
@pass_ctx
def plan(c: Ctx, out: str | None, fmt: str, detailed_exitcode: bool, offline: bool, base: str | None,
         at: str | None, replace: tuple[str, ...], rekey_missing: bool, trust_pins: tuple[str, ...]) -> None:
    """Show what apply would change, and why."""
    c.trust_pins = trust_pins
    from .apply import check_new_id, planned_id_edit, with_id_note, with_pending_notes
    from .render import render_json, render_markdown, render_text

    if out and (offline or base):
        raise PkiError("--out saves a plan to apply, which needs the key stores checked and this checkout's "
                       "state/: drop --offline and --base")
    now = utc_now()
    # --at decides what is due as of then; certificates are signed when apply runs, and the plan
    # shows the not_after they will really get
    # only this command may answer from the remembered no-op plan (`pkiascode.memo`); apply never does
    the_plan = c.project.plan(at=parse_when(at, now), replace=replace, now=now, offline=offline, base=base,
                              rekey_missing=rekey_missing, remembered=not out)
    if not the_plan.empty:  # (what apply writes into pki.toml; an empty plan shows no edit)
        the_plan = with_id_note(c.project, the_plan, planned_id_edit(c.project))
    the_plan = with_pending_notes(c.project, the_plan)  # (pending deletions no apply made: apply keeps them)
    if not offline and not c.project.answered_from_memo:  # (remembered only once the inventory records the id)
        check_new_id(c.project)  # (an id that apply would refuse to record: another PKI's)
    if fmt == "json":
        click.echo(render_json(the_plan), nl=False)
    elif fmt == "markdown":
        click.echo(render_markdown(the_plan), nl=False)
    else:
        click.echo(render_text(the_plan, color=c.color()), nl=False)
    if out:
        from .state import atomic_write

        atomic_write(Path(out), the_plan.dumps().encode())
        if fmt == "text":
            click.echo(f"\nSaved the plan to {out}. Apply exactly it with `pki apply {out}`.")
    # a pending interrupted apply is a change too: apply still has to write and commit it
    pending = c.project.txn_pending()
    sys.exit(exit_code(not the_plan.empty or pending, detailed_exitcode))


@cli.command()
@click.argument("planfile", required=False, type=click.Path(dir_okay=False))
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-commit", is_flag=True, help="Write state/ but do not commit it.")
@click.option("--lock-timeout", default="0s", show_default=True, metavar="DURATION",
              help="How long to wait for another apply to finish.")
@click.option("--push", is_flag=True,
              help="Fetch the upstream first (HEAD must be its tip), commit, push; undo all if the push is rejected.")
@click.option("--push-to", "push_to", metavar="REMOTE/BRANCH",
              help="The remote branch for --push (default: the branch's upstream); needed on a detached HEAD.")
@at_option
@replace_option
@trust_option
@pass_ctx
def apply(c: Ctx, planfile: str | None, auto_approve: bool, no_commit: bool, lock_timeout: str, push: bool,
          push_to: str | None, at: str | None, replace: tuple[str, ...], rekey_missing: bool,
          trust_pins: tuple[str, ...]) -> None:
    """Make the planned changes, then commit state/ to git.

    A saved plan (PLANFILE) is planned again under the lock from the inputs it records, and applied
    only if that fresh plan is identical to it. The file is not authenticated: a plan that replaces
    keys (--replace), rekeys an authority or was made with --rekey-missing is applied only when the
    same --replace NAME / --rekey-missing are given again here.

    With --push, under the lock: fetch the upstream, refuse unless HEAD is its tip, apply, commit,
    push (never forced), and only then delete the keys the commit retired. A rejected push is undone:
    the keys this run made are deleted, the branch and state/ are put back; exit 1."""
    c.trust_pins = trust_pins
    from .apply import Base, apply_under_lock, id_to_add, lock_stores, preflight, saved_without_id_note, with_id_note
    from .ci import actor
    from .lock import apply_lock, holder_info
    from .names import parse_duration
    from .plan import Plan
    from .render import render_text

    if planfile and at:
        raise PkiError("a saved plan already fixes --at; pass it to `pki plan` instead")
    if push_to and not push:
        raise PkiError("--push-to names where --push pushes: add --push")
    project = c.project
    desired = project.desired()
    commit = desired.settings.commit and not no_commit
    if push and not commit:
        raise PkiError("--push pushes the apply's commit: drop --no-commit (and set [pki] commit = true)")
    repo = project.repository()
    if push and repo is None:
        raise PkiError(f"--push: {project.base_dir} is not in a git repository")
    upstream = None
    if repo is not None and commit:
        upstream = repo.upstream(push_to)
        if push and upstream is None:
            raise PkiError("--push: this branch has no upstream (a detached HEAD?): pass --push-to REMOTE/BRANCH")
    try:
        timeout = parse_duration(lock_timeout, allow_zero=True)
    except ValueError as e:
        raise PkiError(f"--lock-timeout: {e}") from None
    saved = saved_json = None
    if planfile:
        try:
            saved_json = json.loads(Path(planfile).read_text(encoding="utf-8"))
            saved = Plan.from_json(saved_json)
        except FileNotFoundError:
            raise PkiError(f"plan file {planfile} not found") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise PkiError(f"{planfile} is not a pkiascode plan ({type(e).__name__}: {e})") from None
        # (before the lock, from the options the file records; its changes only once planned again)
        _require_confirmation(saved, planfile, replace, rekey_missing, changes=False)
    elif not auto_approve and not sys.stdin.isatty():
        raise PkiError("not on a terminal: pass --auto-approve, or apply a saved plan (`pki plan --out FILE`)")

    id_edit = id_to_add(project, commit)  # (before any key store is made: they are made in its namespace)
    preflight(project, commit)
    progress = _progress()

    def choose(base: Base) -> Any:
        """The plan to execute (planned again under the lock), shown and confirmed; None: nothing to do."""
        if saved is not None:
            if base.interrupted is not None and base.interrupted == saved.digest():
                click.echo(f"{planfile} was already applied: the interrupted apply of it is now complete.")
                return None
            the_plan = project.replan(saved_without_id_note(project, saved_json, planfile, id_edit),
                                      source=planfile)  # the fresh plan, never the file's steps
            _require_confirmation(the_plan, planfile, replace, rekey_missing)
        else:
            now = utc_now()
            the_plan = project.plan(at=parse_when(at, now), replace=replace, now=now, rekey_missing=rekey_missing)
        the_plan = with_id_note(project, the_plan, id_edit)
        click.echo(render_text(the_plan, color=c.color()), nl=False)
        if not (the_plan.empty and base.head == base.tip):  # (an empty plan still checks the id, deletes retired keys)
            refused = project.refusal(the_plan)
            if refused:
                raise PlanError(refused)
            if saved is None and not auto_approve and not the_plan.empty:
                click.echo()
                answer = click.prompt("Apply these changes? Only 'yes' will be accepted", default="",
                                      show_default=False)
                if answer.strip() != "yes":
                    raise PkiError("apply cancelled; nothing changed")
        return the_plan

    def notify(note: str) -> None:
        click.echo(printable(note), err=True)

    with lock_stores(project, id_edit) as stores, \
            apply_lock(project.work_dir / "lock", stores, holder_info(actor()), desired.settings.state_dir,
                       timeout=timeout) as still_locked:
        the_plan, result = apply_under_lock(project, commit=commit, push=push, upstream=upstream,
                                            still_locked=still_locked, progress=progress, notify=notify,
                                            choose=choose, id_edit=id_edit)
    if the_plan is None:
        return
    if result.pushed:
        click.echo(f"Pushed {result.pushed[:12]} to {upstream}.")
    for w in result.warnings:
        if w not in the_plan.warnings:
            click.echo(printable(f"warning: {w}"), err=True)
    if the_plan.empty:
        return
    done = result.message.splitlines()[0].replace("pki apply: ", "")
    tail = f" Committed {result.commit[:12]}." if result.commit else (" State written, not committed." if not commit
                                                                          else "")
    click.echo(f"\nApply complete: {done}.{tail}")


def _require_confirmation(the_plan: Any, source: str, replace: tuple[str, ...], rekey_missing: bool, *,
                          changes: bool = True) -> None:
    """A saved plan is not authenticated (whoever writes the file chooses its ``replace`` and
    ``rekey_missing``, and planning again takes them as given): what cannot be undone must be asked
    for again on the command line. Every name the plan replaces needs ``--replace NAME``, every
    authority it rekeys ``--replace NAME`` too (or, for a plan made with ``--rekey-missing``, that
    option), and ``--rekey-missing`` only with a plan made with it. Raises `PkiError`: nothing changed.
    ``changes`` False: the file's changes are not yet known to be the fresh plan's, so they only
    excuse a ``--replace`` (the call with the fresh plan decides)."""
    from .model import Kind
    from .plan import Action

    given = set(replace)
    rekeyed = sorted({c.name for c in the_plan.changes if c.action is Action.REKEY and c.kind is Kind.AUTHORITY})
    wanted = set(the_plan.replace)
    if changes and not the_plan.rekey_missing:
        wanted |= set(rekeyed)
    missing = sorted(wanted - given)
    rerun = "nothing changed"
    if missing:
        what = " and ".join(
            f"replaces {n}" if n in the_plan.replace else f"rekeys authority.{n}" for n in missing)
        again = " ".join(f"--replace {n}" for n in missing)
        raise PkiError(f"{source} {what} (a new key; cannot be undone): a saved plan is not authenticated, so "
                       f"confirm it with `pki apply {source} {again}`; {rerun}")
    extra = sorted(given - set(the_plan.replace) - set(rekeyed))
    if extra:
        raise PkiError(f"--replace {extra[0]}: the saved plan {source} does not replace it; run "
                       f"`pki plan --replace {extra[0]} --out {source}` for that; {rerun}")
    if the_plan.rekey_missing and not rekey_missing:
        raise PkiError(f"{source} was made with --rekey-missing (a missing key gets a new one; cannot be undone): a "
                       f"saved plan is not authenticated, so confirm it with `pki apply {source} --rekey-missing`; "
                       f"{rerun}")
    if rekey_missing and not the_plan.rekey_missing:
        raise PkiError(f"--rekey-missing: the saved plan {source} was made without it; run "
                       f"`pki plan --rekey-missing --out {source}` for that; {rerun}")


class _TerminalProgress:
    """A one-line progress display on stderr, only on a terminal."""

    def __init__(self) -> None:
        self.label, self.total, self.count = "", 0, 0

    def phase(self, label: str, total: int) -> None:
        self._end()
        self.label, self.total, self.count = label, total, 0
        self._draw()

    def advance(self, n: int = 1) -> None:
        self.count += n
        self._draw()

    def note(self, message: str) -> None:
        self._end()
        click.echo(printable(message), err=True)

    def done(self) -> None:
        self._end()

    def _draw(self) -> None:
        if self.total:
            width = 24
            filled = int(width * self.count / self.total)
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r  {self.label:<22} [{bar}] {self.count}/{self.total}")
            sys.stderr.flush()

    def _end(self) -> None:
        if self.total:
            sys.stderr.write("\n")
            self.total = 0


def _progress() -> Any:
    from .apply import NullProgress

    return _TerminalProgress() if sys.stderr.isatty() else NullProgress()


# -- inventory -----------------------------------------------------------------------------------

@cli.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@at_option
@pass_ctx
def list_(c: Ctx, fmt: str, at: str | None) -> None:
    """The inventory: every authority and certificate with its expiry and status."""
    from .queries import list_rows

    rows = list_rows(c.project, parse_when(at, utc_now()))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("Nothing in state yet: run `pki plan` and `pki apply`.")
        return
    cols = ["name", "kind", "issuer", "subject", "not_after", "days_left", "status", "backend"]
    table = [[printable(str(r[k] if r[k] is not None else "-")) for k in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(cols)]
    colors = {"ok": "green", "renew_due": "yellow", "expired": "red", "revoked": "red"}
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(cols, widths)).rstrip())
    color = c.color()
    for row in table:
        cells = [v.ljust(w) for v, w in zip(row, widths)]
        if color:
            cells[6] = click.style(cells[6], fg=colors.get(row[6].strip()))
        click.echo("  ".join(cells).rstrip())


@cli.command()
@click.argument("name", required=False)
@click.option("--file", "path", type=click.Path(dir_okay=False), metavar="PATH",
              help="Print a certificate or CRL file instead (git's textconv for state/crl/*.crl).")
@pass_ctx
def show(c: Ctx, name: str | None, path: str | None) -> None:
    """One authority or certificate in full (or, with --file, any certificate or CRL file)."""
    from .queries import describe_file
    from .queries import show as show_info

    if (name is None) == (path is None):
        raise PkiError("pass NAME or --file PATH")
    if path is not None:
        for k, v in describe_file(Path(path)):  # (a certificate's or CRL's text, e.g. a PR's: escaped)
            click.echo(printable(f"{k}: {v}" if k else v))
        return
    assert name is not None
    i = show_info(c.project, name)
    fields = [
        ("Name", f"{i['kind']}.{i['name']}"), ("Subject", i["subject"]), ("Issuer", i["issuer"]),
        ("Chain", " → ".join([i["name"]] + i["chain"])),
        ("Serial", i["serial"]), ("Not before", i["not_before"].isoformat()),
        ("Not after", i["not_after"].isoformat()), ("Key", f"{i['key']} in backend {i['backend']} ({i['key_ref']}, "
                                                           f"{i['key_origin']}{', exportable' if i['key_exportable'] else ', non-exportable'})"),
        ("SANs", ", ".join(i["sans"]) or "-"),
        ("Usages", ", ".join(i["usages"] + i["extended_usages"]) or "-"),
        ("CA", f"yes, path_length {i['path_length']}" if i["ca"] and i["path_length"] is not None
         else "yes" if i["ca"] else "no"),
        ("SHA-256", i["sha256"]), ("SHA-1", i["sha1"]), ("Signature", i["signature_algorithm"]),
        ("SKI", i.get("ski", "-")), ("AKI", i.get("aki", "-")),
    ]
    if "name_constraints" in i:
        nc = i["name_constraints"]
        fields.append(("Name constraints", f"permitted {', '.join(nc['permitted']) or '-'}; "
                                           f"excluded {', '.join(nc['excluded']) or '-'}"))
    if i.get("crl_urls"):
        fields.append(("CRL URL", ", ".join(i["crl_urls"])))
    if i["crl"]:
        fields.append(("CRL", f"number {i['crl']['number']}, next update {i['crl']['next_update']}, "
                              f"{i['crl'].get('revoked', 0)} revoked"))
    if i["revoked"]:
        fields.append(("Revoked", f"{i['revoked'].get('reason')} on {i['revoked'].get('date')}"))
    fields.append(("File", i["file"]))
    width = max(len(k) for k, _ in fields)
    for k, v in fields:  # what state's files hold, escaped
        click.echo(f"{k + ':':<{width + 1}} {printable(str(v))}")


@cli.command()
@click.argument("name")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="Where to write.")
@click.option("--no-key", is_flag=True, help="Only the certificate and its chain.")
@pass_ctx
def export(c: Ctx, name: str, directory: str, no_key: bool) -> None:
    """Write NAME.pem, NAME-key.pem (0600) and NAME-ca.pem (the chain to the root)."""
    from .queries import export as do_export

    for path in do_export(c.project, name, Path(directory), no_key=no_key):
        click.echo(f"wrote {path}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@trust_option
@pass_ctx
def keys(c: Ctx, fmt: str, trust_pins: tuple[str, ...]) -> None:
    """Every key in this PKI's namespace of each key store: in use (by which entry), pending deletion, or orphan."""
    c.trust_pins = trust_pins
    from .keys import key_rows

    rows = key_rows(c.project)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No keys in this PKI's key stores.")
        return
    table = [[printable(str(v)) for v in (r["backend"], r["key"], r["entry"] or r["status"])] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(["BACKEND", "KEY", "USED BY"])]
    click.echo("  ".join(h.ljust(w) for h, w in zip(["BACKEND", "KEY", "USED BY"], widths)).rstrip())
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.command()
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--upstream", "upstream_name", metavar="REMOTE/BRANCH",
              help="The remote branch to compare with (default: the branch's upstream).")
@click.option("--lock-timeout", default="0s", show_default=True, metavar="DURATION",
              help="How long to wait for an apply to finish.")
@trust_option
@pass_ctx
def prune(c: Ctx, auto_approve: bool, upstream_name: str | None, lock_timeout: str,
          trust_pins: tuple[str, ...]) -> None:
    """Delete orphan keys (no state names them), only when HEAD is the upstream's tip (fetched under the lock)."""
    c.trust_pins = trust_pins
    from .ci import actor
    from .keys import never_committed, orphans, upstream_tip
    from .lock import apply_lock, holder_info
    from .names import parse_duration

    project = c.project
    desired = project.desired()
    try:
        timeout = parse_duration(lock_timeout, allow_zero=True)
    except ValueError as e:
        raise PkiError(f"--lock-timeout: {e}") from None
    if not auto_approve and not sys.stdin.isatty():
        raise PkiError("not on a terminal: pass --auto-approve")
    repo = project.repository()
    upstream = repo.upstream(upstream_name) if repo is not None else None
    if repo is not None and upstream is None and repo.remotes():
        raise PkiError("this branch has no upstream (a detached HEAD?): pass --upstream REMOTE/BRANCH")
    stores = [project.store(n) for n in sorted(desired.stores)]
    with apply_lock(project.work_dir / "lock", stores, holder_info(actor()), desired.settings.state_dir,
                    timeout=timeout) as confirm:
        head, tip = upstream_tip(project, upstream)
        found, kept = never_committed(project, orphans(project, head=head, tip=tip))
        for note in kept:
            click.echo(printable(f"warning: {note}"), err=True)
        if not found:
            click.echo("No orphan keys.")
            return
        click.echo(f"{len(found)} orphan key(s) to delete:")
        for ref in found:
            click.echo(printable(f"  {ref.store}  {ref.id}"))
        if not auto_approve:
            answer = click.prompt("Delete them? Only 'yes' will be accepted", default="", show_default=False)
            if answer.strip() != "yes":
                raise PkiError("prune cancelled; nothing deleted")
        confirm()
        for ref in found:
            project.store(ref.store).delete(ref)
    click.echo(f"Deleted {len(found)} orphan key(s).")


@cli.command(name="import")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--backend", "backend", default=None, metavar="NAME", help="Key store for the imported keys.")
@pass_ctx
def import_(c: Ctx, directory: str, backend: str | None) -> None:
    """Adopt an existing PKI (CFSSL NAME.pem/NAME-key.pem or NAME.crt/NAME.key) without reissuing."""
    from .adopt import adopt

    for line in adopt(c.project, Path(directory), backend=backend):  # (file names and subjects: escaped)
        click.echo(printable(line))


@cli.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command()
@click.option("--trust-pin", "trust_pins", multiple=True, metavar="FINGERPRINT",
              help="Accept this audit key's pin without its predecessor's endorsement (a reviewed rekey "
                   "after the old key was lost; repeatable; also $PKI_TRUST_PIN).")
@pass_ctx
def verify(c: Ctx, trust_pins: tuple[str, ...]) -> None:
    """Check state/audit.jsonl: its hash chain, every signed head against the pinned audit key(s),
    that its last line is a signed head, and that the inventory and every certificate and CRL file
    agree with it. A log without signed heads passes with a warning (see the README)."""
    from . import auditsign
    from .audit import read_lines
    from .audit import verify as verify_lines

    c.trust_pins = trust_pins
    state = c.project.state
    lines = read_lines(state.audit_path)
    inv = state.parse_inventory(state.read_inventory_bytes())
    problems = verify_lines(lines, inv)
    warnings: list[str] = []
    if not problems:
        sigs = auditsign.load(state)
        signed, warnings = auditsign.verify(lines, sigs, c.project.trusted_pins)
        problems = auditsign.check_history(c.project, sigs) + signed + auditsign.verify_files(state, inv)
    for p in warnings:
        click.echo(printable(f"warning: {state.rel}/{p}"), err=True)
    if problems:
        for p in problems:
            click.echo(printable(f"{state.rel}/{p}" if p.startswith(("audit.jsonl", auditsign.FILE)) else p), err=True)
        sys.exit(EXIT_ERROR)
    sigs = auditsign.load(state)
    signed_text = (f"{len(sigs['heads'])} signed heads, the last at the last line, by the pinned key "
                   f"{sigs['keys'][-1]['fingerprint'][:16]}…" if sigs and sigs["heads"] else "NOT signed")
    click.echo(f"{state.rel}/audit.jsonl: {len(lines)} entries, hash chain intact, {signed_text}; the inventory "
               f"and every certificate and CRL file agree with it ({len(inv['objects'])} objects)")


# -- entry point ---------------------------------------------------------------------------------

def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {printable(message)}", err=True)
    sys.exit(EXIT_ERROR)


def main(argv: list[str] | None = None) -> None:
    from .log import configure

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    configure(debug)
    try:
        cli.main(args=argv, prog_name="pki", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as e:
        _fail(e.format_message())
    except ConfigError as e:
        if debug:
            raise
        click.echo(str(e), err=True)  # already `pki.toml:LINE: where: what`, like a compiler
        sys.exit(EXIT_ERROR)
    except PkiError as e:
        if debug:
            raise
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one line unless --debug
        if debug:
            raise
        _fail(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback; please report it)")
