import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def torchrun():
    """Run ``script args...`` as two gloo processes under torchrun (one thread each); fail with its stderr.

    ``--standalone`` lets the rendezvous bind a free port itself: picking one here and handing it over races
    with any other process that binds in between.
    """

    def run(script: str | Path, *args: str | Path, timeout: float = 300) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(script), *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=Path(script).parent,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        # What the workers printed (a Python traceback, or a C++ abort's one line) comes before torchrun's own
        # traceback, which starts in runpy; torchrun's summary of the failure comes last.
        launcher = done.stderr.find('Traceback (most recent call last):\n  File "<frozen runpy>"')
        workers = done.stderr[: launcher if launcher >= 0 else None]
        assert done.returncode == 0, workers[-4000:] + "\n...\n" + done.stderr[-1500:]

    return run
