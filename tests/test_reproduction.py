"""The small-scale reproduction benchmark's cheap parts (benchmarks/reproduction*.py): the report of three arms and a
variant from a synthetic results file, the results file's version, what the probe gives of the latent through an
arm's transform, and the one-line stops before a run (a missing autoencoder, a borrowed run of another recipe)."""

import json
import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from svg_diffusion.config import load_config, save_config, to_dict
from svg_diffusion.diffusion.latent_transform import fit_pca
from svg_diffusion.diffusion.latents import LatentStatistics
from svg_diffusion.trainers.diffusion import DiffusionTrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as the scripts have it
import reproduction  # noqa: E402
import reproduction_diagnosis as diagnosis  # noqa: E402
import reproduction_report as report  # noqa: E402
import reproduction_runs as runs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py

STEPS = [1000, 2000]
BORROWED = "runs/demo/dit_pca16"


def fid_point(fid: float, checkpoint: str) -> dict:
    return {"fid": fid, "samples": 2000, "num_steps": 25, "guidance_scale": 1.5, "shift": 2.0, "checkpoint": checkpoint}


def synthetic_results(out: Path) -> dict:
    """A version-2 results file of the three arms (the SVG arm's checkpoints borrowed) and one variant."""
    arms = {
        "SVG": {"config": "configs/demo/diffusion.yaml", "autoencoder": "runs/demo/autoencoder/autoencoder",
                "autoencoder_kind": "SVG: frozen demo-pretrained encoder (128 channels) + 8-channel residual",
                "latent": [8, 8, 136], "transform": "pca", "modelled": [8, 8, 16], "explained_variance": 0.963,
                "autoencoder_made_by": runs.ARMS["SVG"].autoencoder_made_by},
        **{arm: {"config": f"configs/demo/{name}_diffusion.yaml", "autoencoder": f"runs/demo/{name}/autoencoder",
                 "autoencoder_kind": "KL-regularized conv autoencoder (VAE), KL weight 1e-06",
                 "latent": [8, 8, channels], "transform": "per_channel", "modelled": [8, 8, channels],
                 "autoencoder_made_by": runs.ARMS[arm].autoencoder_made_by}
           for arm, name, channels in (("VAE", "vae", 4), ("VAE-16", "vae16", 16))},
    }

    def own(arm: str, step: int) -> str:
        return runs.shown(runs.run_dir(arm, out) / "checkpoints" / f"step_{step:08d}.pt")

    fid = {"SVG": {str(s): fid_point(60.0 - s / 100, f"{BORROWED}/checkpoints/step_{s:08d}.pt") for s in STEPS},
           **{arm: {str(s): fid_point(50.0 - s / 200, own(arm, s)) for s in STEPS} for arm in ("VAE", "VAE-16")},
           "SVG shift 3": {str(s): fid_point(55.0, own("SVG shift 3", s)) for s in STEPS}}
    probe_result = {"linear_top1": 0.8, "knn_top1": 0.82, "dim": 1024, "num_train": 50, "num_test": 50}
    recon = {"psnr": 25.0, "ssim": 0.85, "lpips": 0.05, "rfid": 30.0, "images": 2000}
    return {
        "version": runs.RESULTS_VERSION,
        "setting": {"machine": "x86_64 CPU", "samples": 2000, "reference": 2000, "threads": {"fid": 1}},
        "arms": arms,
        "fid": fid,
        "sampling": {arm: {"25/1.5": fid[arm]["2000"], "5/1": fid_point(70.0, own(arm, 2000))} for arm in arms},
        "probe": {name: {**probe_result, **row} for name, row in reproduction.probe_rows().items()},
        "reconstruction": {
            "SVG": {**recon, "arm": "SVG", "decodes": "latent", "latent": [8, 8, 136], "steps": None},
            "SVG through its DiT's transform": {**recon, "arm": "SVG", "decodes": "transform", "latent": [8, 8, 136],
                                               "steps": None, "transform": "pca", "modelled_channels": 16},
            "VAE": {**recon, "arm": "VAE", "decodes": "latent", "latent": [8, 8, 4], "steps": 1200},
            "VAE-16": {**recon, "arm": "VAE-16", "decodes": "latent", "latent": [8, 8, 16], "steps": 1200},
        },
        "diagnosis": {
            "decoder_noise": {arm: {level: {"rfid": rfid, "images": 2000} for level, rfid in rows.items()}
                              for arm, rows in (("SVG", {"0.1": 41.5, "0.2": 60.25}), ("VAE", {"0.1": 31.0, "0.2": 35.0}))},
            "decoder_training_noise": {"SVG": 0.0, "VAE": 0.00712},
            "latent_fit": {"VAE": {"2000": {"std_real": 1.0, "std_generated": 0.98, "held_out_loss": {"mean": 0.4321},
                                            "frechet": {"position": 0.0123, "position_real_halves": 0.0011,
                                                        "global": 0.25, "global_real_halves": 0.1}}}},
            "other_decoder": {"SVG": {"runs/demo/dec_noise/autoencoder": {"2000": {**fid_point(21.5, BORROWED),
                                                                                 "rfid_through_transform": 14.25}}}},
        },
        "variants": {"SVG shift 3": {"base": "SVG", "overrides": ["flow.shift=3"]}},
        "matched_shift": {"SVG shift 3": {"2000": {**fid_point(54.0, own("SVG shift 3", 2000)), "shift": 3.0}}},
    }


def report_args(out: Path) -> Namespace:
    return Namespace(out=out, steps=STEPS, sampling_at=STEPS[-1], sampling_steps=[5, 10, 25, 50], samples=2000,
                     reference=2000, probe_train=50, probe_test=50)


def test_the_report_renders_three_arms_and_a_variant(tmp_path, monkeypatch):
    out, images = tmp_path / "out", tmp_path / "images"
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nbefore\n\n{report.START}\nold\n{report.END}\n\nafter\n")
    (out / "results.json").parent.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(synthetic_results(out)))
    grid = runs.grid_path("VAE", STEPS[-1], out)
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"png")
    monkeypatch.setattr(report, "PAGE", page)
    monkeypatch.setattr(report, "IMAGES", images)
    images.mkdir()

    report.write_docs(runs.open_results(out / "results.json"), report_args(out))

    text = page.read_text()
    assert text.startswith("# Results\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "\nold\n" not in text
    assert "3 arms that differ only in the autoencoder" in text
    assert "| SVG | SVG: frozen demo-pretrained encoder (128 channels) + 8-channel residual" in text
    assert "| 8×8×136 | its whitened top-16 PCA directions (96.3% of the variance)" in text
    assert "| 8×8×16 | the latent normalized per channel | 1024 | `configs/demo/vae16_diffusion.yaml` |" in text
    assert "their input and output channels (SVG 16, VAE 4, VAE-16 16)" in text
    assert runs.ARMS["SVG"].autoencoder_made_by + "   # the SVG arm's autoencoder" in text
    assert f"--svg-checkpoints {BORROWED}" in text
    assert f"- SVG arm at step(s) 1000, 2000: the checkpoints of `{BORROWED}`, a\n  run made elsewhere" in text
    assert ("| DiT steps | SVG latents | VAE latents | VAE-16 latents |\n|---:|---:|---:|---:|\n"
            "| 1000 | 50.0 | 45.0 | 45.0 |\n| 2000 | 40.0 | 40.0 | 40.0 |") in text
    assert "| 5 | 1 | 70.0 | 70.0 | 70.0 |" in text
    assert "| SVG: autoencoder latent, all 136 channels | 1024 |" in text
    assert "| SVG: what its DiT models (8×8×16, whitened PCA directions) | 1024 |" in text
    assert "| VAE-16: what its DiT models (8×8×16, normalized per channel) |" in text
    assert ("| SVG through its DiT's transform | the latent through its DiT's whitened PCA directions (8×8×16 of "
            "8×8×136, 96.3% of the variance) | ? (no run log with the folder) |") in text
    assert "| VAE | the latent (8×8×4) | 1200 |" in text
    assert ("| arm | σ = 0 | σ = 0.1 | σ = 0.2 | noise in the latents it was trained on (RMS, same units) |\n"
            "|---|---:|---:|---:|---:|\n| SVG | 30.0 | 41.5 | 60.2 | 0.0000 |\n") in text
    assert "| VAE | 30.0 | 31.0 | 35.0 | 0.0071 |\n" in text and "| VAE-16 | 30.0 |" not in text  # no diagnosis: no row
    assert "| 2000 | VAE | 40.0 | 0.980 (1.000) | 0.0123 (0.0011) | 0.250 (0.100) | 0.432 |" in text
    assert ("| SVG | the arm's own | 2000 | 40.0 | 30.0 |\n"
            "| SVG | `runs/demo/dec_noise/autoencoder` | 2000 | 21.5 | 14.2 |") in text
    assert "| SVG shift 3 | `flow.shift=3` | 55.0 | 55.0 | k = 3: 54.0 |" in text
    assert "| VAE-16 | as in (1) |" in text
    assert "left to right: VAE):" in text and (images / "reproduction_samples_vae.png").read_bytes() == b"png"
    assert {path.name for path in images.iterdir()} == {
        "reproduction_fid_vs_steps.png", "reproduction_fid_vs_sampling.png", "reproduction_samples_vae.png"}


def test_results_of_an_earlier_version_are_refused(tmp_path):
    path = tmp_path / "results.json"
    assert runs.open_results(path).data == {}  # a new file
    path.write_text(json.dumps({"reconstruction": {"VAE (KL, 8x8x4)": {"psnr": 20}}}))  # the two-arm run's
    with pytest.raises(SystemExit, match=f"holds results of version 1 .* writes version {runs.RESULTS_VERSION}: "
                                         "give another --out"):
        runs.open_results(path)
    path.write_text(json.dumps({"version": runs.RESULTS_VERSION}))
    assert runs.open_results(path).get("version") == runs.RESULTS_VERSION


def test_probe_features_through_an_arms_transform():
    """The probe's flattened latents, through the transform, are the flattened transform of each latent map."""
    torch.manual_seed(0)
    z = torch.randn(12, 5, 3, 3) * torch.arange(1.0, 6.0).view(1, 5, 1, 1) + 2
    flat = z.flatten(1)  # as extract_features' patch pooling gives them
    pca = fit_pca([z], 5, components=2)
    assert torch.equal(reproduction.dit_features(flat, pca, (5, 3, 3)), pca.encode(z).flatten(1))
    assert reproduction.dit_features(flat, pca, (5, 3, 3)).shape == (12, 2 * 9)
    stats = LatentStatistics(z.mean((0, 2, 3)), z.std((0, 2, 3)))
    assert torch.equal(reproduction.dit_features(flat, stats, (5, 3, 3)), stats.encode(z).flatten(1))


def test_a_missing_autoencoder_stops_with_one_line_saying_how_to_make_it(tmp_path, monkeypatch):
    config = load_config(DiffusionTrainConfig, runs.ARMS["SVG"].config, [f"autoencoder={tmp_path / 'missing'}"])
    save_config(config, tmp_path / "svg.yaml")
    monkeypatch.setitem(runs.ARMS, "SVG", replace(runs.ARMS["SVG"], config=tmp_path / "svg.yaml"))
    with pytest.raises(SystemExit) as stop:
        runs.require_autoencoder("SVG")
    message = str(stop.value)
    assert "\n" not in message and message.startswith(f"SVG arm: no autoencoder at {tmp_path / 'missing'} ")
    assert message.endswith("make it with: mkdir -p runs/demo/autoencoder && "
                            "cp -r runs/demo/autoencoder_v1 runs/demo/autoencoder/autoencoder")


def test_a_borrowed_run_is_its_folder_or_its_checkpoints_folder_of_the_same_recipe(tmp_path):
    ours = runs.arm_config("SVG", tmp_path / "out", 1)
    assert runs.borrowed_run(None, ours) is None
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not a training run's out_dir or its checkpoints/ folder"):
        runs.borrowed_run(run / "checkpoints", ours)
    # Another recipe is refused before any autoencoder is loaded; engine bookkeeping and the autoencoder's name
    # are not the recipe (the latent the autoencoder encodes is compared instead).
    other = load_config(DiffusionTrainConfig, runs.ARMS["SVG"].config,
                        ["flow.shift=3", "autoencoder=demo-pipeline", "engine.max_steps=16000"])
    save_config(other, run / "config.yaml")
    for given in (run, run / "checkpoints"):
        with pytest.raises(SystemExit, match=rf"^--svg-checkpoints {run}: trained with other settings \(flow\)"):
            runs.borrowed_run(given, ours)


def test_latent_distances_are_scale_free_and_see_what_differs():
    """The diagnosis' relative Fréchet distances: ~0 for samples of the real distribution, unchanged when every
    coordinate is scaled, and clearly above the floor for a shifted or shrunk distribution; the global one also
    sees positions that go together wrongly (each position's marginal right)."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(4 * 3 * 3, 4 * 3 * 3, generator=generator) / 6
    def real_like(n):  # correlated positions, as images are
        return (torch.randn(n, 4 * 3 * 3, generator=generator) @ (torch.eye(36) + mixing)).view(n, 4, 3, 3)
    real, same = real_like(400), real_like(400)
    base = diagnosis.latent_distances(real, same)
    assert base["position"] < 0.02 and base["global"] < 0.15
    assert base["position_real_halves"] == diagnosis.latent_distances(real, real_like(400))["position_real_halves"]
    scaled = diagnosis.latent_distances(7 * real, 7 * same)
    assert scaled["position"] == pytest.approx(base["position"], rel=1e-6)
    assert scaled["global"] == pytest.approx(base["global"], rel=1e-6)
    shifted = diagnosis.latent_distances(real, same + 0.5)
    assert shifted["position"] > 10 * base["position_real_halves"] and shifted["global"] > 2 * base["global"]
    # Independent positions with the real marginals: per position right, as whole latents wrong.
    shuffled = same[torch.randperm(len(same), generator=generator)]
    scrambled = torch.where(torch.rand(400, 1, 3, 3, generator=generator) < 0.5, same, shuffled)
    mixed = diagnosis.latent_distances(real, scrambled)
    assert mixed["position"] < 0.02 and mixed["global"] > 1.5 * base["global_real_halves"]


def checkpoint_file(run: Path, step: int, config: DiffusionTrainConfig) -> Path:
    """A checkpoint file with what the reproduction reads of it (its engine settings)."""
    path = runs.checkpoint_path(run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": to_dict(config)["engine"]}, path)
    return path


def test_measured_checkpoints_are_kept_and_a_pruned_one_is_a_one_line_stop(tmp_path):
    args = Namespace(out=tmp_path / "out", svg_run=None)
    results = runs.open_results(tmp_path / "results.json")
    config = runs.arm_config("VAE", args.out, 1)
    run = Path(config.engine.out_dir)
    assert runs.checkpoint_at("VAE", 1000, args, results, train=False) is None  # not trained: nothing trains
    own = checkpoint_file(run, 1000, config)
    kept = runs.checkpoint_at("VAE", 1000, args, results, train=False)
    assert kept == run / runs.MILESTONES / own.name and kept.samefile(own)
    own.unlink()  # the engine prunes it later: the kept link stays
    assert runs.checkpoint_at("VAE", 1000, args, results) == kept and kept.is_file()
    checkpoint_file(run, 3000, config)
    with pytest.raises(SystemExit, match=r"^VAE: the checkpoint of step 2000 is gone from .* its run is at step 3000$"):
        runs.checkpoint_at("VAE", 2000, args, results)
    assert runs.checkpoint_at("VAE", 2000, args, results, train=False) is None


def test_the_svg_arm_trains_a_missing_step_from_the_borrowed_runs_latest_earlier_checkpoint(tmp_path):
    config = runs.arm_config("SVG", tmp_path / "out", 4000)
    borrowed = tmp_path / "borrowed"
    for step in (1000, 2000, 8000):
        checkpoint_file(borrowed, step, config)
    runs.start_from_borrowed(config, borrowed, 4000)
    own = Path(config.engine.out_dir)
    assert [s for s, _ in runs.list_checkpoints(own)] == [2000]
    assert runs.checkpoint_path(own, 2000).samefile(runs.checkpoint_path(borrowed, 2000))
    runs.start_from_borrowed(config, borrowed, 4000)  # the own run is as far: nothing more
    checkpoint_file(own, 3000, config)
    runs.start_from_borrowed(config, borrowed, 4000)
    assert [s for s, _ in runs.list_checkpoints(own)] == [2000, 3000]
    other = load_config(DiffusionTrainConfig, runs.ARMS["SVG"].config,
                        [f"engine.out_dir={tmp_path / 'other'}", "engine.seed=1"])
    checkpoint_file(tmp_path / "third", 2000, other)
    fresh = runs.arm_config("SVG", tmp_path / "fresh", 4000)
    with pytest.raises(SystemExit, match="trained with other settings \\(engine.seed\\)"):
        runs.start_from_borrowed(fresh, tmp_path / "third", 4000)


def test_the_noise_a_kl_decoder_was_trained_on_is_its_posterior_std_in_the_dits_units():
    from svg_diffusion.autoencoder.vae import KLAutoencoder, VAEConfig
    from svg_diffusion.config import from_dict

    torch.manual_seed(0)
    vae = KLAutoencoder(from_dict(VAEConfig, {"kind": "vae", "image_size": 16, "latent_channels": 4, "decoder": {
        "z_channels": 4, "resolution": 16, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
        "attn_resolutions": []}})).eval()
    data = reproduction.FashionMNIST("test", image_size=16, limit=64)
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        _, logvar = vae.posterior(images)
    expected = float(logvar.exp().mean().sqrt())  # RMS posterior std, in the latent's own units
    unit = LatentStatistics(torch.zeros(4), torch.ones(4))
    assert diagnosis.training_noise(vae, unit, images) == pytest.approx(expected, rel=0.05)
    wider = LatentStatistics(torch.full((4,), 3.0), torch.full((4,), 4.0))  # the DiT's unit: 4 latent units
    assert diagnosis.training_noise(vae, wider, images) == pytest.approx(expected / 4, rel=0.05)
