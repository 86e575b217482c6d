"""What the terminal commands (`train`, `eval`) share: exit codes, argument types, the photo suffixes and checks,
and the run of one command (argument errors, logging to stderr, usage errors and Ctrl-C as exit codes)."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO, TypeVar

from ..common.errors import CrossInitError
from ..common.settings import LEARNING_RATE_MAX, IntRange, learning_rate_ok

PROG = "python -m cross_init_core"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# photos the commands read (what ComfyUI's LoadImage and the upload route take)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels are turned
# every module of the client logs under this logger; a command shows it on stderr (all loggers with --verbose)
CLIENT_LOGGER = __name__.rsplit(".", 1)[0]

T = TypeVar("T", int, float)


class UsageError(CrossInitError):
    """Bad arguments or inputs found before any work (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# Argument types


def _number(text: str, convert: Callable[[str], T], noun: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None


def int_in(allowed: IntRange) -> Callable[[str], int]:
    """An argparse type: a whole number in `allowed` (e.g. the training settings' ranges)."""

    def parse(text: str) -> int:
        value = _number(text, int, "whole number")
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {allowed.describe()}")
        return value

    return parse


def learning_rate(text: str) -> float:
    """An argparse type: the training settings' learning rate (above 0, at most LEARNING_RATE_MAX)."""
    value = _number(text, float, "number")
    if not learning_rate_ok(value):
        raise argparse.ArgumentTypeError(f"{value} is out of range: use a value above 0 and at most {LEARNING_RATE_MAX:g}")
    return value


def add_console_options(group: argparse._ArgumentGroup, table: str) -> None:
    """--no-progress, -v/--verbose and -q/--quiet (`table`: what -q still shows besides warnings and errors)."""
    group.add_argument("--no-progress", action="store_true", help="no progress bar.")
    group.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's log messages.")
    group.add_argument("-q", "--quiet", action="store_true", help=f"only warnings, errors and the {table}.")


def add_local_comfyui_options(group: argparse._ArgumentGroup, workflow_help: str) -> None:
    """--comfyui, --base-directory, --workflow and --cpu: the ComfyUI started for the run when --server is not given."""
    group.add_argument("--comfyui", type=Path, metavar="PATH",
                       help="the local ComfyUI folder to start (default: the ComfyUI this pack is installed in, i.e. two "
                            "folders up from the pack, else $COMFYUI_PATH).")
    group.add_argument("--base-directory", type=Path, metavar="DIR",
                       help="the local ComfyUI's --base-directory (models/, input/, output/, custom_nodes/ root); default: "
                            "ComfyUI's own.")
    group.add_argument("--workflow", type=Path, metavar="FILE", help=workflow_help)
    group.add_argument("--cpu", action="store_true", help="run the local ComfyUI on the CPU even when a GPU is available "
                                                           "(the default without one).")


def parse_command(parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> argparse.Namespace:
    """`argv` parsed after its leading `command` word (train, eval), if it has one, and the shared option checks."""
    argv = list(argv)
    args = parser.parse_args(argv[1:] if argv[:1] == [command] else argv)
    check_console_and_local(parser, args)
    return args


def check_console_and_local(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse errors for the options above that exclude each other."""
    if args.verbose and args.quiet:
        parser.error("--verbose and --quiet exclude each other")
    if args.server and (args.comfyui or args.base_directory or args.cpu):
        parser.error("--comfyui, --base-directory and --cpu are for the local ComfyUI; with --server each server has its own")


# ---------------------------------------------------------------------------------------------
# Inputs


def is_photo(path: Path) -> bool:
    """A visible file with one of the photo suffixes."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def photo_problem(photo: Path) -> str | None:
    """What is wrong with an input photo (missing, not a file, another type, unreadable), or None."""
    from PIL import Image

    if not photo.is_file():
        return "not a file" if photo.exists() else "file not found"
    if photo.suffix.lower() not in IMAGE_SUFFIXES:
        return f"use {', '.join(IMAGE_SUFFIXES)} files"
    try:
        with Image.open(photo) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for broken files
        return f"not a readable image ({exc})"
    return None


def photo_size(photo: Path) -> tuple[int, int] | None:
    """(width, height) of a photo as it shows upright (its EXIF orientation applied); None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(photo) as image:
            width, height = image.size
            if _orientation(image) in (5, 6, 7, 8):  # a quarter turn: the photo shows with its sides swapped
                width, height = height, width
            return width, height
    except Exception:  # PIL raises many types for broken files; photo_problem names them
        return None


def _orientation(image: object) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)  # type: ignore[attr-defined]
    except Exception:  # a broken EXIF block: the photo is used as stored
        return 1


def upright_photo(photo: Path) -> tuple[bytes, str]:
    """(the bytes to upload, their suffix): the file as it is, or, when its EXIF orientation turns or mirrors it (a
    phone's sideways JPEG with Orientation=6), the upright pixels as a PNG, so every loader on the server (the stock
    ones ignore the tag in places) sees the photo the way it shows."""
    from PIL import Image, ImageOps

    data = photo.read_bytes()
    with Image.open(photo) as image:
        if _orientation(image) in (1, 0):
            return data, photo.suffix.lower()
        upright = ImageOps.exif_transpose(image)
        buffer = io.BytesIO()
        upright.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def folder_problem(option: str, path: Path) -> str | None:
    """What keeps `path` from being the folder a command writes into (made when missing): a file in its place or in
    the way of making it. Checked before any work, so nothing is run for files that could not be written."""
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if existing.is_dir():
            return None
        what = "exists and is not a folder" if existing == path else f"cannot be made: {existing} is a file"
        return f"{option} {path}: {what}; give a folder (it is made when missing)"
    return None


def file_problem(option: str, path: Path) -> str | None:
    """What keeps the file `path` from being written (replaced if it exists): it is a folder, or its folder is
    missing. Checked before any work, so a run's result is never lost at its end."""
    if path.is_dir():
        return f"{option} {path}: is a folder; give a file name"
    if not path.parent.is_dir():
        return f"{option} {path}: the folder {path.parent} does not exist; create it or give a file in an existing folder"
    return None


# ---------------------------------------------------------------------------------------------
# One command's run


@contextmanager
def logging_to(stream: TextIO, verbose: bool, quiet: bool, loggers: Sequence[logging.Logger]) -> Iterator[None]:
    """The command's own `loggers` (with --verbose everyone's) on `stream`, for the duration of one run."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = [(lg, lg.level, lg.propagate) for lg in loggers] + [(root, root.level, root.propagate)]
    if verbose:
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    else:
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False
            lg.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def run_command(argv: Sequence[str] | None, parse_args: Callable[[Sequence[str]], argparse.Namespace],
                body: Callable[[argparse.Namespace, TextIO, TextIO], int], interrupted: str,
                stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Parses `argv` (default: sys.argv), runs `body(args, stdout, stderr)` with the client's log on stderr and
    returns the exit code: argparse's for --help/--version and bad arguments, 2 for a UsageError (each line logged
    as `error: ...`), 130 for Ctrl-C (`interrupted` logged)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):  # argparse's help and errors go to sys.*
            args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    log = logging.getLogger(CLIENT_LOGGER)
    with logging_to(stderr, args.verbose, args.quiet, [log]):
        try:
            return body(args, stdout, stderr)
        except UsageError as exc:
            for line in str(exc).splitlines():
                log.error("error: %s", line)
            return EXIT_USAGE
        except KeyboardInterrupt:
            log.error("%s", interrupted)
            return EXIT_INTERRUPTED
