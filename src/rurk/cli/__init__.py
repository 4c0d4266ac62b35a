"""The ``rurk`` command line: parses arguments (:mod:`rurk.cli.parser`, light), checks every flag
(:mod:`rurk.cli.checks`), then imports and runs the one command asked for (:mod:`rurk.cli.commands`,
:mod:`rurk.cli.audit`). Nothing heavy is imported before the arguments parse: `rurk --version`, `--help` and usage
errors never load torch."""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from pathlib import Path

from ..threads import prefer_short_spin
from .parser import build_parser


def _pop_threads(argv: list[str]) -> tuple[list[str], str | None]:
    """``--threads N`` / ``--threads=N`` anywhere on the command line (every command takes it)."""
    out, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--threads" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith("--threads="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def _os_error(e: OSError) -> str:
    """``<path>: <what the system said> (<errno name>)`` of an OSError (the files written so far are complete: every
    store file and audit file is written to a temporary file and renamed)."""
    import errno

    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    what = e.strerror or str(e)
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    hint = "; free some space and rerun (finished work is kept)" if e.errno == errno.ENOSPC else ""
    return f"{paths or 'a file'}: {what}" + (f" ({name})" if name else "") + hint


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 some work failed (a method, a diverging training run), 2 a usage or input error,
    130 interrupted. Errors are one line; ``--debug`` (anywhere on the command line) shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    argv, threads = _pop_threads(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["RURK_PROGRESS"] = "0"
    prefer_short_spin()  # before torch loads: see rurk.threads, "Waiting threads"
    try:
        from ..threads import configure_threads
        from .checks import _check_args

        module, fn = args.fn.split(":")
        command = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
        # --threads, else RURK_THREADS / OMP_NUM_THREADS, else the CPUs this process may use; never more than those
        configure_threads(threads, source="--threads", warn=lambda m: print(f"rurk: warning: {m}", file=sys.stderr))
        _check_args(args)
        command(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
    except BrokenPipeError:  # `rurk methods | head`: the reader left; stop quietly, as a shell tool does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, a shell tool's status when its reader leaves
    except sqlite3.DatabaseError as e:  # a store database that breaks after _check_args passed it
        if debug:
            raise
        print(f"rurk: error: store database {Path(getattr(args, 'out', '.')) / 'rurk.sqlite'}: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:  # ConfigError: a ValueError
        if debug:
            raise
        print(f"rurk: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, a file where a folder should be: the path, in one line
        if debug:
            raise
        print(f"rurk: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # CellFailed, a diverging Original/Re-train, ...
        if debug:
            raise
        print(f"rurk: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rurk: interrupted; finished work is kept in the store, rerun to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
