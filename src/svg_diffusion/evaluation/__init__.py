"""Evaluation: generation metrics (FID, precision/recall), reconstruction metrics (PSNR, SSIM) and the
fixed linear-probe / k-NN protocol for frozen features. docs/evaluation.md explains the conventions.
"""

from .features import extract_features, pool_features
from .fid import FeatureStats, default_cache_dir, fid, fid_stats, frechet_distance, source_features
from .image_metrics import psnr, ssim
from .inception import FEATURE_DIM, INCEPTION_SIZE, InceptionFeatures, inception_weights_path
from .precision_recall import precision_recall
from .probe import knn_accuracy, linear_probe, probe_features, standardize
from .sources import ImageFiles, TensorImages, open_image_source

__all__ = [
    "FEATURE_DIM",
    "FeatureStats",
    "INCEPTION_SIZE",
    "ImageFiles",
    "InceptionFeatures",
    "TensorImages",
    "default_cache_dir",
    "extract_features",
    "fid",
    "fid_stats",
    "frechet_distance",
    "inception_weights_path",
    "knn_accuracy",
    "linear_probe",
    "open_image_source",
    "pool_features",
    "precision_recall",
    "probe_features",
    "psnr",
    "source_features",
    "ssim",
    "standardize",
]
