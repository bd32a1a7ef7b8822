"""atomic_path: whole files or nothing, with the permissions a plain open() gives."""

import os
import stat

import pytest
import torch

from svg_diffusion.utils.files import atomic_path
from svg_diffusion.utils.pretrained import write_pretrained


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_written_files_get_the_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
        # safetensors writes its file anew: it must not keep mkstemp's private 0600
        write_pretrained(tmp_path / "model", "test-format", {"a": 1}, {"w": torch.zeros(2)})
    finally:
        os.umask(previous)
    for path in (tmp_path / "plain.txt", *(tmp_path / "model").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
