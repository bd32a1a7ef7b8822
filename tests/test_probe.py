"""The fixed probe protocol on real Fashion-MNIST features: the linear probe reaches the optimum of its objective
(checked against scikit-learn), k-NN is DINO's weighted vote (checked against a plain loop), and the `probe`
command reports pixels and encoders (pooled [CLS, mean patch] and the patch map) in one table and a JSON file.
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from svg_diffusion.cli import main
from svg_diffusion.data import FashionMNIST
from svg_diffusion.encoders import VisionTransformer, get_config, load_encoder, save_encoder
from svg_diffusion.evaluation.features import encoder_tokens, pool_features
from svg_diffusion.evaluation.probe import (
    KNN_K,
    KNN_TEMPERATURE,
    PROBE_L2,
    knn_accuracy,
    linear_probe,
    probe_encoders,
    standardize,
)
pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest.py


def pixels(split: str, count: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    data = FashionMNIST(split, image_size=size, limit=count)
    return data.as_uint8()[:, 0].flatten(1).float(), data.labels


@pytest.fixture(scope="module")
def small_problem(fmnist_dir):
    return (*pixels("train", 400), *pixels("test", 200))


def test_linear_probe_reaches_the_optimum_of_its_objective(small_problem):
    train_x, train_y, test_x, test_y = small_problem
    ours = linear_probe(train_x, train_y, test_x, test_y)
    # The same objective in scikit-learn's form: C * sum(CE) + |W|^2 / 2, i.e. C = 1 / (L2 * n).
    train_s, test_s = standardize(train_x, test_x)
    reference = LogisticRegression(C=1 / (PROBE_L2 * len(train_x)), tol=1e-10, max_iter=20000)
    reference.fit(train_s.double().numpy(), train_y.numpy())
    theirs = float((torch.from_numpy(reference.predict(test_s.double().numpy())) == test_y).float().mean())
    assert ours == pytest.approx(theirs, abs=1.5 / len(test_y))  # at most one test image decided differently
    assert 0.6 < ours < 1.0


def test_knn_is_the_temperature_weighted_cosine_vote(small_problem):
    train_x, train_y, test_x, test_y = small_problem
    train_s, test_s = standardize(train_x, test_x)
    train_n, test_n = (torch.nn.functional.normalize(x, dim=1) for x in (train_s, test_s))
    correct = 0
    for point, label in zip(test_n, test_y):
        similarity = train_n @ point
        top = similarity.topk(KNN_K)
        votes = torch.zeros(10)
        for sim, index in zip(top.values, top.indices):
            votes[train_y[index]] += torch.exp(sim / KNN_TEMPERATURE)
        correct += int(votes.argmax() == label)
    assert knn_accuracy(train_x, train_y, test_x, test_y, block=64) == correct / len(test_y)


def test_encoder_tokens_pool_to_cls_plus_mean_and_to_the_patch_map(fmnist_dir, tmp_path):
    torch.manual_seed(0)
    folder = save_encoder(VisionTransformer(get_config("tiny")), tmp_path / "tiny")
    encoder = load_encoder(folder)
    images = torch.stack([FashionMNIST("test", limit=3)[i][0] for i in range(3)])
    tokens = encoder_tokens(encoder)(images)
    feature_map = encoder(images)  # [3, 64, 8, 8]
    torch.testing.assert_close(pool_features(tokens, "patch"), feature_map.flatten(2).transpose(1, 2).flatten(1))
    pooled = pool_features(tokens, "pooled")
    assert pooled.shape == (3, 128)
    torch.testing.assert_close(pooled[:, 64:], feature_map.mean((2, 3)))
    torch.testing.assert_close(pooled[:, :64], tokens["x_norm_clstoken"])


def test_probe_command_reports_pixels_and_encoders(fmnist_dir, tmp_path, capsys):
    torch.manual_seed(0)
    folder = str(save_encoder(VisionTransformer(get_config("tiny")), tmp_path / "tiny"))
    out = tmp_path / "probe.json"
    status = main(["probe", "--encoder", "pixels", "--encoder", folder, "--image-size", "16", "--train", "200",
                   "--test", "100", "--batch-size", "128", "--out", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    assert "| pixels | flattened image | 768 |" in table  # 3 x 16 x 16
    assert f"| {folder} | CLS + mean patch | 128 |" in table and f"| {folder} | patch map | 1024 |" in table
    report = json.loads(out.read_text())
    assert [(row["features"], row["mode"]) for row in report["rows"]] == [
        ("pixels", "pixels"), (folder, "pooled"), (folder, "patch")]
    assert report["protocol"]["knn_k"] == 20 and report["rows"][0]["num_train"] == 200
    assert all(0.3 < row["linear_top1"] <= 1 and 0.3 < row["knn_top1"] <= 1 for row in report["rows"])
    # the library call gives the same rows
    rows = probe_encoders(["pixels"], image_size=16, num_train=200, num_test=100, progress=False)
    assert rows[0]["linear_top1"] == report["rows"][0]["linear_top1"]


def test_probe_command_rejects_weights_for_several_encoders(tmp_path, capsys):
    assert main(["probe", "--encoder", "tiny", "--encoder", "pixels", "--weights", "x.pth"]) == 2
    assert "--weights needs exactly one --encoder" in capsys.readouterr().err
