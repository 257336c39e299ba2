"""Every MAGNET hyper-parameter in one validated place (the ``magnet`` section of
``TrainConfig``). Defaults were chosen on ml100k's *valid* split and are meant to
work without tuning; see docs/model.md for the measurements."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.base import BatchSize, EmaDecay, LearningRate, MinStepsPerEpoch


class MagnetConfig(BaseModel):
    """Hyper-parameters and ablation switches of MAGNET (see shared/MAGNET.md)."""

    model_config = ConfigDict(extra="forbid")

    # optimisation -------------------------------------------------------------
    reg_weight: float = Field(1e-3, ge=0, description="MMRec EmbLoss weight on the batch's ID (layer-0) embeddings")
    negatives: int = Field(8, ge=1, description="uniform negatives drawn per positive (outside the user's items)")
    loss: Literal["bpr", "hard", "softmax"] = Field(
        "softmax", description="bpr: BPR averaged over the negatives; hard: BPR on the highest-scoring of them "
        "(dynamic negative sampling); softmax: sampled softmax over positive + negatives"
    )
    softmax_temperature: float = Field(1.0, gt=0, description="temperature of the softmax loss")
    # what the trainer reads (model.base.TrainingDefaults); see docs/model.md for the choice
    batch_size: BatchSize = 8192
    min_steps_per_epoch: MinStepsPerEpoch = 8
    lr: LearningRate = 1e-3
    ema_decay: EmaDecay = 0.998  # a ~500-step average; chosen on both data sets' valid splits (docs/model.md)

    # dual-view graph learning -------------------------------------------------
    dim: int = Field(64, ge=1, description="embedding width d")
    n_layers: int = Field(3, ge=0, description="L_ui: LightGCN layers of the interaction view")
    aug_layers: int = Field(3, ge=0, description="L_aug: layers of the content-augmented view")
    knn_k: int = Field(10, ge=1, description="neighbours per item in each modality's kNN graph")
    content_weight: float = Field(
        1.0, gt=0, description="lambda: weight of the item-item block in the augmented graph; "
        "acts like lambda extra degree, so it matters most for items with few interactions"
    )
    edge_dropout: float = Field(
        0.5, ge=0, lt=1, description="share of user-item edges pruned each training epoch, "
        "degree-sensitively (edges between high-degree nodes go first, so thin users keep theirs); 0 keeps all"
    )
    modality_layers: int = Field(1, ge=0, description="L_c: smoothing layers of p^m over S^m")
    content_dropout: float = Field(
        0.5, ge=0, lt=1, description="dropout on the modality MLPs' input and hidden layer (training only)"
    )
    content_loss_weight: float = Field(
        0.0, ge=0, description="weight of the auxiliary per-modality BPR on c_u . p_i^m (as FREEDOM does): "
        "teaches p^m to carry preference so each dominant expert has its modality's signal to lead with"
    )

    cold_dropout: float = Field(
        0.0, ge=0, lt=1, description="DropoutNet-style training of the content path: the share of a batch's items "
        "whose c is replaced by a learned linear map of their standardized content (what `magnet add-items "
        "--collaborative learned` then uses for new items); 0 (default) trains exactly as without it"
    )

    # experts and routing ------------------------------------------------------
    expert_hidden: int = Field(64, ge=1, description="hidden width of the expert template MLP")
    top_k: int = Field(2, ge=1, description="experts kept per user/item by the sparse router")
    temperature: float = Field(1.0, gt=0, description="T in logits = W_r c / T")
    router_noise: float = Field(1.0, ge=0, description="std of Gaussian noise on the logits (training only)")

    # entropy-triggered routing regularization ---------------------------------
    route_weight: float = Field(0.1, ge=0, description="w_route: weight of L_route in the loss")
    entropy_threshold: float = Field(0.9, gt=0, le=1, description="normalized coverage entropy that arms the trigger")
    trigger_window: int = Field(3, ge=1, description="W: consecutive epochs above the threshold before the switch")
    ramp_epochs: int = Field(5, ge=1, description="epochs over which stage 2's loss replaces stage 1's")
    lambda_cov: float = Field(1.0, ge=0, description="coverage term kept in stage 2: mean H_i - lambda_cov * H_bar")

    # ablations ----------------------------------------------------------------
    content_edges: bool = Field(True, description="False: no augmented view, c = h (interaction view only)")
    experts: bool = Field(True, description="False: plain fusion e = c + mean_m p^m, no experts or router")
    routing_reg: bool = Field(True, description="False: no routing loss (the monitor still logs entropies)")
    one_stage: bool = Field(False, description="True: stage 2's loss from epoch 1, no trigger, no ramp")
