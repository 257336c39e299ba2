"""MAGNET: modality-guided mixture of graph experts with entropy-triggered routing."""

from model.magnet.config import MagnetConfig
from model.magnet.experts import ExpertMLP, ModalityExperts, expert_specs
from model.magnet.model import MAGNET
from model.magnet.regularizer import RoutingMonitor, RoutingRegularizer, coverage_entropy, sample_entropy
from model.magnet.router import TopKRouter

__all__ = [
    "MAGNET",
    "MagnetConfig",
    "ExpertMLP",
    "ModalityExperts",
    "expert_specs",
    "RoutingMonitor",
    "RoutingRegularizer",
    "coverage_entropy",
    "sample_entropy",
    "TopKRouter",
]
