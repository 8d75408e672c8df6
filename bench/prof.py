"""Run one ``pki`` command in this process under a profiler (imports included).

    python bench/prof.py cprofile OUT.prof [TOP.txt] -- plan --detailed-exitcode
    python bench/prof.py pyinstrument OUT.txt -- apply --auto-approve

cProfile writes a pstats file (and, with TOP.txt, a text summary); pyinstrument a text tree (and
an HTML file next to it). The working directory is the project directory. Exit code is pki's.
"""

from __future__ import annotations

import io
import sys


def _run_cli(args: list[str]) -> int:
    sys.argv = ["pki", *args]
    try:
        from pkiascode._console import main

        main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def summarize(prof_path: str, top: int = 25) -> str:
    """Text summary of a pstats file: top functions by cumulative and by own time."""
    import pstats

    out = io.StringIO()
    st = pstats.Stats(prof_path, stream=out)
    st.strip_dirs()
    out.write("== by cumulative time ==\n")
    st.sort_stats("cumulative").print_stats(top)
    out.write("\n== by own (tottime) ==\n")
    st.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> int:
    argv = sys.argv[1:]
    sep = argv.index("--")
    opts, args = argv[:sep], argv[sep + 1:]
    tool, out = opts[0], opts[1]
    if tool == "cprofile":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        code = _run_cli(args)
        prof.disable()
        sys.stdout.flush()
        prof.dump_stats(out)
        if len(opts) > 2:
            with open(opts[2], "w") as f:
                f.write(summarize(out))
        return code
    if tool == "pyinstrument":
        from pyinstrument import Profiler

        p = Profiler(interval=0.0005)
        p.start()
        code = _run_cli(args)
        p.stop()
        sys.stdout.flush()
        with open(out, "w") as f:
            f.write(p.output_text(unicode=True, color=False, show_all=False))
        with open(out.rsplit(".", 1)[0] + ".html", "w") as f:
            f.write(p.output_html())
        return code
    raise SystemExit(f"unknown profiler {tool!r}")


if __name__ == "__main__":
    sys.exit(main())
