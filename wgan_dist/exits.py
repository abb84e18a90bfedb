"""Exit codes, and how every command line turns an error into one line.

| code | meaning |
|---|---|
| 0  | finished: the run reached train.steps (or the command did its job) |
| 1  | failed: something broke while running (a bug, a full disk, a dead rank); one line names it |
| 2  | refused: a bad setting, input, data or checkpoint; the line says which and how to fix it |
| 75 | stopped by a signal (SIGTERM, SIGINT, SIGUSR1) **after saving a checkpoint**: resume it. The Slurm and torchrun scripts requeue or relaunch on this code (75 is EX_TEMPFAIL, "try again later") |
| 128+N | stopped by signal N without a checkpoint: a second signal, or the grace period ran out |

``--debug`` (or ``WGAN_DIST_DEBUG=1``) prints the traceback as well.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

OK, FAILED, REFUSED, STOPPED = 0, 1, 2, 75


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text and "default" not in text
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def debug_enabled(argv: list[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("WGAN_DIST_DEBUG", "") not in ("", "0")


def refusal_types() -> tuple[type[BaseException], ...]:
    """Errors that mean "the input is wrong", not "the program broke": exit 2."""
    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError, LookupError)


def one_line(exc: BaseException) -> str:
    """The error as one line. An error raised inside a DataLoader worker arrives wrapped
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its last line
    is the original message."""
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split())
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, FileExistsError)):
        text = f"{type(exc).__name__}: {text}"
    elif not isinstance(exc, refusal_types()):
        text = f"{type(exc).__name__}: {text}"
    return text


EXIT_DIR_ENV = "WGAN_DIST_EXIT_DIR"


def report_exit(code: int) -> None:
    """Leave this process's exit code in ``$WGAN_DIST_EXIT_DIR/rank-<RANK>`` when the variable
    is set. Launchers report their own code, not the trainer's (``accelerate launch`` 130 after
    Ctrl-C, torchrun 1 after any signal), so ``launch/relay.sh`` reads these to give 75 when
    every process stopped with a checkpoint. A process ended by the stop watchdog writes
    nothing, so it never counts as stopped cleanly."""
    folder = os.environ.get(EXIT_DIR_ENV)
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"rank-{int(os.environ.get('RANK', '0'))}"), "w") as f:
            f.write(f"{code}\n")
    except (OSError, ValueError):
        pass  # the launcher's own exit code stands


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        prefix: str = "error") -> int:
    """Call a command's ``main`` and turn what escapes it into an exit code and one line
    (also left for the launch scripts, ``report_exit``)."""
    code = _run(main, argv, prefix)
    report_exit(code)
    return code


def _run(main: Callable[[list[str] | None], int], argv: list[str] | None, prefix: str) -> int:
    debug = debug_enabled(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr, flush=True)
        return 128 + 2
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 -- the one place every error is turned into a line
        if debug:
            traceback.print_exc()
        code = REFUSED if isinstance(exc, refusal_types()) else FAILED
        hint = "" if debug else " (--debug for the traceback)" if code == FAILED else ""
        print(f"{prefix}: {one_line(exc)}{hint}", file=sys.stderr, flush=True)
        return code
