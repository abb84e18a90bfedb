"""Names that become paths: class names and input file names.

A class name ends up as a folder name (``generate`` writes ``OUT/<class>/``), in manifests,
checkpoints and one-line messages. Wherever one enters -- a class folder, a QuickDraw file
name, an ``.ndjson`` ``"word"``, a manifest, ``data.class_names``, a checkpoint -- it is
checked here, and a name that could leave its root (``..``, ``a/b``, an absolute path) or
break a one-line message (control characters) is refused where it enters. A file name that
is not valid UTF-8 cannot be stored in a manifest; ``printable`` names it anyway.
"""
from __future__ import annotations

import os
import unicodedata

MAX_NAME_BYTES = 200  # file systems allow 255 bytes a component; leave room for suffixes


def printable(path: str) -> str:
    """A path as text that can be printed and stored in JSON: bytes that are not UTF-8
    (Python keeps them as lone surrogates) are shown as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(path: str) -> bool:
    """Whether a path (as ``os.listdir`` returns it) is valid UTF-8 text."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def class_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a class name (one folder name under an output root), or None."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name.strip():
        return "empty"
    if not is_utf8(name):
        return "not valid UTF-8"
    if name in (".", ".."):
        return f"{name!r} is a path, not a name"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):
        return "contains a control character"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def check_class_names(names: list, where: str) -> None:
    """Raise ValueError naming ``where`` and the first unusable class name."""
    for name in names:
        why = class_name_problem(name)
        if why:
            shown = printable(name) if isinstance(name, str) else repr(name)
            raise ValueError(f"{where}: class name {shown[:80]!r} cannot be used ({why}); "
                             f"a class name becomes a folder name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: class name {name!r} appears twice")
        seen.add(name)


def path_under(root: str | os.PathLike, *parts: str) -> str:
    """``root/parts...``, refusing (ValueError) any result outside ``root``: the last guard of
    every writer that puts a name from data into a path."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, path]) != base or path == base:
        raise ValueError(f"{os.path.join(str(root), *parts)}: outside the output folder {root}")
    return os.path.join(os.fspath(root), *parts)
