"""The ``vinvl`` command: one sub-command per step of the flow, each a thin call into the library.

Every sub-command is a module of this package with ``main(argv)`` that parses its arguments
before it imports the library, so ``vinvl --help``, ``vinvl <command> --help`` and a mistyped
command answer without importing paddle. :func:`run_main` runs a ``main`` the same way for
``vinvl`` and for every script in scripts/:

- Exit status: 0 on success (or what ``main`` returns, when that is an int); 2 for a mistake of
  the user's; 1, with the traceback, for a failure of the program.
- A user's mistake prints one line, ``vinvl <command>: error: <message>``. It is a
  :class:`vinvl.errors.UserError` (``DataError``, ``ConversionError``, ``UsageError``...),
  an argparse error (every ``argparse.ArgumentParser.error`` raises a ``UsageError`` while a
  command runs), or the file system refusing a path the user named (missing, already there,
  not a directory, no permission). ``--debug`` among the options, or ``VINVL_DEBUG=1``, adds
  the traceback.
- Library logs: paddlenlp's logger shows warnings and errors only, unless the command's module
  sets ``LIBRARY_LOG_LEVEL`` (training reports through the Trainer's INFO lines); ``--verbose``
  among the options shows all of it. The level is set when paddlenlp's logger is imported (at
  once if it is), so a command that never needs paddlenlp never imports it.
- Under ``paddle.distributed.launch``, a command that succeeds leaves its process group in the
  order :func:`vinvl.parallel.leave_after_rank_zero` gives (rank 0 exits first).
- A command with sub-commands of its own (``SUBCOMMANDS`` in its module, as ``vinvl index``)
  names the one given in its error lines: ``vinvl index build: error: ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from ..errors import USER_ERROR_STATUS, UsageError, UserError
from ..import_hooks import after_import
from ..parallel import leave_after_rank_zero

__all__ = ["COMMANDS", "GLOBAL_FLAGS", "main", "run_main"]

# name -> (module holding main(argv), one-line summary)
COMMANDS = {
    "demo": ("vinvl.commands.demo", "synthetic corpus -> train -> evaluate -> Taskflow queries -> HTML report"),
    "convert": ("vinvl.commands.convert", "official Oscar/VinVL or BERT checkpoint -> PaddleNLP model directory"),
    "convert-detector": ("vinvl.commands.convert_detector", "official VinVL detector checkpoint (.pth) -> Paddle detector directory"),
    "make-synthetic": ("vinvl.commands.make_synthetic", "write a synthetic corpus in the official coco_ir file format"),
    "train": ("vinvl.commands.train", "fine-tune with paddlenlp.Trainer from a JSON recipe, flags overriding it"),
    "eval": ("vinvl.commands.evaluate", "COCO 1K/5K retrieval evaluation: R@1/5/10 both ways, rsum"),
    "extract": ("vinvl.commands.extract", "photos -> region features and tags the loading script reads (resumable, sharded)"),
    "retrieve": ("vinvl.commands.retrieve", "answer text or image queries against a gallery through Taskflow"),
    "benchmark": ("vinvl.commands.benchmark", "measure scoring throughput, two-stage savings, FLOP/s, memory"),
    "calibrate": ("vinvl.commands.calibrate", "static int8 for a model, calibrated on a sample of your gallery (--precision int8)"),
    "calibrate-detector": ("vinvl.commands.calibrate_detector", "int8 for a detector, calibrated on a sample of your photos (--precision int8)"),
    "index": ("vinvl.commands.index", "build / extend a gallery index on disk (memory-mapped, atomically versioned)"),
    "serve": ("vinvl.commands.serve", "serve retrieval over a gallery index through HTTP (PaddleNLP SimpleServer, uvicorn)"),
}

GLOBAL_FLAGS = {
    "--debug": "show the traceback of a user error too (or set VINVL_DEBUG=1)",
    "--verbose": "show the libraries' INFO and DEBUG logs",
}

# A UserError, or the file system refusing a path the user named: one line, status 2.
USER_MISTAKES = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _usage() -> str:
    width = max(len(name) for name in list(COMMANDS) + list(GLOBAL_FLAGS))
    lines = ["usage: vinvl <command> [options] [--debug] [--verbose]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options of every command:"]
    lines += [f"  {flag.ljust(width)}  {summary}" for flag, summary in GLOBAL_FLAGS.items()]
    lines += ["", "Run `vinvl <command> --help` for a command's options. Exit status: 0 success, "
              "2 a user error (one line on stderr), 1 a program failure (with its traceback)."]
    return "\n".join(lines)


def _split_global_flags(argv: Sequence[str]) -> Tuple[List[str], set]:
    """``argv`` without the :data:`GLOBAL_FLAGS` found before any ``--``, and the set of those found."""
    rest, found = [], set()
    for position, token in enumerate(argv):
        if token == "--":
            rest.extend(argv[position:])
            break
        if token in GLOBAL_FLAGS:
            found.add(token)
        else:
            rest.append(token)
    return rest, found


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def _parser_errors_raise(prog: str) -> Iterator[None]:
    """While a command runs, argparse errors raise UsageError instead of printing usage and exiting."""

    def error(parser: argparse.ArgumentParser, message: str):
        raise UsageError(f"{message} (see `{prog} --help`)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


@contextlib.contextmanager
def _library_log_level(level: str) -> Iterator[None]:
    """paddlenlp's logger at ``level`` while a command runs (set when it is imported), then as it was."""
    previous = []

    def set_level(log_module) -> None:
        previous.append(log_module.logger.logger.level)
        log_module.logger.logger.setLevel(level)

    hook = after_import("paddlenlp.utils.log", set_level)
    try:
        yield
    finally:
        if hook is not None:
            hook.cancel()
        if previous:
            sys.modules["paddlenlp.utils.log"].logger.logger.setLevel(previous[0])


def _exit_status(code: Any) -> int:
    """The status ``sys.exit(code)`` would give the process (a message is printed as Python would)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_main(command_main: Callable[[List[str]], Any], argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None) -> int:
    """Run ``command_main(argv)`` as an entry point does and return the process exit status (see the module doc).

    ``argv`` defaults to ``sys.argv[1:]``, ``prog`` (the name error lines start with) to the script name.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or os.path.basename(sys.argv[0])
    argv, flags = _split_global_flags(argv)
    debug = "--debug" in flags or os.environ.get("VINVL_DEBUG") == "1"
    module = sys.modules.get(getattr(command_main, "__module__", ""), None)
    level = "DEBUG" if "--verbose" in flags else getattr(module, "LIBRARY_LOG_LEVEL", "WARNING")
    with _parser_errors_raise(prog), _library_log_level(level):
        try:
            result = command_main(argv)
        except SystemExit as exc:
            return _exit_status(exc.code)
        except USER_MISTAKES as exc:
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            return USER_ERROR_STATUS
    leave_after_rank_zero()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command_at = next((i for i, token in enumerate(argv) if token not in GLOBAL_FLAGS), len(argv))
    if command_at == len(argv) or argv[command_at] in ("-h", "--help"):
        print(_usage())
        return 0
    command = argv[command_at]
    if command not in COMMANDS:
        print(f"vinvl: error: unknown command {command!r} (commands: {', '.join(COMMANDS)}; see `vinvl --help`)",
              file=sys.stderr)
        return USER_ERROR_STATUS
    module = importlib.import_module(COMMANDS[command][0])
    rest = argv[:command_at] + argv[command_at + 1:]
    prog = f"vinvl {command}"
    sub_command = next((token for token in rest if token not in GLOBAL_FLAGS), None)
    if sub_command in getattr(module, "SUBCOMMANDS", ()):
        prog += f" {sub_command}"
    return run_main(module.main, rest, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
