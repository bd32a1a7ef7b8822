"""Training checkpoints: one file per saved step, written atomically, read back with ``weights_only=True``.

Layout: ``<out_dir>/checkpoints/step_00001000.pt`` holds the state after 1000 optimizer steps. A file is
written to a temporary name in the same folder, flushed to disk, then renamed over the final name, so a
crash at any moment leaves either no new file or a complete one: the latest checkpoint is never corrupt.
Since files are read with ``torch.load(weights_only=True)``, a checkpoint holds only tensors and plain
containers of numbers and strings; ``save_checkpoint`` rejects anything else by name before writing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import SVGError
from ..utils.files import atomic_path
from ..utils.pretrained import load_torch_file

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step_(\d{8})\.pt")
PLAIN_TYPES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype)


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after ``step`` steps of a run in ``out_dir`` lives."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of ``out_dir``, oldest first (temporary files are not listed)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(CHECKPOINT_NAME.fullmatch(p.name), p) for p in folder.iterdir()]
    return sorted((int(match.group(1)), path) for match, path in found if match)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The most advanced checkpoint of ``out_dir``, or None."""
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1][1] if checkpoints else None


def check_plain(value: object, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first entry of ``value`` that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoint keys must be str or int")
            check_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, PLAIN_TYPES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, numbers, strings and "
            "lists/dicts of them (convert it in the trainer's state_dict)"
        )


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename); return ``path``."""
    check_plain(state)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state on the CPU, read with ``weights_only=True``; SVGError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise SVGError(f"checkpoint {path} does not exist")
    return load_torch_file(path)


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints, and temporary files a crashed save left behind.

    Call it only from the one process that writes checkpoints, between saves.
    """
    for _, path in list_checkpoints(out_dir)[:-keep]:
        path.unlink(missing_ok=True)
    for leftover in (Path(out_dir) / CHECKPOINT_DIR).glob(".step_*.tmp"):
        leftover.unlink(missing_ok=True)
