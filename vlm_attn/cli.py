"""The `vlm-attn` command line: a thin layer over the public API and the eval package.

    vlm-attn generate --model tiny-llava --method var            # no download: tiny random model + sample image
    vlm-attn generate --model llava-hf/llava-1.5-7b-hf --image cat.jpg --prompt "Describe it." --method var
    vlm-attn calibrate-sinks --model Qwen/Qwen2.5-VL-3B-Instruct --image a.jpg --out sinks.json

Each subcommand lives in `vlm_attn/commands/<name>.py` and registers its own parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Sequence

from .commands import COMMANDS


EXIT_USAGE = 2  # bad flags, files or settings: the user can fix them (argparse uses 2 as well)
EXIT_FAILURE = 1  # the program failed while running
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line too: ``error: <what argparse found>; see `<prog> --help` `` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def _configure_logging(level: int) -> None:
    """Our records on stderr with their level. huggingface_hub logs through its own stderr handler and also
    propagated to the root one, so each of its warnings (the hub retries) printed twice: it keeps its own only."""
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    hub = logging.getLogger("huggingface_hub")
    if hub.handlers:
        hub.propagate = False


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vlm-attn",
        description="Training-free attention steering for HuggingFace vision-language models.",
        epilog="Errors are one line (what is wrong; how to fix it). Exit codes: 0 success, 2 bad input "
               "(flags, files, settings), 1 a failure while running, 130 interrupted. --debug shows tracebacks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vlm_attn.commands.{name}").register(sub)
    return parser


class CommandError(SystemExit):
    """How `main` ends on an error: exit status `code`; `str()` is the one line written to stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


def _fail(code: int, message: str) -> CommandError:
    sys.stderr.write(f"error: {message}\n")
    return CommandError(code, message)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[len("error: "):] if text.startswith("error: ") else text


def _exit_code(exc: BaseException) -> int:
    """2 for what the user can fix (bad flags, files, settings, unsupported models), 1 for failures."""
    from .errors import UserError
    from .patches.base import UnsupportedModelError

    if isinstance(exc, (UserError, UnsupportedModelError, FileNotFoundError, IsADirectoryError, PermissionError,
                        ValueError, TypeError, ImportError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; every error ends in one line on stderr (`--debug` re-raises it with its traceback)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    _configure_logging(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except SystemExit as exc:  # commands raise SystemExit("error: ...") for bad flags
        if isinstance(exc.code, str) and not isinstance(exc, CommandError):
            if args.debug:
                raise
            raise _fail(EXIT_USAGE, _one_line(exc.code)) from None
        raise
    except KeyboardInterrupt:
        if args.debug:
            raise
        raise _fail(EXIT_INTERRUPTED, "interrupted; an eval run resumes with the same command plus --resume") from None
    except Exception as exc:  # noqa: BLE001 - the CLI's single place that turns errors into one line
        if args.debug:
            raise
        code = _exit_code(exc)
        hint = "" if code == EXIT_USAGE else f" ({type(exc).__name__}; rerun with --debug for the traceback)"
        raise _fail(code, f"{_one_line(exc)}{hint}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
