import os
from pathlib import Path

import pytest
import torch

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Two cores per machine: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: `make setup` installs the Debian package dataset-fashion-mnist")
    return FMNIST_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and small batches: one thread is as fast, and much faster when other jobs share the cores.

    Modules of such tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
