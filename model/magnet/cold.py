"""MAGNET's content path: new items from their content alone (item cold start).

A new item has content features x^m but no interactions and no ID embedding. Its
parts are computed the way export computes a trained item's, with the trained model
frozen (trained items' vectors do not move):

- content neighbours: per modality, its top-k cosine neighbours among the trained
  items on the raw features (as the kNN graphs S^m were built), joined to the graph
  as one more node: its row of S^m is 1/sqrt(k * deg_j) (symmetric normalisation,
  the trained degrees deg_j kept as they are);
- p^m: MLP_m of its standardized features (the trained items' column statistics),
  smoothed over that row like the trained items' p^m: the mean of its layer 0 and
  S^m_new times the trained items' previous layer;
- c (the item base): from content, by one of
  ``graph``  the augmented view itself: no ID embedding (layer 0 is zero) and no
             interaction edges, so only the content edges carry the neighbours' ID
             layers in (degree lambda); the fused c = g * h' (the fusion's gate). Faithful to
             the graph, and nearly zero (the neighbours' messages are scaled by
             1/sqrt(lambda * deg_j));
  ``knn``    the mean of the content neighbours' c (each modality's k neighbours
             weighted 1/k, modalities by the augmented view's mixture), no shrinkage;
  ``ridge``  a ridge regression from the standardized content (all modalities) to
             c, fitted on the trained items (penalty chosen on a fixed 20% of them);
  ``learned`` the linear map content -> c learned during training when the
             model was trained with ``magnet.cold_dropout`` > 0 (DropoutNet-style:
             that share of a batch's items is scored with the map's c instead of
             their own);
- gates and experts: the item router on c and every expert on (c, p^m), exactly as
  `MAGNET.encode` does for trained items, so e = c + sum_e g_e x_e holds and the
  explanation of a new item adds up like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from model.magnet.model import MAGNET

Collaborative = Literal["graph", "knn", "ridge", "learned"]
COLLABORATIVE: tuple[str, ...] = ("graph", "knn", "ridge", "learned")
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0, 1e4)


@dataclass
class ContentEncoding:
    """New items' parts, e_i = base_i + sum_e g_ie x_ie, and their content neighbours."""

    item_emb: Tensor  # [N, d]
    item_base: Tensor  # [N, d] (c)
    item_gates: Tensor  # [N, E]
    item_experts: Tensor  # [N, E, d]
    neighbours: dict[str, Tensor] = field(default_factory=dict)  # modality -> trained item indices [N, k]


def knn_rows(x_new: Tensor, x_train: Tensor, k: int, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Top-k cosine neighbours of each new row among the trained rows: (indices, cosines) [N, k]."""
    k = min(k, x_train.shape[0])
    a = torch.nn.functional.normalize(x_new.float(), dim=1)
    b = torch.nn.functional.normalize(x_train.float(), dim=1)
    idx, sim = [], []
    for start in range(0, a.shape[0], chunk):
        top = (a[start:start + chunk] @ b.T).topk(k, dim=1)
        idx.append(top.indices)
        sim.append(top.values)
    if not idx:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(idx), torch.cat(sim)


def graph_degrees(adj: Tensor) -> Tensor:
    """Neighbours per row of a 0/1 graph stored symmetric-normalized (its CSR row lengths)."""
    return adj.crow_indices().diff().float()


def new_row_weights(idx: Tensor, degrees: Tensor) -> Tensor:
    """A new node's row of D^-1/2 A D^-1/2 with unit edges to `idx`: 1/sqrt(k * deg_j)."""
    k = idx.shape[1]
    return (k * degrees[idx]).clamp(min=1e-12).rsqrt()


def propagate_new(first: Tensor, idx: Tensor, weights: Tensor, layers: list[Tensor]) -> Tensor:
    """Layer mean for new nodes: layer 0 is `first`, layer l is sum_j w_j layers[l-1][j]."""
    total = first
    for prev in layers[:-1]:
        total = total + (weights.unsqueeze(-1) * prev[idx]).sum(1)
    return total / len(layers)


def ridge_fit(x: Tensor, y: Tensor, alphas: tuple[float, ...] = RIDGE_ALPHAS, holdout: float = 0.2,
              seed: int = 0) -> tuple[Tensor, float]:
    """Ridge regression y ~ [x, 1] W in float64; alpha (per row of x) chosen on a fixed
    holdout of the rows, then refitted on all. Returns (W [D + 1, d_y], alpha)."""
    x = torch.cat([x.double(), x.new_ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    y = y.double()
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_out = max(1, int(n * holdout)) if n > 4 else 0
    fit_rows, out_rows = perm[n_out:], perm[:n_out]

    def solve(rows: Tensor, alpha: float) -> Tensor:
        xr = x[rows]
        penalty = alpha * len(rows) * torch.eye(x.shape[1], dtype=torch.float64)
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        return torch.linalg.solve(xr.T @ xr + penalty, xr.T @ y[rows])

    best = alphas[len(alphas) // 2]
    if n_out:
        errors = [float(((x[out_rows] @ solve(fit_rows, a) - y[out_rows]) ** 2).mean()) for a in alphas]
        best = alphas[int(np.argmin(errors))]
    return solve(torch.arange(n), best), best


def ridge_apply(w: Tensor, x: Tensor) -> Tensor:
    """[x, 1] W as float32."""
    x = torch.cat([x.double(), x.new_ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    return (x @ w.double()).float()


@torch.no_grad()
def content_path(model: MAGNET, features: dict[str, Tensor | np.ndarray], collaborative: Collaborative = "ridge",
                 knn_k: int | None = None, base: Tensor | None = None) -> ContentEncoding:
    """e = c + sum_e g_e x_e of new items from their raw content features (see the
    module docstring), in eval mode (no dropout, no router noise) as `encode` runs;
    `base` gives c itself instead (experiments)."""
    was_training = model.training
    model.eval()
    try:
        return _content_path(model, features, collaborative, knn_k, base)
    finally:
        model.train(was_training)


def _content_path(model: MAGNET, features: dict[str, Tensor | np.ndarray], collaborative: Collaborative,
                  knn_k: int | None, base: Tensor | None) -> ContentEncoding:
    if collaborative not in COLLABORATIVE:
        raise ValueError(f"collaborative must be one of {COLLABORATIVE}, got {collaborative!r}")
    missing = [m for m in model.modalities if m not in features]
    if missing:
        raise ValueError(f"content path needs features for modalities {missing}")
    device = model.user_mean.device
    feats = {m: torch.as_tensor(np.asarray(features[m]), dtype=torch.float32, device=device)
             for m in model.modalities}
    n_new = next(iter(feats.values())).shape[0]
    for m, x in feats.items():
        width = getattr(model.modal, f"feat_{m}").shape[1]
        if x.ndim != 2 or x.shape != (n_new, width):
            raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected [{n_new}, {width}]")
    k = knn_k or model.cfg.knn_k
    # the trained items' raw features, back from their standardized copy (what S^m was built on)
    trained_raw = {m: getattr(model.modal, f"feat_{m}") * getattr(model.modal, f"std_{m}")
                   + getattr(model.modal, f"mean_{m}") for m in model.modalities}

    # content neighbours and p^m
    neighbours: dict[str, Tensor] = {}
    p_new, p_ref = [], []
    for m, knn_name in zip(model.modalities, model._knn_names):
        s = getattr(model, knn_name)
        idx, _ = knn_rows(feats[m], trained_raw[m], k)
        w = new_row_weights(idx, graph_degrees(s))
        neighbours[m] = idx
        layers = model.modal.item_layers(m, s)
        first = model.modal.mlps[m](model.modal.standardized(m, feats[m]))
        p_new.append(propagate_new(first, idx, w, layers))
        p_ref.append(torch.stack(layers).mean(0).mean(0))

    # c
    _, c_i = model.collaborative(train=False)
    if base is not None:
        c_new = torch.as_tensor(base, dtype=torch.float32, device=device)
    elif collaborative == "ridge":
        x_train = torch.cat([getattr(model.modal, f"feat_{m}") for m in model.modalities], dim=1)
        x_new = torch.cat([model.modal.standardized(m, feats[m]) for m in model.modalities], dim=1)
        w_map, _ = ridge_fit(x_train.cpu(), c_i.cpu())
        c_new = ridge_apply(w_map, x_new.cpu()).to(device)
    elif collaborative == "learned":
        if model.content_map is None:
            raise ValueError("collaborative 'learned' needs a model trained with magnet.cold_dropout > 0")
        c_new = model.content_from_features(features=[model.modal.standardized(m, feats[m]) for m in model.modalities])
    elif collaborative == "knn":
        mixture = _modality_mixture(model)
        c_new = sum(a * c_i[neighbours[m]].mean(1) for a, m in zip(mixture, model.modalities))
    else:
        c_new = _graph_collaborative(model, neighbours)
    c_new = c_new if isinstance(c_new, Tensor) else torch.zeros(n_new, model.cfg.dim, device=device)

    routing = model._route(model.item_router, c_new, noise=False)
    mixed = model.mix(c_new, p_new, p_ref, routing)
    experts = mixed.experts if mixed.experts is not None else c_new.new_zeros(n_new, 0, c_new.shape[1])
    return ContentEncoding(mixed.emb, mixed.base, mixed.gates, experts, neighbours)


def _modality_mixture(model: MAGNET) -> list[float]:
    if model.augmented is not None:
        return [float(a) for a in model.augmented.mixture()]
    return [1.0 / len(model.modalities)] * len(model.modalities)


def _graph_collaborative(model: MAGNET, neighbours: dict[str, Tensor]) -> Tensor:
    """c of new nodes joined to the augmented graph by their content edges only."""
    n_new = next(iter(neighbours.values())).shape[0]
    device = model.user_mean.device
    if model.augmented is None or model.fusion is None:  # the interaction view alone: no edge, no embedding
        return torch.zeros(n_new, model.cfg.dim, device=device)
    lam = model.cfg.content_weight
    adj, bip, parts = model.graphs(train=False)
    x = torch.cat([model.user_emb, model.item_emb], dim=0)
    mixture = model.augmented.mixture()
    layers = [x]
    for _ in range(model.augmented.n_layers):
        layers.append(model.augmented.step(layers[-1], bip, parts, model.n_users, mixture))
    item_layers = [z[model.n_users:] for z in layers]
    item_deg = torch.bincount(torch.as_tensor(model.train_edges[:, 1]), minlength=model.n_items).float().to(device)
    item_inv_sqrt = (item_deg + lam).rsqrt()
    total = torch.zeros(n_new, model.cfg.dim, device=device)  # layer 0: no ID embedding
    for prev in item_layers[:-1]:
        step = torch.zeros_like(total)
        for a, m, knn_name in zip(mixture, model.modalities, model._knn_names):
            idx = neighbours[m]
            s_row = new_row_weights(idx, graph_degrees(getattr(model, knn_name)))
            w = lam * lam ** -0.5 * s_row * item_inv_sqrt[idx]
            step = step + a * (w.unsqueeze(-1) * prev[idx]).sum(1)
        total = total + step
    h_aug = total / len(item_layers)
    return model.fusion(torch.zeros_like(h_aug), h_aug)

