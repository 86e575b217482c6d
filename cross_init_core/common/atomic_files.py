"""Files written whole or not at all, as ordinary files a reader can trust.

A temp file beside the target, synced to disk, then renamed over it (or, where nothing may be replaced, given
its name only if that name is free): a crash leaves the old file (or no file) and at most one hidden
`.STEM.xxxxxxxx.tmp`, never a half-written target. The temp file is created with the process umask, not
mkstemp's private 0600, so the result is readable as any file the user saves.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_exclusive(path: Path) -> None:
    """Creates `path` empty, with the process umask; FileExistsError if anything is there already."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))


def create_temp(folder: Path, stem: str) -> Path:
    """A new empty hidden temp file in `folder`, named after `stem` (ComfyUI lists no hidden file)."""
    while True:
        tmp = folder / f".{stem}.{secrets.token_hex(4)}.tmp"
        try:
            create_exclusive(tmp)
        except FileExistsError:
            continue
        return tmp


def write_synced(path: Path, data: bytes) -> None:
    """Writes `data` into the existing file `path` and syncs it to disk."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_atomically(final: Path, data: bytes) -> Path:
    """`final` (its folder created if needed) holds `data` afterwards, or is left as it was."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp(final.parent, final.stem)
    try:
        write_synced(tmp, data)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def link_new(tmp: Path, final: Path) -> None:
    """Gives the written temp file `tmp` the name `final` only if nothing has that name (FileExistsError otherwise),
    atomically: a hard link, or where the file system has none, an exclusive create that reserves the name
    before the rename. `tmp` is the caller's to remove."""
    try:
        os.link(tmp, final)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links here
    create_exclusive(final)
    try:
        os.replace(tmp, final)
    except BaseException:
        final.unlink(missing_ok=True)  # our empty placeholder
        raise


# the suffix write_new adds when STEM+SUFFIX is taken (-xxxxxxxx, 8 hex digits), as a glob pattern for who cleans up
TAKEN_NAME_SUFFIX_GLOB = "-" + "[0-9a-f]" * 8


def write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Writes `data` as a new file in `folder`: STEM+SUFFIX, or STEM-xxxxxxxx+SUFFIX when that name is taken.
    Never replaces a file; returns the path written."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = create_temp(folder, stem)
    try:
        write_synced(tmp, data)
        name = f"{stem}{suffix}"
        while True:
            try:
                link_new(tmp, folder / name)
                return folder / name
            except FileExistsError:
                name = f"{stem}-{secrets.token_hex(4)}{suffix}"
    finally:
        tmp.unlink(missing_ok=True)


def write_all(folder: Path, files: list[tuple[str, bytes, bool]]) -> list[Path]:
    """Writes each (file name, data, may replace) into `folder`, all or none (`write_all_paths`). Returns the paths, in
    the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_all_paths([(folder / name, data, may_replace) for name, data, may_replace in files])


def write_all_paths(files: list[tuple[Path, bytes, bool]]) -> list[Path]:
    """Writes each (path, data, may replace), all or none, in one folder or several (their folders made if needed):
    every file is first written to a temp file beside it, then each takes its name (a name that may not be replaced
    only while it is free: FileExistsError otherwise). On any error the files already placed are removed, and those
    already replaced get their old bytes back, so every folder is as it was. Returns the paths, in the order given."""
    temps: list[Path] = []
    backups: list[Path] = []
    placed: list[tuple[Path, Path | None]] = []  # (file, the temp copy of what it replaced, or None: it was new)
    try:
        for final, data, _may_replace in files:
            final.parent.mkdir(parents=True, exist_ok=True)
            temps.append(tmp := create_temp(final.parent, final.stem))
            write_synced(tmp, data)
        for (final, _data, may_replace), tmp in zip(files, temps, strict=True):
            if may_replace and final.exists():
                backups.append(backup := create_temp(final.parent, final.stem))
                write_synced(backup, final.read_bytes())  # a copy: the name keeps a whole file at every moment
                os.replace(tmp, final)
                placed.append((final, backup))
            else:
                link_new(tmp, final)
                placed.append((final, None))
    except BaseException:
        for final, backup in reversed(placed):
            if backup is None:
                final.unlink(missing_ok=True)
            else:
                os.replace(backup, final)
        raise
    finally:
        for leftover in (*temps, *backups):
            leftover.unlink(missing_ok=True)
    return [final for final, _backup in placed]
