"""MAGNET's content path (model/magnet/cold.py): a new item's p^m, c, gates and
experts from its content alone, checked against dense by-hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import build
from model.magnet import MAGNET
from model.magnet.cold import knn_rows, ridge_apply, ridge_fit

N_USERS, N_ITEMS, N_NEW = 30, 40, 6
WIDTHS = {"image": 12, "text": 7}


def _model(seed: int = 0, **cfg) -> tuple[MAGNET, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    edges = np.stack([rng.integers(0, N_USERS, 400), rng.integers(0, N_ITEMS, 400)], axis=1)
    feats = {m: rng.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in WIDTHS.items()}
    torch.manual_seed(seed)
    cfg = {"knn_k": 5, "dim": 8, "expert_hidden": 8, **cfg}
    model = build("magnet", N_USERS, N_ITEMS, edges, feats, cfg)
    assert isinstance(model, MAGNET)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(5):  # off the initial point
        u, p, n = (torch.randint(0, N, (64,), generator=gen) for N in (N_USERS, N_ITEMS, N_ITEMS))
        loss, _ = model.loss(u, p, n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, feats


def _new(seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(N_NEW, d)).astype(np.float32) for m, d in WIDTHS.items()}


def _by_hand_neighbours(x_new: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    a = x_new / np.linalg.norm(x_new, axis=1, keepdims=True)
    b = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(a @ b.T), axis=1, kind="stable")[:, :k]


def _by_hand_p(model: MAGNET, feats: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """p^m of new nodes from dense matrices: 1/sqrt(k deg_j) edges to the k nearest trained items."""
    out = []
    for m in model.modalities:
        x = torch.as_tensor(feats[m])
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
        mlp = model.modal.mlps[m]
        z0 = mlp((x - mean) / std)
        s = getattr(model, f"knn_{m}").to_dense()
        deg = (s > 0).sum(1).float()
        idx = torch.as_tensor(_by_hand_neighbours(new[m], feats[m], 5))
        row = torch.zeros(N_NEW, N_ITEMS)
        for r in range(N_NEW):
            row[r, idx[r]] = 1.0 / torch.sqrt(5 * deg[idx[r]])
        first = mlp((torch.as_tensor(new[m]) - mean) / std)
        out.append((first + row @ z0) / 2)  # modality_layers = 1: mean of layers 0 and 1
    return out


def test_new_items_parts_add_up_and_match_the_dense_computation() -> None:
    model, feats = _model()
    new = _new()
    with torch.no_grad():
        enc = model.content_path(new, collaborative="knn")
        e = model.encode()
        assert enc.item_emb.shape == (N_NEW, 8) and enc.item_experts.shape == (N_NEW, 4, 8)
        # additive: e = c + sum_e g_e x_e, exactly k = 2 gates summing to 1
        torch.testing.assert_close(enc.item_emb, enc.item_base + (enc.item_gates.unsqueeze(-1) * enc.item_experts).sum(1))
        assert ((enc.item_gates > 0).sum(1) == 2).all()
        torch.testing.assert_close(enc.item_gates.sum(1), torch.ones(N_NEW))
        # the router and the experts read (c, p) as for trained items
        p = _by_hand_p(model, feats, new)
        ref = [pm.mean(0) for pm in model.modality_reps()[1]]
        torch.testing.assert_close(enc.item_experts, model.expert_bank(enc.item_base, p, ref), atol=1e-5, rtol=1e-5)
        g, _ = model.item_router(enc.item_base, noise=False)
        torch.testing.assert_close(enc.item_gates, g)
        # knn c: each modality's neighbours' mean c, mixed by the augmented view's weights
        c_i = model.collaborative()[1]
        a = model.augmented.mixture()
        want = sum(a[j] * c_i[torch.as_tensor(_by_hand_neighbours(new[m], feats[m], 5))].mean(1)
                   for j, m in enumerate(model.modalities))
        torch.testing.assert_close(enc.item_base, want, atol=1e-6, rtol=1e-5)
        assert e.item_emb.shape[0] == N_ITEMS  # trained items untouched


def test_graph_collaborative_is_the_augmented_view_of_a_node_without_id_embedding() -> None:
    model, feats = _model()
    new = _new()
    lam = model.cfg.content_weight
    with torch.no_grad():
        enc = model.content_path(new, collaborative="graph")
        # dense augmented matrix over users + items from the model's own parts
        _, bip, parts = model.graphs(train=False)
        a = model.augmented.mixture()
        dense = bip.to_dense()
        dense[N_USERS:, N_USERS:] += sum(w * p.to_dense() for w, p in zip(a, parts))
        x = torch.cat([model.user_emb, model.item_emb])
        layers = [x]
        for _ in range(model.cfg.aug_layers):
            layers.append(dense @ layers[-1])
        item_deg = torch.bincount(torch.as_tensor(model.train_edges[:, 1]), minlength=N_ITEMS).float()
        # the new node's row: lambda * D^-1/2 S_new D^-1/2 with its degree lambda
        row = torch.zeros(N_NEW, N_ITEMS)
        for j, m in enumerate(model.modalities):
            s = getattr(model, f"knn_{m}").to_dense()
            deg = (s > 0).sum(1).float()
            idx = torch.as_tensor(_by_hand_neighbours(new[m], feats[m], 5))
            for r in range(N_NEW):
                row[r, idx[r]] += a[j] * lam / np.sqrt(lam) / torch.sqrt(5 * deg[idx[r]]) / torch.sqrt(item_deg[idx[r]] + lam)
        h = sum(row @ z[N_USERS:] for z in layers[:-1]) / len(layers)
        want = model.fusion(torch.zeros_like(h), h)  # no ID embedding, no interaction edge: h = 0
        torch.testing.assert_close(enc.item_base, want, atol=1e-6, rtol=1e-5)


def test_ridge_recovers_a_linear_map_and_chooses_small_penalty_without_noise() -> None:
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(200, 6)))
    w = torch.as_tensor(rng.normal(size=(6, 3)))
    y = x @ w + 0.5
    fitted, alpha = ridge_fit(x, y)
    assert alpha == 1e-4
    torch.testing.assert_close(ridge_apply(fitted, x), y.float(), atol=1e-2, rtol=1e-2)


def test_ridge_c_is_the_map_from_content_fitted_on_trained_items() -> None:
    model, feats = _model()
    with torch.no_grad():
        enc = model.content_path(feats, collaborative="ridge")  # the trained items as if new
        c_i = model.collaborative()[1]
        x = torch.cat([getattr(model.modal, f"feat_{m}") for m in model.modalities], dim=1)
        fitted, _ = ridge_fit(x, c_i)
        torch.testing.assert_close(enc.item_base, ridge_apply(fitted, x), atol=1e-5, rtol=1e-5)
        # a copy of a trained item finds it as its nearest content neighbour
        assert (enc.neighbours["text"][:, 0] == torch.arange(N_ITEMS)).all()


def test_knn_rows_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    x, new = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
    idx, sim = knn_rows(torch.as_tensor(new), torch.as_tensor(x), 3, chunk=2)
    np.testing.assert_array_equal(idx.numpy(), _by_hand_neighbours(new, x, 3))
    assert (sim[:, :-1] >= sim[:, 1:]).all()


def test_bad_features_are_named() -> None:
    model, _ = _model()
    new = _new()
    with pytest.raises(ValueError, match="needs features for modalities \\['text'\\]"):
        model.content_path({"image": new["image"]})
    with pytest.raises(ValueError, match="features\\['text'\\] has shape \\(6, 3\\), expected \\[6, 7\\]"):
        model.content_path({"image": new["image"], "text": new["text"][:, :3]})
    with pytest.raises(ValueError, match="collaborative must be one of"):
        model.content_path(new, collaborative="magic")


def test_without_experts_the_content_path_is_plain_fusion() -> None:
    model, _ = _model(experts=False)
    with torch.no_grad():
        enc = model.content_path(_new(), collaborative="knn")
    assert enc.item_gates.shape == (N_NEW, 0) and enc.item_experts.shape == (N_NEW, 0, 8)
    torch.testing.assert_close(enc.item_emb, enc.item_base)


def test_cold_dropout_trains_a_content_map_that_the_learned_path_uses() -> None:
    plain, _ = _model()
    assert plain.content_map is None and not any("content_map" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="needs a model trained with magnet.cold_dropout > 0"):
        plain.content_path(_new(), collaborative="learned")

    model, _ = _model(cold_dropout=0.5)
    assert model.content_map is not None
    model.train()
    gen = torch.Generator().manual_seed(2)
    u, p, n = (torch.randint(0, N, (64,), generator=gen) for N in (N_USERS, N_ITEMS, N_ITEMS))
    loss, _ = model.loss(u, p, n)
    loss.backward()
    assert model.content_map.weight.grad is not None and model.content_map.weight.grad.abs().sum() > 0
    model.eval()
    new = _new()
    with torch.no_grad():
        enc = model.content_path(new, collaborative="learned")
        x = torch.cat([model.modal.standardized(m, torch.as_tensor(new[m])) for m in model.modalities], dim=1)
        torch.testing.assert_close(enc.item_base, model.content_map(x))
        # the map of a trained item's own (standardized) features, as training used it
        torch.testing.assert_close(model.content_from_features(torch.tensor([3])),
                                   model.content_map(torch.cat([getattr(model.modal, f"feat_{m}")[3:4]
                                                                for m in model.modalities], dim=1)))


def test_cold_dropout_off_leaves_training_unchanged() -> None:
    """The default draws no extra random numbers and builds no extra layer: same losses."""
    a, _ = _model(seed=3)
    b, _ = _model(seed=3, cold_dropout=0.0)
    for m in (a, b):
        m.train()
    torch.manual_seed(9)
    la, _ = a.loss(torch.arange(10), torch.arange(10), torch.arange(10, 20))
    torch.manual_seed(9)
    lb, _ = b.loss(torch.arange(10), torch.arange(10), torch.arange(10, 20))
    assert la.item() == lb.item()
