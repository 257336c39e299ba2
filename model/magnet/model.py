"""MAGNET: dual-view graph encoders -> modality-role experts -> interaction-
conditioned sparse routing, trained with a ranking loss over sampled negatives
(sampled softmax by default) and the entropy-triggered routing regularizer.
Scores are e_u . e_i with e = c + sum_e g_e x_e, so every score splits exactly into
a collaborative part and one contribution per expert.

The forward pass in three steps, each a method:
``representations`` (c and p^m of every user and item) -> ``mix`` (e = c + sum_e
g_e x_e for a set of rows, given their routing) -> ``encode`` (everyone, every
expert: what evaluation and export read) or ``mix_batch`` (the batch's distinct
users and items, each row through its routed experts only: what training reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.base import Encoding, Recommender, SumOverRanks, local_sums
from model.graph import normalized_bipartite, unique_pairs
from model.losses import bpr_loss, emb_norm_reg, ranking_loss
from model.magnet.cold import ContentEncoding, content_path
from model.magnet.config import MagnetConfig
from model.magnet.encoders import AugmentedView, GatedFusion, InteractionView, ModalityEncoder
from model.magnet.experts import ModalityExperts
from model.magnet.graphs import (
    augmented_parts,
    degree_sensitive_prune,
    knn_graph,
    transpose_csr,
    user_mean_operator,
)
from model.magnet.regularizer import RoutingMonitor, RoutingRegularizer, coverage_entropy, sample_entropy
from model.magnet.router import TopKRouter
from model.ops import pair_scores, take_rows, unique_ids

log = logging.getLogger(__name__)


@dataclass
class Representations:
    """The experts' inputs for every user and item: the collaborative c, the content
    p^m per modality, and the reference content (the average item's p^m)."""

    c_u: Tensor  # [U, d]
    c_i: Tensor  # [I, d]
    p_u: list[Tensor]  # per modality, [U, d]
    p_i: list[Tensor]  # per modality, [I, d]
    ref: list[Tensor]  # per modality, [d]


@dataclass
class Mixture:
    """e = c + sum_e g_e x_e for a set of rows, with its parts (plain fusion, the
    ablation without experts: e = c + mean_m p^m, base = e and no gates)."""

    emb: Tensor  # e [B, d]
    base: Tensor  # c [B, d]
    gates: Tensor  # g [B, E], exactly k non-zeros per row (E = 0 without experts)
    q: Tensor  # the router's dense softmax [B, E], what the routing regularizer sees
    experts: Tensor | None  # x [B, E, d]; None where only the routed experts ran

    def rows(self, part: slice) -> Mixture:
        """The mixture of a contiguous block of its rows."""
        return Mixture(self.emb[part], self.base[part], self.gates[part], self.q[part],
                       None if self.experts is None else self.experts[part])


class MAGNET(Recommender):
    """Modality-guided mixture of graph experts (see shared/MAGNET.md)."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        train_edges: np.ndarray,
        features: dict[str, np.ndarray],
        cfg: MagnetConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or MagnetConfig()
        if not features:
            raise ValueError("MAGNET needs at least one item feature modality")
        for name, x in features.items():
            if x.ndim != 2 or x.shape[0] != n_items:
                raise ValueError(f"features[{name!r}] has shape {x.shape}, expected [{n_items}, d]")
        self.n_users, self.n_items, self.cfg = n_users, n_items, cfg
        self.n_negatives = cfg.negatives
        self.modalities = sorted(features)
        self.train_edges = unique_pairs(train_edges, n_items)
        feats = {m: torch.as_tensor(np.asarray(features[m]), dtype=torch.float32) for m in self.modalities}

        # frozen graphs
        self._knn_names = []
        for m in self.modalities:
            self._register_graph(f"knn_{m}", knn_graph(feats[m], cfg.knn_k))
            self._knn_names.append(f"knn_{m}")
        user_mean = user_mean_operator(self.train_edges, n_users, n_items)
        self._register_graph("user_mean", user_mean)
        self._register_graph("user_mean_t", transpose_csr(user_mean))
        self._set_graphs("full", self.train_edges)

        # layers; their constructors' own draws are discarded: reset_parameters() below is the one init
        with torch.random.fork_rng(devices=[]):
            self.user_emb = torch.nn.Parameter(torch.empty(n_users, cfg.dim))
            self.item_emb = torch.nn.Parameter(torch.empty(n_items, cfg.dim))
            self.interaction = InteractionView(cfg.n_layers)
            self.augmented = AugmentedView(cfg.aug_layers, len(self.modalities)) if cfg.content_edges else None
            self.fusion = GatedFusion(cfg.dim) if cfg.content_edges else None
            self.modal = ModalityEncoder(feats, cfg.dim, cfg.expert_hidden, cfg.modality_layers, cfg.content_dropout)
            width = sum(feats[m].shape[1] for m in self.modalities)
            # content -> c for items trained without their ID (cold_dropout), the content path's `learned` c
            self.content_map = torch.nn.Linear(width, cfg.dim) if cfg.cold_dropout > 0 else None
            if cfg.experts:
                self.expert_bank: ModalityExperts | None = ModalityExperts(self.modalities, cfg.dim, cfg.expert_hidden)
                n_e = self.expert_bank.n_experts
                self.item_router: TopKRouter | None = TopKRouter(cfg.dim, n_e, cfg.top_k, cfg.temperature,
                                                                 cfg.router_noise)
                self.user_router: TopKRouter | None = TopKRouter(cfg.dim, n_e, cfg.top_k, cfg.temperature,
                                                                 cfg.router_noise)
                self.experts = [dict(s) for s in self.expert_bank.specs]
            else:
                self.expert_bank = self.item_router = self.user_router = None
                self.experts = []
        self.monitor = RoutingMonitor(cfg.entropy_threshold, cfg.trigger_window, cfg.ramp_epochs, cfg.one_stage)
        self.regularizer = RoutingRegularizer(self.monitor, cfg.lambda_cov)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws every weight from the global RNG in a fixed order, so a seed fixes the
        model: the ID embeddings (xavier, as MMRec/LightGCN), the edge-pruning stream
        and its first pruned graph, then each layer's own initialisation."""
        torch.nn.init.xavier_uniform_(self.user_emb)
        torch.nn.init.xavier_uniform_(self.item_emb)
        self._prune_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        self.resample_training_graph()
        layers = (self.augmented, self.fusion, self.modal, self.expert_bank, self.item_router, self.user_router,
                  self.content_map)
        for layer in layers:
            if layer is not None:
                layer.reset_parameters()

    # ------------------------------------------------------------------ graphs

    def _register_graph(self, name: str, adj: Tensor) -> None:
        self.register_buffer(name, adj, persistent=False)

    def _set_graphs(self, prefix: str, edges: np.ndarray) -> None:
        """Normalized bipartite graph and augmented-graph parts for `edges`."""
        device = self.user_mean.device
        self._register_graph(f"{prefix}_adj", normalized_bipartite(edges, self.n_users, self.n_items).to(device))
        if self.cfg.content_edges:
            knn = [getattr(self, n).cpu() for n in self._knn_names]
            bip, parts = augmented_parts(edges, self.n_users, self.n_items, knn, self.cfg.content_weight)
            self._register_graph(f"{prefix}_aug_bip", bip.to(device))
            for m, part in zip(self.modalities, parts):
                self._register_graph(f"{prefix}_aug_{m}", part.to(device))

    def resample_training_graph(self) -> None:
        """Degree-sensitive edge pruning: a fresh pruned graph for each epoch."""
        if self.cfg.edge_dropout > 0:
            edges = degree_sensitive_prune(
                self.train_edges, self.n_users, self.n_items, self.cfg.edge_dropout, self._prune_gen
            )
            self._set_graphs("train", edges)

    def graphs(self, train: bool) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """(interaction graph, augmented bipartite part, augmented item-item parts); the
        pruned training graph when `train`."""
        prefix = "train" if train and self.cfg.edge_dropout > 0 else "full"
        adj = getattr(self, f"{prefix}_adj")
        if not self.cfg.content_edges:
            return adj, None, []
        return adj, getattr(self, f"{prefix}_aug_bip"), [getattr(self, f"{prefix}_aug_{m}") for m in self.modalities]

    # ------------------------------------------------------------------ forward

    def collaborative(self, train: bool = False) -> tuple[Tensor, Tensor]:
        """c_u, c_i: the interaction view fused with the content-augmented view."""
        adj, bip, parts = self.graphs(train)
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        c = self.interaction(x, adj)
        if self.augmented is not None and self.fusion is not None:
            c = self.fusion(c, self.augmented(x, bip, parts, self.n_users))
        return c[: self.n_users], c[self.n_users :]

    def modality_reps(self) -> tuple[list[Tensor], list[Tensor]]:
        """([p_u^m], [p_i^m]) for all users and items."""
        return self.modal([getattr(self, n) for n in self._knn_names], self.user_mean, self.user_mean_t)

    def representations(self, train: bool = False) -> Representations:
        """c and p^m of every user and item; `train` selects the pruned graph."""
        c_u, c_i = self.collaborative(train)
        p_u, p_i = self.modality_reps()
        return Representations(c_u, c_i, p_u, p_i, [p.mean(0) for p in p_i])

    def mix(self, c: Tensor, p: list[Tensor], ref: list[Tensor], routing: tuple[Tensor, Tensor] | None,
            every_expert: bool = True) -> Mixture:
        """e = c + sum_e g_e x_e for rows c, p^m with routing (g, q) (plain fusion
        c + mean_m p^m without experts). `every_expert` computes every x_e (what
        export and the explanations need); otherwise each row runs only its routed
        experts (`ModalityExperts.combine`: the same sum, k/E of the work)."""
        if self.expert_bank is None or routing is None:
            e = c + torch.stack(p).mean(0)
            empty = c.new_zeros(c.shape[0], 0)
            return Mixture(e, e, empty, empty, c.new_zeros(c.shape[0], 0, c.shape[1]))
        g, q = routing
        if every_expert:
            x = self.expert_bank(c, p, ref)
            return Mixture(c + (g.unsqueeze(-1) * x).sum(1), c, g, q, x)
        return Mixture(c + self.expert_bank.combine(c, p, ref, g), c, g, q, None)

    def mix_all(self, train: bool = False) -> tuple[Mixture, Mixture]:
        """Every user's and every item's mixture, with every expert computed."""
        r = self.representations(train)
        users = self.mix(r.c_u, r.p_u, r.ref, self._route(self.user_router, r.c_u, noise=train))
        items = self.mix(r.c_i, r.p_i, r.ref, self._route(self.item_router, r.c_i, noise=train))
        return users, items

    def mix_batch(self, r: Representations, users: Tensor, items: Tensor) -> tuple[Mixture, Mixture]:
        """The mixtures of the given (distinct) users and items, both sides' rows in one
        expert pass that runs each row through its routed experts only (training)."""
        n_u = len(users)
        c_items = take_rows(r.c_i, items)
        if self.training and self.content_map is not None:  # DropoutNet: these items are seen as new ones
            dropped = torch.rand(len(items), device=items.device) < self.cfg.cold_dropout
            c_items = torch.where(dropped.unsqueeze(1), self.content_from_features(items), c_items)
        c = torch.cat([take_rows(r.c_u, users), c_items])
        p = [torch.cat([take_rows(pu, users), take_rows(pi, items)]) for pu, pi in zip(r.p_u, r.p_i)]
        routing = None
        if self.user_router is not None and self.item_router is not None:
            g_u, q_u = self.user_router(c[:n_u], noise=self.training)
            g_i, q_i = self.item_router(c[n_u:], noise=self.training)
            routing = (torch.cat([g_u, g_i]), torch.cat([q_u, q_i]))
        mixed = self.mix(c, p, r.ref, routing, every_expert=False)
        return mixed.rows(slice(None, n_u)), mixed.rows(slice(n_u, None))

    def content_from_features(self, items: Tensor | None = None, features: list[Tensor] | None = None) -> Tensor:
        """The learned content -> c map (cold_dropout > 0) of trained `items`, or of
        standardized `features` (one tensor per modality, sorted by name)."""
        assert self.content_map is not None
        if features is None:
            features = [getattr(self.modal, f"feat_{m}") for m in self.modalities]
            if items is not None:
                features = [take_rows(f, items) for f in features]
        return self.content_map(torch.cat(features, dim=1))

    @staticmethod
    def _route(router: TopKRouter | None, c: Tensor, noise: bool) -> tuple[Tensor, Tensor] | None:
        return None if router is None else router(c, noise=noise)

    # ------------------------------------------------------------------ training

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:
        # Graphs propagate over everyone; experts and routers run once per distinct
        # user/item of the batch, and the batch's scores are gathered from those.
        r = self.representations(train=self.training)
        neg = neg.reshape(len(pos), -1)
        uniq_u, inv_u = unique_ids(users, self.n_users)
        uniq_i, inv_i = unique_ids(torch.cat([pos, neg.reshape(-1)]), self.n_items)
        mixed_u, mixed_i = self.mix_batch(r, uniq_u, uniq_i)
        cols = torch.cat([inv_i[: len(pos), None], inv_i[len(pos) :].reshape(neg.shape)], dim=1)  # [B, 1 + n]
        scores = pair_scores(mixed_u.emb, mixed_i.emb, inv_u, cols)
        rank = ranking_loss(scores[:, 0], scores[:, 1:], self.cfg.loss, self.cfg.softmax_temperature)
        reg = emb_norm_reg((self.user_emb, users), (self.item_emb, pos), (self.item_emb, neg[:, 0]))
        total = rank + self.cfg.reg_weight * reg
        logs = {"rank_loss": float(rank.detach())}
        if self.cfg.content_loss_weight > 0:
            cu = take_rows(r.c_u, users)
            content = sum(
                bpr_loss((cu * take_rows(p, pos)).sum(1), (cu * take_rows(p, neg[:, 0])).sum(1)) for p in r.p_i
            ) / len(r.p_i)
            total = total + self.cfg.content_loss_weight * content
            logs["content_bpr"] = float(content.detach())
        if self.expert_bank is not None:
            # the positives and as many negatives (the first B of the flattened [B, n]), as with one negative
            q_items, q_users = take_rows(mixed_i.q, inv_i[: 2 * len(pos)]), take_rows(mixed_u.q, inv_u)
            with torch.no_grad():
                cov, smp = float(coverage_entropy(q_items)), float(sample_entropy(q_items))
            self.monitor.observe(cov, smp)
            logs.update(coverage_entropy=cov, sample_entropy=smp)
            if self.cfg.routing_reg and self.cfg.route_weight > 0:
                route = 0.5 * (self.regularizer(q_items) + self.regularizer(q_users))
                total = total + self.cfg.route_weight * route
                logs["route"] = float(route.detach())
        return total, logs

    def epoch_end(self, epoch: int, sum_over_ranks: SumOverRanks = local_sums) -> dict:
        """Prunes a new training graph, closes the routing monitor's epoch (its means
        summed over data-parallel processes) and logs routing."""
        self.resample_training_graph()
        if self.expert_bank is None:
            return {}
        out = self.monitor.end_epoch(epoch, sum_over_ranks)
        if self.augmented is not None:
            out["modality_mixture"] = [float(w) for w in self.augmented.mixture().detach().cpu()]
        log.info(
            "epoch %d stage %d H_cov %.3f H_item %.3f switch %s",
            epoch, out["stage"], out["coverage_entropy"], out["sample_entropy"], out["stage_switch_epoch"],
        )
        return out

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(self) -> Encoding:
        """Noise-free routing over the full graph, every expert computed."""
        users, items = self.mix_all(train=False)
        assert items.experts is not None
        return Encoding(users.emb, items.emb, items.base, items.gates, items.experts)

    @torch.no_grad()
    def content_path(self, features: dict[str, Tensor | np.ndarray], collaborative: str = "ridge",
                     knn_k: int | None = None, base: Tensor | None = None) -> ContentEncoding:
        """New items from their content alone: c, gates and experts through the learned
        modality encoders, content neighbours among the trained items and the router
        (model/magnet/cold.py), so e = c + sum_e g_e x_e as for trained items."""
        return content_path(self, features, collaborative, knn_k, base)  # type: ignore[arg-type]
