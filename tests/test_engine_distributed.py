"""Two gloo processes under torchrun compute what one process computes with the same global batch.

The test launches this file with ``python -m torch.distributed.run --nproc_per_node 2``; each process runs
``worker`` (both trainers, a bad config, an evaluation gather), then the test repeats the trainers in one
process and compares loss trajectories and final weights.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from engine_trainers import final_state, train
from svg_diffusion.training.sharding import shard_indices
from svg_diffusion.errors import SVGError
from svg_diffusion.training import Engine, EngineConfig, all_gather_rows, checkpoint_path, load_checkpoint, read_records
from svg_diffusion.training.distributed import unwrap

RUNS = {
    "classifier": dict(trainer="classifier", max_steps=6, checkpoint_every=3),
    "gan": dict(trainer="gan", max_steps=6, checkpoint_every=3, grad_accum_steps=2),
}


def worker(out_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    for name, settings in RUNS.items():
        trainer, _ = train(out_dir / name, **settings)
        modules = {key: unwrap(m).state_dict() for key, m in trainer.trainable_modules().items()}
        torch.save(modules, out_dir / f"{name}_rank{rank}.pt")
    report = {}
    try:
        Engine(EngineConfig(out_dir=str(out_dir / "bad"), max_steps=1, global_batch_size=6, grad_accum_steps=2, device="cpu"))
    except SVGError as err:
        report["bad_config"] = str(err)
    shard = torch.tensor(list(shard_indices(7, rank, 2)))
    report["gathered"] = all_gather_rows(shard).tolist()
    (out_dir / f"report_rank{rank}.json").write_text(json.dumps(report))


def trajectory(out_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_records(out_dir / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, torchrun) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    torchrun(__file__, out_dir, timeout=240)
    return out_dir


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_equal_one_process_with_the_same_global_batch(two_process_runs, tmp_path, name):
    _, single = train(tmp_path, **RUNS[name])
    for key in ("loss", "accuracy") if name == "classifier" else ("rec_loss", "g_loss", "d_loss"):
        ours, theirs = trajectory(tmp_path, key), trajectory(two_process_runs / name, key)
        assert len(ours) == len(theirs) > 0
        for (s1, v1), (s2, v2) in zip(ours, theirs):
            assert s1 == s2 and v1 == pytest.approx(v2, abs=1e-5), (key, s1)
    distributed = load_checkpoint(checkpoint_path(two_process_runs / name, 6))
    for module, weights in final_state(single)["modules"].items():
        for key, value in weights.items():
            torch.testing.assert_close(distributed["modules"][module][key], value, atol=1e-5, rtol=1e-4)
    # DDP kept the ranks identical
    rank0, rank1 = (torch.load(two_process_runs / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1))
    for module in rank0:
        for key in rank0[module]:
            assert torch.equal(rank0[module][key], rank1[module][key])


def test_gan_discriminator_starts_late_and_the_csv_widens(two_process_runs):
    records = read_records(two_process_runs / "gan" / "metrics.jsonl")
    assert ["d_loss" in r for r in records] == [False, False, True, True, True, True]
    header = (two_process_runs / "gan" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "d_loss" in header and {"lr/generator", "lr/discriminator"} <= set(header)


def test_world_size_checks_and_evaluation_gather(two_process_runs):
    for rank in (0, 1):
        report = json.loads((two_process_runs / f"report_rank{rank}.json").read_text())
        assert report["bad_config"] == "global_batch_size 6 is not divisible by world_size 2 x grad_accum_steps 2 = 4"
        assert report["gathered"] == list(range(7))  # uneven shards come back whole, in dataset order


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
