"""Streaming admission (docs/design.md section 5): prefilter -> online clustering -> heavy-hitter counter
-> index update (items or prototypes), the baselines it is compared with, and cross-rank merges."""

from luma_pl.admission.adaptive import AdaptiveConfig, AdaptiveController, adapt
from luma_pl.admission.clustering import (
    ClusterConfig,
    OnlineClusterer,
    assign,
    kmeanspp_seeds,
    running_mean_update,
)
from luma_pl.admission.heavy_hitters import (
    POLICIES,
    CounterConfig,
    HeavyHitterCounter,
    countmin_columns,
    countmin_dims,
    countmin_estimate,
    space_saving_merge,
)
from luma_pl.admission.pipeline import AdmissionConfig, AdmissionPipeline, Decision, PrototypeIndex
from luma_pl.admission.policy import HeavyHitterPolicy
from luma_pl.admission.prefilter import Prefilter, PrefilterConfig, pca_basis, random_basis, relevance

__all__ = [
    "POLICIES", "AdaptiveConfig", "AdaptiveController", "AdmissionConfig", "AdmissionPipeline", "ClusterConfig",
    "CounterConfig", "Decision", "HeavyHitterCounter", "HeavyHitterPolicy", "OnlineClusterer", "Prefilter",
    "PrefilterConfig", "PrototypeIndex", "adapt", "assign", "countmin_columns", "countmin_dims", "countmin_estimate",
    "kmeanspp_seeds", "pca_basis", "random_basis", "relevance", "running_mean_update", "space_saving_merge",
]
