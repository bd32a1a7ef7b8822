"""Training metrics: averaged over micro-batches, steps and ranks, written as JSONL, CSV and TensorBoard.

Trainers record scalars with ``ctx.log(name=value)``. Values stay on the device until a log step, where one
all-reduce turns every name's sum and count into the mean over everything recorded since the last line, on
all ranks. Rank 0 appends the line to ``metrics.jsonl`` and ``metrics.csv`` (the CSV is rewritten with a wider
header when a new name appears, e.g. a discriminator loss that starts late) and to TensorBoard when
``torch.utils.tensorboard`` imports. A resumed run first drops the lines written after its checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..utils.files import atomic_path
from .distributed import all_reduce_


class RunningMeans:
    """Sums and counts of scalars per name, reduced to means over all ranks by ``pop_means``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: float | torch.Tensor) -> None:
        value = torch.as_tensor(value).detach().to(self.device, torch.float32).reshape(())
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def pop_means(self) -> dict[str, float]:
        """Means since the last call over every rank, then start afresh. Every rank must record the same names."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = torch.stack([self.sums[n] for n in names] + [torch.tensor(float(self.counts[n]), device=self.device) for n in names])
        all_reduce_(totals)
        sums, counts = totals.tolist()[: len(names)], totals.tolist()[len(names) :]
        self.sums.clear()
        self.counts.clear()
        return {name: s / c for name, s, c in zip(names, sums, counts)}


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Writes one record per log step to ``out_dir``; a no-op on ranks other than 0 (``enabled=False``).

    ``start_step``: records of later steps (written after the checkpoint a run resumes from) are dropped.
    """

    def __init__(self, out_dir: str | Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.jsonl = Path(out_dir) / "metrics.jsonl"
        self.csv = Path(out_dir) / "metrics.csv"
        self.records = [r for r in read_records(self.jsonl) if r["step"] <= start_step]
        self.columns: list[str] = []
        self.tensorboard = None
        if not enabled:
            return
        with atomic_path(self.jsonl) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._rewrite_csv()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self.tensorboard = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict) -> None:
        """Append ``record`` (a dict with ``step`` and scalar values)."""
        self.records.append(record)
        if not self.enabled:
            return
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if set(record) <= set(self.columns):
            with open(self.csv, "a", newline="") as handle:
                csv.DictWriter(handle, self.columns).writerow(record)
        else:
            self._rewrite_csv()
        if self.tensorboard is not None:
            for name, value in record.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, record["step"])
            self.tensorboard.flush()

    def _rewrite_csv(self) -> None:
        self.columns = list(dict.fromkeys(name for record in self.records for name in record)) or ["step"]
        with atomic_path(self.csv) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.records)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def plot_loss_curves(records: list[dict], path: str | Path) -> Path | None:
    """One panel per logged loss (names containing "loss") against the step, as a PNG; None when nothing to plot."""
    names = sorted({name for record in records for name in record if "loss" in name})
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.5 * columns, 3.2 * rows))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92, hspace=0.6, wspace=0.3)
    for i, name in enumerate(names):
        points = [(r["step"], r[name]) for r in records if name in r]
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.plot([s for s, _ in points], [v for _, v in points], linewidth=1.2)
        if all(v > 0 for _, v in points):
            axes.set_yscale("log")
        axes.set_title(name)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(path)
