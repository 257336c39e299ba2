"""MAGNET: dual-view graph encoders -> modality-role experts -> interaction-
conditioned sparse routing, trained with BPR and the entropy-triggered routing
regularizer. Scores are e_u . e_i with e = c + sum_e g_e x_e, so every score splits
exactly into a collaborative part and one contribution per expert."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from model.base import Recommender
from model.losses import bpr_loss, emb_norm_reg, ranking_loss
from model.ops import pair_scores, take_rows, unique_ids
from model.graph import normalized_bipartite, unique_pairs
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

log = logging.getLogger(__name__)


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

        # ID embeddings (MMRec/LightGCN: xavier)
        self.user_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_users, cfg.dim)))
        self.item_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_items, cfg.dim)))

        # frozen graphs
        self._knn_names = []
        for m in self.modalities:
            self._register_graph(f"knn_{m}", knn_graph(feats[m], cfg.knn_k))
            self._knn_names.append(f"knn_{m}")
        user_mean = user_mean_operator(self.train_edges, n_users, n_items)
        self._register_graph("user_mean", user_mean)
        self._register_graph("user_mean_t", transpose_csr(user_mean))
        self._prune_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        self._set_graphs("full", self.train_edges)
        self._resample_training_graph()

        # encoders
        self.interaction = InteractionView(cfg.n_layers)
        self.augmented = AugmentedView(cfg.aug_layers, len(self.modalities)) if cfg.content_edges else None
        self.fusion = GatedFusion(cfg.dim) if cfg.content_edges else None
        self.modal = ModalityEncoder(feats, cfg.dim, cfg.expert_hidden, cfg.modality_layers)

        # experts, routers, regularizer
        if cfg.experts:
            self.expert_bank: ModalityExperts | None = ModalityExperts(self.modalities, cfg.dim, cfg.expert_hidden)
            n_e = self.expert_bank.n_experts
            self.item_router: TopKRouter | None = TopKRouter(cfg.dim, n_e, cfg.top_k, cfg.temperature, cfg.router_noise)
            self.user_router: TopKRouter | None = TopKRouter(cfg.dim, n_e, cfg.top_k, cfg.temperature, cfg.router_noise)
            self.experts = [dict(s) for s in self.expert_bank.specs]
        else:
            self.expert_bank = self.item_router = self.user_router = None
            self.experts = []
        self.monitor = RoutingMonitor(cfg.entropy_threshold, cfg.trigger_window, cfg.ramp_epochs, cfg.one_stage)
        self.regularizer = RoutingRegularizer(self.monitor, cfg.lambda_cov)

        # weight averaging (persistent, so the best epoch's state dict carries it)
        self._ema_names = [n for n, _ in self.named_parameters()] if cfg.ema_decay > 0 else []
        for name, param in self.named_parameters():
            if cfg.ema_decay > 0:
                self.register_buffer(self._ema_key(name), param.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_pending = False
        self._eval_utilization: list[float] | None = None  # set by embeddings(), read by eval_logs()

    # ------------------------------------------------------------------ weight averaging

    @staticmethod
    def _ema_key(name: str) -> str:
        return "ema__" + name.replace(".", "__")

    @torch.no_grad()
    def _ema_update(self) -> None:
        """Folds the weights of the last optimizer step into the average (decay warmed
        up as (1 + n) / (10 + n), so early epochs are not dominated by the init)."""
        if not self._ema_pending or not self._ema_names:
            return
        n = int(self.ema_updates)
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        params = dict(self.named_parameters())
        averages = [getattr(self, self._ema_key(name)) for name in self._ema_names]
        torch._foreach_lerp_(averages, [params[name].detach() for name in self._ema_names], 1.0 - decay)
        self.ema_updates += 1
        self._ema_pending = False

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Temporarily swaps the averaged weights in (a no-op when averaging is off)."""
        if not self._ema_names:
            yield
            return
        params = dict(self.named_parameters())
        saved = {}
        with torch.no_grad():
            for name in self._ema_names:
                saved[name] = params[name].detach().clone()
                params[name].copy_(getattr(self, self._ema_key(name)))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    # ------------------------------------------------------------------ graphs

    def _register_graph(self, name: str, adj: Tensor) -> None:
        self.register_buffer(name, adj, persistent=False)

    def _set_graphs(self, prefix: str, edges: np.ndarray) -> None:
        """Normalized bipartite graph and augmented-graph parts for `edges`."""
        device = self.user_emb.device
        self._register_graph(f"{prefix}_adj", normalized_bipartite(edges, self.n_users, self.n_items).to(device))
        if self.cfg.content_edges:
            knn = [getattr(self, n).cpu() for n in self._knn_names]
            bip, parts = augmented_parts(edges, self.n_users, self.n_items, knn, self.cfg.content_weight)
            self._register_graph(f"{prefix}_aug_bip", bip.to(device))
            for m, part in zip(self.modalities, parts):
                self._register_graph(f"{prefix}_aug_{m}", part.to(device))

    def _resample_training_graph(self) -> None:
        """Degree-sensitive edge pruning: a fresh pruned graph for each epoch."""
        if self.cfg.edge_dropout > 0:
            edges = degree_sensitive_prune(
                self.train_edges, self.n_users, self.n_items, self.cfg.edge_dropout, self._prune_gen
            )
            self._set_graphs("train", edges)

    def _graphs(self, train: bool) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        prefix = "train" if train and self.cfg.edge_dropout > 0 else "full"
        adj = getattr(self, f"{prefix}_adj")
        if not self.cfg.content_edges:
            return adj, None, []
        return adj, getattr(self, f"{prefix}_aug_bip"), [getattr(self, f"{prefix}_aug_{m}") for m in self.modalities]

    # ------------------------------------------------------------------ forward

    def collaborative(self, train: bool = False) -> tuple[Tensor, Tensor]:
        """c_u, c_i: the interaction view fused with the content-augmented view."""
        adj, bip, parts = self._graphs(train)
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        c = self.interaction(x, adj)
        if self.augmented is not None and self.fusion is not None:
            c = self.fusion(c, self.augmented(x, bip, parts, self.n_users))
        return c[: self.n_users], c[self.n_users :]

    def modality_reps(self) -> tuple[list[Tensor], list[Tensor]]:
        """([p_u^m], [p_i^m]) for all users and items."""
        return self.modal([getattr(self, n) for n in self._knn_names], self.user_mean, self.user_mean_t)

    def mix(
        self, c: Tensor, p: list[Tensor], p_ref: list[Tensor], router: TopKRouter | None, noise: bool
    ) -> dict[str, Tensor]:
        """e = c + sum_e g_e x_e for a set of rows (plain fusion c + mean p without experts);
        p_ref holds the average item's p^m, the experts' reference content."""
        if self.expert_bank is None or router is None:
            e = c + torch.stack(p).mean(0)
            empty = c.new_zeros(c.shape[0], 0)
            return {"emb": e, "base": e, "gates": empty, "q": empty, "experts": c.new_zeros(c.shape[0], 0, c.shape[1])}
        x = self.expert_bank(c, p, p_ref)
        g, q = router(c, noise=noise)
        e = c + (g.unsqueeze(-1) * x).sum(1)
        return {"emb": e, "base": c, "gates": g, "q": q, "experts": x}

    def representations(self, train: bool = False) -> dict:
        """c and p^m of every user and item, plus the experts' reference content;
        `train` selects the pruned graph."""
        c_u, c_i = self.collaborative(train)
        p_u, p_i = self.modality_reps()
        return {"c_u": c_u, "c_i": c_i, "p_u": p_u, "p_i": p_i, "ref": [p.mean(0) for p in p_i]}

    def forward_all(self, train: bool = False) -> dict:
        """Every user's and item's `mix` (e, c, gates, q, expert outputs)."""
        r = self.representations(train)
        return {
            "users": self.mix(r["c_u"], r["p_u"], r["ref"], self.user_router, noise=train),
            "items": self.mix(r["c_i"], r["p_i"], r["ref"], self.item_router, noise=train),
        }

    # ------------------------------------------------------------------ training

    def _mix_batch(self, r: dict, users: Tensor, items: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Training-time `mix` of the batch's distinct users and items, with both sides'
        rows through one sparse expert pass (each row runs only its routed experts)."""
        c = torch.cat([take_rows(r["c_u"], users), take_rows(r["c_i"], items)])
        p = [torch.cat([take_rows(pu, users), take_rows(pi, items)]) for pu, pi in zip(r["p_u"], r["p_i"])]
        n_u = len(users)
        if self.expert_bank is None or self.user_router is None or self.item_router is None:
            e = self.mix(c, p, r["ref"], None, noise=False)["emb"]
            empty = c.new_zeros(0, 0)
            return {"emb": e[:n_u], "q": empty}, {"emb": e[n_u:], "q": empty}
        g_u, q_u = self.user_router(c[:n_u], noise=self.training)
        g_i, q_i = self.item_router(c[n_u:], noise=self.training)
        e = c + self.expert_bank.combine(c, p, r["ref"], torch.cat([g_u, g_i]))
        return {"emb": e[:n_u], "q": q_u}, {"emb": e[n_u:], "q": q_i}

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:
        if self.training:
            self._ema_update()  # the previous step's weights
            self._eval_utilization = None  # the weights move on
        # Graphs propagate over everyone; experts and routers run once per distinct
        # user/item of the batch, and the batch's scores are gathered from those.
        r = self.representations(train=self.training)
        neg = neg.reshape(len(pos), -1)
        uniq_u, inv_u = unique_ids(users, self.n_users)
        uniq_i, inv_i = unique_ids(torch.cat([pos, neg.reshape(-1)]), self.n_items)
        mixed_u, mixed_i = self._mix_batch(r, uniq_u, uniq_i)
        cols = torch.cat([inv_i[: len(pos), None], inv_i[len(pos) :].reshape(neg.shape)], dim=1)  # [B, 1 + n]
        scores = pair_scores(mixed_u["emb"], mixed_i["emb"], inv_u, cols)
        rank = ranking_loss(scores[:, 0], scores[:, 1:], self.cfg.loss, self.cfg.softmax_temperature)
        reg = emb_norm_reg((self.user_emb, users), (self.item_emb, pos), (self.item_emb, neg[:, 0]))
        total = rank + self.cfg.reg_weight * reg
        logs = {"rank_loss": float(rank.detach())}
        if self.cfg.content_loss_weight > 0:
            cu = take_rows(r["c_u"], users)
            content = sum(
                bpr_loss((cu * take_rows(p, pos)).sum(1), (cu * take_rows(p, neg[:, 0])).sum(1)) for p in r["p_i"]
            ) / len(r["p_i"])
            total = total + self.cfg.content_loss_weight * content
            logs["content_bpr"] = float(content.detach())
        if self.expert_bank is not None:
            # the positives and as many negatives (the first B of the flattened [B, n]), as with one negative
            q_items, q_users = take_rows(mixed_i["q"], inv_i[: 2 * len(pos)]), take_rows(mixed_u["q"], inv_u)
            with torch.no_grad():
                cov, smp = float(coverage_entropy(q_items)), float(sample_entropy(q_items))
            self.monitor.observe(cov, smp)
            logs.update(coverage_entropy=cov, sample_entropy=smp)
            if self.cfg.routing_reg and self.cfg.route_weight > 0:
                route = 0.5 * (self.regularizer(q_items) + self.regularizer(q_users))
                total = total + self.cfg.route_weight * route
                logs["route"] = float(route.detach())
        self._ema_pending = self.training
        return total, logs

    def epoch_end(self, epoch: int) -> dict:
        """Closes the routing monitor's epoch, logs routing, prunes a new graph."""
        self._ema_update()  # the epoch's last step
        self._resample_training_graph()
        if self.expert_bank is None:
            return {}
        out = self.monitor.end_epoch(epoch)
        if self.augmented is not None:
            out["modality_mixture"] = [float(w) for w in self.augmented.mixture().detach().cpu()]
        log.info(
            "epoch %d stage %d H_cov %.3f H_item %.3f switch %s",
            epoch, out["stage"], out["coverage_entropy"], out["sample_entropy"], out["stage_switch_epoch"],
        )
        return out

    def eval_logs(self) -> dict:
        """Expert utilization, read off the routing of the last `embeddings()` call (the
        evaluation's forward pass) instead of a forward pass of its own every epoch."""
        if self.expert_bank is None:
            return {}
        utilization = self._eval_utilization if self._eval_utilization is not None else self.final_utilization()
        self._eval_utilization = None
        log.info("expert utilization %s", [round(u, 3) for u in utilization or []])
        return {"expert_utilization": utilization}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def final_utilization(self) -> list[float] | None:
        """Share of items whose top-1 expert is each expert (noise-free routing)."""
        if self.expert_bank is None or self.item_router is None:
            return None
        with self.averaged():
            _, c_i = self.collaborative(train=False)
            g, _ = self.item_router(c_i, noise=False)
        return self._utilization(g)

    def _utilization(self, gates: Tensor) -> list[float]:
        counts = torch.bincount(gates.argmax(1), minlength=gates.shape[1]).float()
        return [float(v) for v in (counts / max(self.n_items, 1)).cpu()]

    @torch.no_grad()
    def embeddings(self) -> tuple[Tensor, Tensor]:
        with self.averaged():
            out = self.forward_all(train=False)
        if self.expert_bank is not None:
            self._eval_utilization = self._utilization(out["items"]["gates"])
        return out["users"]["emb"], out["items"]["emb"]

    @torch.no_grad()
    def export_arrays(self) -> dict[str, np.ndarray]:
        with self.averaged():
            out = self.forward_all(train=False)
        users, items = out["users"], out["items"]

        def np32(t: Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        return {
            "user_emb": np32(users["emb"]),
            "item_emb": np32(items["emb"]),
            "item_base": np32(items["base"]),
            "item_gates": np32(items["gates"]),
            "item_experts": np32(items["experts"]),
        }
