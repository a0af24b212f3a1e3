"""JSON Lines files, written atomically and read with errors that name the line.

Not a lecture concept: the file layer under :meth:`tinyrlhf.Preferences.to_jsonl` and
:meth:`tinyrlhf.Preferences.from_jsonl`, which read and write the preference format of TRL's
reward and DPO trainers (one JSON object per line). This module knows JSON Lines; which keys
a record must have is the caller's business.

Writing (:func:`write_jsonl`, :func:`atomic_write_text`) replaces a file the way a careful
editor saves it: the text goes to a new temporary file in the target's directory, is flushed
and fsynced, and is renamed over the target (``os.replace``, atomic on POSIX); the directory
is fsynced after. A reader, a failed write or a killed process never sees or leaves half a
file. Like ``open(path, "w")`` it writes through symbolic links, keeps an existing file's
mode, gives a new one ``0o666 & ~umask``, and refuses a read-only file. Devices, pipes and
paths under ``/dev/`` or ``/proc/`` have no file to replace and are written in place.

Reading (:func:`read_jsonl`) splits at ``"\\n"`` only: U+2028, U+2029 and U+0085 are ordinary
characters inside a JSON string (``str.splitlines`` would split on them), so the writer
escapes them as ``\\uXXXX`` and the reader never splits on them. A UTF-8 byte order mark at
the start is skipped, blank lines are skipped, and every failure is a ``ValueError``
``"<path>:<line>: <what is wrong>"``.

References:
    JSON Lines, https://jsonlines.org; RFC 8259 (JSON); POSIX ``rename(2)`` (atomic
    replacement); L. von Werra et al., "TRL: Transformer Reinforcement Learning",
    github.com/huggingface/trl (dataset formats).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import secrets
import stat
from collections.abc import Iterable, Iterator

#: Characters that JSON treats as whitespace (a line of only these is blank).
JSON_WHITESPACE = " \t\r\n"
#: Unicode line breaks that JSON leaves raw but ``str.splitlines`` splits on: written as
#: ``\uXXXX`` escapes (valid JSON, same strings) so that any line reader keeps one record
#: per line.
ESCAPE_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
#: Paths written in place, never replaced: devices and the process's own descriptors.
SPECIAL_DIRECTORIES = ("/dev/", "/proc/")
#: Write permission for the owner, the group or others.
ANY_WRITE_BIT = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


# ------------------------------------------------------------------------------ paths
def check_path(path: object, name: str = "path") -> str | bytes:
    """A file name: str, bytes or ``os.PathLike`` (an int would be a file descriptor).

    Raises:
        TypeError: anything else, naming ``name``.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} must be a file name (str or pathlib.Path), got {type(path).__name__} "
            f"{short_repr(path)}"
        )
    return os.fspath(path)


def short_repr(value: object) -> str:
    """``repr`` cut to 60 characters (a 4000-digit integer makes a useless message)."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- writing
def dumps_line(record: object) -> str:
    """One JSON Lines line (without its ``"\\n"``): UTF-8 text kept as is, the Unicode line
    breaks of :data:`ESCAPE_LINE_BREAKS` escaped."""
    return json.dumps(record, ensure_ascii=False).translate(ESCAPE_LINE_BREAKS)


def write_jsonl(path: object, records: Iterable[object]) -> None:
    """Replace the file at ``path`` by one JSON line per record, atomically
    (:func:`atomic_write_text`; module docstring).

    Raises:
        TypeError: ``path`` is not a str, bytes or ``os.PathLike``.
        PermissionError, IsADirectoryError, OSError: as :func:`atomic_write_text`.
    """
    file_name = check_path(path)
    atomic_write_text(file_name, "".join(dumps_line(record) + "\n" for record in records))


def atomic_write_text(path: str | bytes, text: str) -> None:
    """Replace the file at ``path`` (through symlinks) by ``text`` atomically.

    The text goes to a new temporary file in the target's directory, created with mode
    ``0o666`` (the kernel applies the umask, as ``open`` does) or the existing file's mode,
    is fsynced and renamed over the target with ``os.replace``; the directory is fsynced
    after. On any failure (or KeyboardInterrupt) the temporary file is removed and the
    target is untouched; a killed process leaves at most a hidden ``.<name>.<random>.tmp``.
    A device, a pipe or a path under ``/dev/`` or ``/proc/`` is written in place, appending.

    Raises:
        PermissionError: the existing file is read-only (no write permission, or no write
            bit at all, which even root respects here), or the directory is not writable.
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: the directory does not exist.
        OSError: the disk is full, ...
    """
    display = os.fsdecode(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        status = None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(f"{display} is a directory, not a file to write")
    if (status is not None and not stat.S_ISREG(status.st_mode)) or os.path.abspath(
        display
    ).startswith(SPECIAL_DIRECTORIES):
        # a device, a pipe, /dev/stdout or /proc/self/fd/N: no file to replace (replacing
        # or truncating the regular file behind a redirected /dev/stdout would lose the
        # shell's output, so append, which on a device or pipe is plain writing)
        with open(path, "a", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        return
    target = os.path.realpath(path)  # write through symbolic links, keep the links
    if status is not None:
        if not os.access(target, os.W_OK) or not status.st_mode & ANY_WRITE_BIT:
            raise PermissionError(
                f"{display} is read-only (mode {stat.filemode(status.st_mode)}); not "
                "overwritten. Make it writable (chmod u+w) or write to another path"
            )
    directory, base = os.path.split(os.fsdecode(target))
    descriptor, temporary = _create_temporary(directory, base)
    try:
        if status is not None:  # keep the existing file's permissions
            os.chmod(temporary, stat.S_IMODE(status.st_mode))
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _create_temporary(directory: str, base: str) -> tuple[int, str]:
    """Open a new file ``directory/.base.<random>.tmp`` for writing; ``(descriptor, path)``.

    Mode ``0o666`` minus the umask, like ``open(path, "w")`` gives a new file
    (``tempfile.mkstemp`` would give ``0o600``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temporary = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no directory {directory!r} to write {base!r} in; create it first"
            ) from None
        except PermissionError:
            raise PermissionError(
                f"cannot create files in {directory!r} (the new {base!r} is written next to "
                "it, then renamed over it); choose a writable directory"
            ) from None
    raise FileExistsError(f"could not create a temporary file next to {base!r} in {directory}")


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a directory; the rename is done
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------- reading
def read_jsonl(path: object) -> Iterator[tuple[str, object]]:
    """The JSON values of a JSON Lines file, one per non-blank line, as ``(where, value)``
    with ``where = "<path>:<line>"`` for the caller's own messages.

    The whole file is read when iteration starts; lines end at ``"\\n"`` only (a ``"\\r"``
    before it is JSON whitespace); a UTF-8 byte order mark at the start is skipped.

    Raises:
        TypeError: ``path`` is not a str, bytes or ``os.PathLike``.
        ValueError: ``"<path>:<line>: <what is wrong>"`` for the first bad line: bytes that
            are not UTF-8, bad JSON, JSON nested too deeply or with an integer too long to
            read.
        OSError: the file cannot be read.
    """
    file_name = check_path(path)
    name = os.fsdecode(file_name)
    with open(file_name, "rb") as handle:
        data = handle.read()
    for line_number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{name}:{line_number}"
        line = decode_line(raw, line_number, where)
        if line.strip(JSON_WHITESPACE):
            yield where, parse_line(line, where)


def decode_line(raw: bytes, line_number: int, where: str) -> str:
    """One line of a JSON Lines file as text (a UTF-8 byte order mark on line 1 skipped).

    Raises:
        ValueError: not UTF-8, naming ``where``, the byte and its column.
    """
    if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{where}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
            f"{error.start + 1}); JSON lines files are UTF-8"
        ) from None


def parse_line(line: str, where: str) -> object:
    """The JSON value of one line.

    Raises:
        ValueError: bad JSON (with the column), JSON nested too deeply, or a value Python
            refuses to read (an integer literal of more than 4300 digits), naming ``where``.
    """
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: bad JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer literal of more than 4300 digits
        raise ValueError(f"{where}: unreadable JSON value ({error})") from None
