"""A collection's small files: ``config.json`` (what it is) and ``manifest.json`` (where its
state is), each replaced atomically through ``shoal.storage.files``.

config.json: ``{"format", "name", "dim", "metric", "m", "ef_construction"}``, written once.

manifest.json: ``{"format", "segments": [file names, oldest first], "active": the last
segment's file if it is still growing (else null), "checkpoint_seq": the last log record the
segments and the payload store hold, "next_uid", "next_segment"}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from shoal.errors import CorruptIndexError
from shoal.storage import files

FORMAT = 2


def write_json(path: str, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (temp, fsync, rename, fsync dir)."""
    files.replace_atomically(path, [json.dumps(obj, indent=1, sort_keys=True).encode()])


def read(path: str) -> tuple[dict, dict]:
    """(config, manifest) of the collection directory ``path``, or ``CorruptIndexError``."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"manifest format {manifest.get('format')!r}, expected {FORMAT}")
        for field in ("segments", "checkpoint_seq", "next_uid", "next_segment"):
            if field not in manifest:
                raise ValueError(f"manifest has no {field!r}")
    except (OSError, ValueError) as exc:
        raise CorruptIndexError(f"{path}: collection files are missing or damaged ({exc})") from None
    return config, manifest


def write_manifest(path: str, segments: list[str], active: str | None, checkpoint_seq: int,
                   next_uid: int, next_segment: int) -> None:
    write_json(os.path.join(path, "manifest.json"), {
        "format": FORMAT, "segments": segments, "active": active, "checkpoint_seq": checkpoint_seq,
        "next_uid": next_uid, "next_segment": next_segment})


def create(path: str, config: dict) -> None:
    """Create a collection directory (empty, no segments) atomically: built under a hidden
    temp name (``.NAME.creating``, never a collection's name) and renamed into place."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.creating")
    if os.path.exists(tmp):
        files.rmtree(tmp)
    files.makedirs(tmp)
    write_json(os.path.join(tmp, "config.json"), {"format": FORMAT, **config})
    write_manifest(tmp, [], None, 0, 0, 1)
    files.rename(tmp, path)
    files.fsync_directory(os.path.dirname(path))
