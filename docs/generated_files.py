"""Comparing and writing the files a docs script generates (render_messages.py, pagerduty_render.py):
a test fails on ``differences``, the script's normal run ``write``s them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path


def differences(produced: Mapping[str, str], root: Path, folder: str, owns: Callable[[str], bool] = lambda name: True) -> list[str]:
    """What differs between the files under ``root`` and ``produced`` (paths relative to ``root``),
    one line each; a file of ``folder`` the script ``owns`` by its name and no longer produces
    counts too."""
    out = []
    for path, content in sorted(produced.items()):
        file = root / path
        if not file.exists():
            out.append(f"{path} is missing")
        elif file.read_bytes() != content.encode("utf-8"):
            out.append(f"{path} differs from what the code produces")
    for path in _left_over(produced, root, folder, owns):
        out.append(f"{path} is no longer produced by the code")
    return out


def write(produced: Mapping[str, str], root: Path, folder: str, owns: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Write what changed and delete what is no longer produced; what was done, one line each."""
    done = []
    for path, content in sorted(produced.items()):
        file = root / path
        if not file.exists() or file.read_bytes() != content.encode("utf-8"):
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(content.encode("utf-8"))  # as bytes: no newline translation
            done.append(f"wrote {path}")
    for path in _left_over(produced, root, folder, owns):
        (root / path).unlink()
        done.append(f"deleted {path} (no longer produced)")
    return done


def _left_over(produced: Mapping[str, str], root: Path, folder: str, owns: Callable[[str], bool]) -> list[str]:
    directory = root / folder
    files = sorted(directory.glob("*")) if directory.is_dir() else []
    return [f"{folder}/{file.name}" for file in files if owns(file.name) and f"{folder}/{file.name}" not in produced]
