"""Evaluation: generation metrics (FID, precision/recall, Inception Score), reconstruction metrics (PSNR, SSIM) and the
fixed linear-probe / k-NN protocol for frozen features. docs/evaluation.md explains the conventions.
"""

from .evaluate import evaluate, fd_encoder, source_inception_score, source_precision_recall, write_stats
from .feature_cache import FeatureCache, default_cache_dir, inception_cache_key
from .features import extract_features, pool_features
from .fid import FeatureStats, features_and_stats, fid, fid_stats, frechet_distance, source_features
from .image_metrics import psnr, ssim
from .inception import FEATURE_DIM, INCEPTION_SIZE, InceptionFeatures, inception_weights_path
from .inception_score import inception_score, load_inception_head
from .precision_recall import precision_recall
from .probe import knn_accuracy, linear_probe, probe_features, standardize
from .sources import ImageFiles, TensorImages, open_image_source

__all__ = [
    "FEATURE_DIM",
    "FeatureCache",
    "FeatureStats",
    "INCEPTION_SIZE",
    "ImageFiles",
    "InceptionFeatures",
    "TensorImages",
    "default_cache_dir",
    "evaluate",
    "extract_features",
    "fd_encoder",
    "features_and_stats",
    "fid",
    "fid_stats",
    "frechet_distance",
    "inception_cache_key",
    "inception_score",
    "inception_weights_path",
    "knn_accuracy",
    "linear_probe",
    "load_inception_head",
    "open_image_source",
    "pool_features",
    "precision_recall",
    "probe_features",
    "psnr",
    "source_features",
    "source_inception_score",
    "source_precision_recall",
    "ssim",
    "standardize",
    "write_stats",
]
