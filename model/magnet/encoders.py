"""Representation level of MAGNET: the two graph views of the ID embeddings, their
gated fusion into the collaborative representation c, and the per-modality content
representations p^m for items and users."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.graph import layer_mean
from model.ops import spmm


class InteractionView(nn.Module):
    """LightGCN over the normalized user-item graph: h = mean_l A^l E."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.n_layers = n_layers

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return layer_mean(x, lambda z: spmm(adj, z), self.n_layers)


class AugmentedView(nn.Module):
    """The same ID embeddings over [[0, R], [R^T, lambda * S]], S = sum_m softmax(a)_m S^m.

    `bipartite` and `parts` come from `graphs.augmented_parts`: the fixed bipartite
    block over all nodes and one fixed item-item block per modality. Each layer
    propagates through every part and mixes the item-item results with softmax(a),
    which is the augmented matrix times x, differentiable in a.
    """

    def __init__(self, n_layers: int, n_modalities: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.mix_logits = nn.Parameter(torch.zeros(n_modalities))

    def reset_parameters(self) -> None:
        """An even mixture: a = 0."""
        nn.init.zeros_(self.mix_logits)

    def mixture(self) -> Tensor:
        """softmax(a): each modality's share of the content edges."""
        return torch.softmax(self.mix_logits, dim=0)

    def step(self, z: Tensor, bipartite: Tensor, parts: list[Tensor], n_users: int,
             weights: Tensor | None = None) -> Tensor:
        """One propagation through the augmented matrix (bipartite part + mixed item-item parts)."""
        weights = self.mixture() if weights is None else weights
        out = spmm(bipartite, z)
        items = z[n_users:]
        out[n_users:] += sum(w * spmm(s, items) for w, s in zip(weights, parts))
        return out

    def forward(self, x: Tensor, bipartite: Tensor, parts: list[Tensor], n_users: int) -> Tensor:
        weights = self.mixture()
        return layer_mean(x, lambda z: self.step(z, bipartite, parts, n_users, weights), self.n_layers)


class GatedFusion(nn.Module):
    """c = h + g * h' with a per-dimension gate g that starts at 0.

    The design's sigmoid gate starts at 0.5, so the content-augmented view enters at
    half weight before anything is learned; on thin users that view dominated and
    overfitted. Starting at 0 (and unbounded, so it can also grow past 1 or turn
    negative per dimension) lets the data decide how much of it to take."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        """g = 0: the model starts from the interaction view alone."""
        nn.init.zeros_(self.gate)

    def forward(self, h: Tensor, h_aug: Tensor) -> Tensor:
        return h + self.gate * h_aug


class ModalityEncoder(nn.Module):
    """p^m = smoothing over S^m of MLP_m(x^m) for items; users take the mean of
    their training items' p^m. Raw features are frozen and standardized per column
    so any width and scale works. Dropout on the MLP's input and hidden layer
    (`dropout`) keeps the content pathway from memorising a few thin users' items."""

    def __init__(self, features: dict[str, Tensor], dim: int, hidden: int, n_layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.names = sorted(features)
        self.n_layers = n_layers
        for name in self.names:
            x = features[name].float()
            mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
            x = (x - mean) / std
            self.register_buffer(f"feat_{name}", x, persistent=False)
            # the trained items' column statistics, so a new item is standardized the same way
            self.register_buffer(f"mean_{name}", mean, persistent=False)
            self.register_buffer(f"std_{name}", std, persistent=False)
        self.mlps = nn.ModuleDict(
            {name: nn.Sequential(nn.Dropout(dropout), nn.Linear(features[name].shape[1], hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim))
             for name in self.names}
        )

    def reset_parameters(self) -> None:
        """Each MLP's layers, in modality order."""
        for name in self.names:
            for layer in self.mlps[name]:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def standardized(self, name: str, x: Tensor) -> Tensor:
        """Raw features of (new) items standardized with the trained items' column statistics."""
        return (x.float() - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}")

    def item_layers(self, name: str, s: Tensor) -> list[Tensor]:
        """The trained items' smoothing layers [MLP_m(x^m), S MLP_m(x^m), ...] (p^m is their mean)."""
        z = self.mlps[name](getattr(self, f"feat_{name}"))
        layers = [z]
        for _ in range(self.n_layers):
            z = spmm(s, z)
            layers.append(z)
        return layers

    def forward(self, knn: list[Tensor], user_mean: Tensor, user_mean_t: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Returns ([p_u^m for m], [p_i^m for m]) in sorted modality order; all graphs
        are symmetric except `user_mean` (row-normalized R), given with its transpose."""
        users, items = [], []
        for name, s in zip(self.names, knn):
            p = self.mlps[name](getattr(self, f"feat_{name}"))
            p = layer_mean(p, lambda z, s=s: spmm(s, z), self.n_layers)
            items.append(p)
            users.append(spmm(user_mean, p, user_mean_t))
        return users, items
