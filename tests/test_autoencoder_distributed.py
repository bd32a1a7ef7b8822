"""Two gloo processes with half a batch each compute the alignment statistics and the adaptive GAN weight
of the whole batch, as one process does."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from svg_diffusion.autoencoder import Decoder, DecoderConfig, DistributionAlignment, adaptive_gan_weight

BATCH = 4


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "features": torch.randn(BATCH, 16, 4, 4, generator=g) * 2 + 1,
        "residual": torch.randn(BATCH, 3, 4, 4, generator=g) * 0.1 - 0.3,
        "latent": torch.randn(BATCH, 8, 8, 8, generator=g),
    }


def run_step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an autoencoder training step computes from (this process's part of) the batch."""
    align = DistributionAlignment("running").train()
    aligned = align(batch["features"], batch["residual"])
    torch.manual_seed(1)
    decoder = Decoder(DecoderConfig(z_channels=8, resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=0,
                                    attn_resolutions=()))
    recon = decoder(batch["latent"])
    weight = adaptive_gan_weight(recon.abs().mean(), -recon.tanh().mean(), decoder.last_layer)
    return {"aligned": aligned, "weight": weight, **{name: buf for name, buf in align.named_buffers()}}


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        share = BATCH // world_size
        local = {name: t[rank * share : (rank + 1) * share] for name, t in global_batch().items()}
        torch.save({name: t.detach() for name, t in run_step(local).items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = run_step(global_batch())
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in ("feature_mean", "feature_std", "residual_mean", "residual_std", "weight"):
            torch.testing.assert_close(result[name], single[name].detach(), msg=f"rank {rank}: {name}")
        torch.testing.assert_close(result["aligned"], single["aligned"][rank * 2 : rank * 2 + 2])
