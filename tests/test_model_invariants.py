"""MAGNET's invariants (shared/MAGNET.md): exact additive attribution, k-sparse
gates, the entropy-triggered stage switch, ablation structure, any modalities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import build
from model.magnet import MAGNET, MagnetConfig, RoutingMonitor, RoutingRegularizer, TopKRouter
from model.magnet.experts import ModalityExperts
from model.magnet.graphs import augmented_parts, degree_sensitive_prune, knn_graph, transpose_csr, weighted_sample
from model.magnet.regularizer import coverage_entropy, sample_entropy

N_USERS, N_ITEMS = 30, 40


def _data(widths: dict[str, int], seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    edges = np.stack([rng.integers(0, N_USERS, 400), rng.integers(0, N_ITEMS, 400)], axis=1)
    edges = np.concatenate([edges, np.stack([np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS], 1)])
    feats = {m: rng.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in widths.items()}
    return edges, feats


def _model(widths: dict[str, int] | None = None, seed: int = 0, **cfg) -> MAGNET:
    torch.manual_seed(seed)
    edges, feats = _data(widths or {"image": 12, "text": 7}, seed)
    cfg.setdefault("knn_k", 5)
    cfg.setdefault("dim", 8)
    cfg.setdefault("expert_hidden", 8)
    model = build("magnet", N_USERS, N_ITEMS, edges, feats, cfg)
    assert isinstance(model, MAGNET)
    return model


def _train_a_little(model: MAGNET, steps: int = 5) -> None:
    """Moves the weights off their init so the checks are not about a special point."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        users = torch.randint(0, N_USERS, (64,), generator=gen)
        pos = torch.randint(0, N_ITEMS, (64,), generator=gen)
        neg = torch.randint(0, N_ITEMS, (64,), generator=gen)
        loss, _ = model.loss(users, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ----------------------------------------------------------------- attribution


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_score_splits_exactly_into_base_and_expert_contributions(top_k: int) -> None:
    model = _model(top_k=top_k)
    _train_a_little(model)
    arrays = model.export_arrays()
    users, items = model.embeddings()
    scores = (users @ items.T).double().numpy()
    e_u = arrays["user_emb"].astype(np.float64)
    base = e_u @ arrays["item_base"].astype(np.float64).T  # e_u . c_i
    per_expert = np.einsum("ud,ied->uie", e_u, arrays["item_experts"].astype(np.float64))  # e_u . x_ie
    contributions = per_expert * arrays["item_gates"].astype(np.float64)[None]  # g_ie (e_u . x_ie)
    assert np.allclose(base + contributions.sum(-1), scores, rtol=1e-4, atol=1e-5)


def test_export_matches_embeddings_and_its_own_invariant() -> None:
    model = _model()
    _train_a_little(model)
    arrays = model.export_arrays()
    users, items = model.embeddings()
    n_e = len(model.experts)
    assert arrays["user_emb"].shape == (N_USERS, 8) and arrays["item_emb"].shape == (N_ITEMS, 8)
    assert arrays["item_gates"].shape == (N_ITEMS, n_e) and arrays["item_experts"].shape == (N_ITEMS, n_e, 8)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert np.allclose(arrays["user_emb"], users.numpy()) and np.allclose(arrays["item_emb"], items.numpy())
    rebuilt = arrays["item_base"] + np.einsum("ie,ied->id", arrays["item_gates"], arrays["item_experts"])
    assert np.allclose(rebuilt, arrays["item_emb"], atol=1e-5)
    # base is the collaborative part c_i of the weights export reads
    _, c_i = model.collaborative()
    assert np.allclose(arrays["item_base"], c_i.detach().numpy(), atol=1e-6)


def test_serving_path_is_deterministic() -> None:
    model = _model(router_noise=5.0)
    model.train()  # noise must not leak into embeddings/export even in train mode
    a, b = model.export_arrays(), model.export_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------- gates


@pytest.mark.parametrize("top_k,expected", [(1, 1), (2, 2), (3, 3), (9, 4)])
def test_gates_have_exactly_k_nonzeros_summing_to_one(top_k: int, expected: int) -> None:
    model = _model(top_k=top_k)
    _train_a_little(model)
    gates = model.export_arrays()["item_gates"]
    assert gates.shape[1] == 4
    assert ((gates > 0).sum(1) == expected).all()
    assert (gates >= 0).all()
    assert np.allclose(gates.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n_modalities,top_k", [(2, 2), (3, 2), (3, 1), (1, 2)])
def test_sparse_expert_dispatch_equals_the_dense_mixture(n_modalities: int, top_k: int) -> None:
    """Training runs each row's routed experts only; it must give the dense
    sum_e g_e x_e and the same gradients for every input and weight."""
    torch.manual_seed(0)
    names = [f"m{j}" for j in range(n_modalities)]
    bank = ModalityExperts(names, 6, 5)
    router = TopKRouter(6, bank.n_experts, top_k, temperature=1.0, noise_std=1.0)
    c = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    p = [torch.randn(50, 6, dtype=torch.float64, requires_grad=True) for _ in names]
    ref = [torch.randn(6, dtype=torch.float64) for _ in names]
    bank, router = bank.double(), router.double()
    g, _ = router(c, noise=True)
    weights = torch.randn(50, 6, dtype=torch.float64)
    leaves = [c, *p, *bank.parameters(), *router.parameters()]
    dense = (g.unsqueeze(-1) * bank(c, p, ref)).sum(1)
    sparse = bank.combine(c, p, ref, g)
    assert torch.allclose(sparse, dense, atol=1e-12)
    grads_dense = torch.autograd.grad((dense * weights).sum(), leaves, retain_graph=True, allow_unused=True)
    grads_sparse = torch.autograd.grad((sparse * weights).sum(), leaves, allow_unused=True)
    for a, b in zip(grads_dense, grads_sparse):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12)
    assert any(a is not None and a.abs().sum() > 0 for a in grads_sparse[len(p) + 1 :])


def test_router_keeps_k_nonzeros_even_for_extreme_logits() -> None:
    router = TopKRouter(dim=3, n_experts=5, top_k=2, temperature=0.01, noise_std=0.0)
    c = torch.randn(100, 3) * 1e3
    g, q = router(c)
    assert ((g > 0).sum(1) == 2).all() and torch.allclose(g.sum(1), torch.ones(100))
    assert torch.allclose(q.sum(1), torch.ones(100))
    # the kept experts are the top-2 logits
    logits = router.proj(c)
    assert torch.equal(g.topk(2, dim=1).indices.sort(1).values, logits.topk(2, dim=1).indices.sort(1).values)


def test_router_noise_only_in_training() -> None:
    torch.manual_seed(0)
    router = TopKRouter(dim=4, n_experts=4, top_k=2, temperature=1.0, noise_std=1.0)
    c = torch.randn(50, 4)
    router.eval()
    assert torch.equal(router(c)[1], router(c)[1])
    router.train()
    assert not torch.equal(router(c)[1], router(c)[1])


# ----------------------------------------------------------------- regularizer & monitor


def _drive(monitor: RoutingMonitor, coverage: list[float]) -> list[dict]:
    out = []
    for epoch, h in enumerate(coverage, start=1):
        for _ in range(3):  # a few batches with this epoch's entropy
            monitor.observe(h, 0.5)
        out.append(monitor.end_epoch(epoch))
    return out


def test_switch_happens_exactly_when_the_window_is_full() -> None:
    monitor = RoutingMonitor(threshold=0.9, window=3, ramp_epochs=4)
    seq = [0.5, 0.95, 0.96, 0.8, 0.91, 0.92, 0.93, 0.2, 0.99, 0.99, 0.99, 0.99]
    logs = _drive(monitor, seq)
    switch = [r["stage_switch_epoch"] for r in logs]
    assert switch[:6] == [None] * 6  # two above, a dip, two above: not yet
    assert switch[6:] == [7] * 6  # third consecutive epoch above -> switch at its end, once
    assert [r["stage"] for r in logs] == [1] * 7 + [2] * 5  # epoch 7 itself still trained in stage 1
    assert monitor.stage == 2 and monitor.switch_epoch == 7


def test_threshold_is_strict_and_no_switch_without_the_condition() -> None:
    monitor = RoutingMonitor(threshold=0.9, window=2, ramp_epochs=1)
    logs = _drive(monitor, [0.9, 0.9, 0.9, 0.95, 0.85, 0.97, 0.1])
    assert all(r["stage_switch_epoch"] is None for r in logs) and monitor.stage == 1


def test_epoch_mean_not_last_batch_decides() -> None:
    monitor = RoutingMonitor(threshold=0.9, window=1, ramp_epochs=1)
    monitor.observe(0.99, 0.1)
    monitor.observe(0.5, 0.1)  # mean 0.745 < 0.9
    assert monitor.end_epoch(1)["stage_switch_epoch"] is None
    monitor.observe(0.95, 0.3)
    monitor.observe(0.87, 0.5)  # mean 0.91 > 0.9
    log = monitor.end_epoch(2)
    assert log["stage_switch_epoch"] == 2
    assert log["coverage_entropy"] == pytest.approx(0.91) and log["sample_entropy"] == pytest.approx(0.4)


def test_ramp_after_switch_and_one_stage() -> None:
    monitor = RoutingMonitor(threshold=0.5, window=1, ramp_epochs=4)
    assert monitor.ramp() == 0.0
    _drive(monitor, [0.9])  # switches at the end of epoch 1
    ramps = []
    for epoch in range(2, 8):
        ramps.append(monitor.ramp())
        monitor.end_epoch(epoch)
    assert ramps == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    one = RoutingMonitor(threshold=0.5, window=1, ramp_epochs=4, one_stage=True)
    logs = _drive(one, [0.99, 0.99, 0.99])
    assert one.ramp() == 1.0 and [r["stage"] for r in logs] == [2, 2, 2]
    assert all(r["stage_switch_epoch"] is None for r in logs)


def test_regularizer_losses_per_stage() -> None:
    q = torch.softmax(torch.randn(64, 4), dim=1)
    h_bar, h_i = coverage_entropy(q), sample_entropy(q)
    uniform = torch.full((8, 4), 0.25)
    assert coverage_entropy(uniform) == pytest.approx(1.0) and sample_entropy(uniform) == pytest.approx(1.0)
    one_hot = torch.eye(4)
    assert coverage_entropy(one_hot) == pytest.approx(1.0) and sample_entropy(one_hot) == pytest.approx(0.0, abs=1e-6)
    monitor = RoutingMonitor(threshold=0.5, window=1, ramp_epochs=2)
    reg = RoutingRegularizer(monitor, lambda_cov=0.7)
    assert reg(q) == pytest.approx(float(1 - h_bar))
    assert float(reg(one_hot)) >= 0 and float(reg(uniform)) == pytest.approx(0.0, abs=1e-6)  # never below 0
    _drive(monitor, [0.9])
    monitor.epoch = 2  # ramp 0.5: halfway between the stages
    assert reg(q) == pytest.approx(float(0.5 * (1 - h_bar) + 0.5 * (h_i + 0.7 * (1 - h_bar))), abs=1e-6)
    monitor.epoch = 3
    assert reg(q) == pytest.approx(float(h_i + 0.7 * (1 - h_bar)), abs=1e-6)


def test_model_epoch_end_reports_routing() -> None:
    model = _model()
    _train_a_little(model, steps=3)
    out = model.epoch_end(1)
    for key in ("stage", "coverage_entropy", "sample_entropy", "stage_switch_epoch"):
        assert key in out
    assert 0 <= out["coverage_entropy"] <= 1 and 0 <= out["sample_entropy"] <= 1
    assert out["stage"] == 1 and out["stage_switch_epoch"] is None
    # utilization is read off the encoding the evaluation computes anyway: the share of
    # items whose largest gate is each expert, as the exported gates show it
    model.eval()
    util = model.encode().expert_utilization()
    assert len(util) == 4 and sum(util) == pytest.approx(1.0)
    assert util == _top1_shares(model)
    assert model.encode().expert_utilization() == util  # a fresh pass gives the same
    _train_a_little(model, steps=20)  # the weights move on: the encoding's routing follows
    assert model.encode().expert_utilization() == _top1_shares(model)


def _top1_shares(model: MAGNET) -> list[float]:
    gates = torch.as_tensor(model.export_arrays()["item_gates"])
    counts = torch.bincount(gates.argmax(1), minlength=gates.shape[1]).float()
    return [float(v) for v in counts / N_ITEMS]


# ----------------------------------------------------------------- ablations & modalities


def test_default_structure_and_expert_roles() -> None:
    model = _model()
    assert [e["name"] for e in model.experts] == [
        "dominant_image", "dominant_text", "balanced", "complementary_image_text"
    ]
    assert [e["role"] for e in model.experts] == ["dominant", "dominant", "balanced", "complementary"]
    assert [e["modality"] for e in model.experts] == ["image", "text", None, "image+text"]
    assert model.augmented is not None and model.fusion is not None


def test_single_modality_has_no_complementary_expert() -> None:
    model = _model({"text": 5})
    assert [e["role"] for e in model.experts] == ["dominant", "balanced"]
    arrays = model.export_arrays()
    assert arrays["item_gates"].shape == (N_ITEMS, 2) and ((arrays["item_gates"] > 0).sum(1) == 2).all()


@pytest.mark.parametrize("widths", [{"a": 1}, {"a": 3, "b": 700}, {"image": 4, "meta": 2, "text": 33}])
def test_any_feature_widths_and_modality_count(widths: dict[str, int]) -> None:
    model = _model(widths)
    m = len(widths)
    assert len(model.experts) == m + 1 + m * (m - 1) // 2
    _train_a_little(model, steps=2)
    arrays = model.export_arrays()
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_no_content_edges_means_c_is_the_lightgcn_view() -> None:
    model = _model(content_edges=False, n_layers=2)
    assert model.augmented is None and model.fusion is None
    x = torch.cat([model.user_emb, model.item_emb]).detach()
    a = model.full_adj.to_dense()
    expected = (x + a @ x + a @ a @ x) / 3
    c_u, c_i = model.collaborative()
    assert torch.allclose(torch.cat([c_u, c_i]), expected, atol=1e-5)


def test_no_experts_is_plain_fusion() -> None:
    model = _model(experts=False).eval()  # content dropout off, as in export
    assert model.experts == [] and model.expert_bank is None and model.item_router is None
    arrays = model.export_arrays()
    assert arrays["item_gates"].shape == (N_ITEMS, 0) and arrays["item_experts"].shape == (N_ITEMS, 0, 8)
    assert np.array_equal(arrays["item_base"], arrays["item_emb"])
    c_u, c_i = model.collaborative()
    p_u, p_i = model.modality_reps()
    assert np.allclose(arrays["item_emb"], (c_i + torch.stack(p_i).mean(0)).detach().numpy(), atol=1e-6)
    loss, logs = model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert "route" not in logs and model.epoch_end(1) == {}


def test_routing_reg_off_keeps_monitoring() -> None:
    on, off = _model(), _model(routing_reg=False)
    batch = (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    assert "route" in on.loss(*batch)[1]
    _, logs = off.loss(*batch)
    assert "route" not in logs and "coverage_entropy" in logs
    assert off.epoch_end(1)["coverage_entropy"] > 0


def test_one_stage_starts_in_stage_two() -> None:
    model = _model(one_stage=True)
    assert model.monitor.stage == 2 and model.monitor.ramp() == 1.0


def test_config_rejects_unknown_keys_and_has_flags() -> None:
    cfg = MagnetConfig()
    assert cfg.content_edges and cfg.experts and cfg.routing_reg and not cfg.one_stage
    with pytest.raises(Exception):
        MagnetConfig.model_validate({"no_such_knob": 1})


def test_loss_reaches_every_learned_part() -> None:
    model = _model(edge_dropout=0.2)
    model.train()
    batch = (torch.arange(20), torch.arange(20), torch.arange(20, 40))
    # zero-initialised paths (the fusion gate, the experts' output layers) start silent but learn from step one
    model.loss(*batch)[0].backward()
    params = dict(model.named_parameters())
    silent = ("fusion.gate", "expert_bank.dominant.0.out.weight", "expert_bank.balanced.out.weight")
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in silent)
    assert params["fusion.gate"].abs().sum() == 0 and params["augmented.mix_logits"].grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    loss, _ = model.loss(*batch)
    loss.backward()
    for name in ("augmented.mix_logits", "fusion.gate", "item_router.proj.weight", "user_router.proj.weight",
                 "user_emb", "item_emb"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# ----------------------------------------------------------------- graphs


def test_knn_graph_is_symmetric_normalized() -> None:
    x = torch.randn(25, 6)
    s = knn_graph(x, k=3).to_dense()
    assert torch.allclose(s, s.T) and (s.diagonal() == 0).all()
    assert ((s > 0).sum(1) >= 3).all()
    binary = (s > 0).float()
    deg = binary.sum(1)
    assert torch.allclose(s, binary / torch.sqrt(deg[:, None] * deg[None, :]), atol=1e-6)
    # each row's top-3 cosine neighbours are among its edges
    xn = torch.nn.functional.normalize(x, dim=1)
    sim = xn @ xn.T
    sim.fill_diagonal_(-2)
    top = sim.topk(3, dim=1).indices
    assert all(binary[i, top[i]].all() for i in range(25))


def test_augmented_propagation_equals_dense_normalized_block_matrix() -> None:
    edges, feats = _data({"image": 6, "text": 4})
    knn = [knn_graph(torch.as_tensor(feats[m]), 4) for m in ("image", "text")]
    lam = 1.7
    bip, parts = augmented_parts(edges, N_USERS, N_ITEMS, knn, lam)
    mix = torch.tensor([0.3, 0.7])
    # dense reference: D^-1/2 [[0, R], [R^T, lam * S]] D^-1/2 with D = D_R + lam on items
    r = torch.zeros(N_USERS, N_ITEMS)
    r[edges[:, 0], edges[:, 1]] = 1.0
    s = mix[0] * knn[0].to_dense() + mix[1] * knn[1].to_dense()
    n = N_USERS + N_ITEMS
    block = torch.zeros(n, n)
    block[:N_USERS, N_USERS:] = r
    block[N_USERS:, :N_USERS] = r.T
    deg = block.sum(1)
    deg[N_USERS:] += lam
    block[N_USERS:, N_USERS:] = lam * s
    inv = deg.pow(-0.5)
    dense = inv[:, None] * block * inv[None, :]
    x = torch.randn(n, 5)
    ours = torch.sparse.mm(bip, x)
    ours[N_USERS:] += sum(w * torch.sparse.mm(p, x[N_USERS:]) for w, p in zip(mix, parts))
    assert torch.allclose(ours, dense @ x, atol=1e-5)
    assert torch.linalg.eigvalsh(dense).abs().max() <= 1 + 1e-5  # propagation cannot blow up


def test_degree_sensitive_pruning_keeps_a_subset() -> None:
    edges, _ = _data({"a": 2})
    unique = np.unique(edges, axis=0)
    kept = degree_sensitive_prune(edges, N_USERS, N_ITEMS, 0.25, torch.Generator().manual_seed(0))
    assert len(kept) == round(len(unique) * 0.75)
    assert len(np.unique(kept, axis=0)) == len(kept)
    assert set(map(tuple, kept)) <= set(map(tuple, unique))
    assert math.isclose(len(degree_sensitive_prune(edges, N_USERS, N_ITEMS, 0.0, torch.Generator())), len(unique))


@pytest.mark.parametrize("kind", ["softmax", "bpr", "hard"])
def test_loss_with_several_negatives_scores_the_right_rows(kind: str) -> None:
    """The batch's unique/gather bookkeeping maps every (user, negative j) to its own
    score: the loss equals the ranking loss computed from the full embeddings."""
    from model.losses import ranking_loss

    model = _model(loss=kind, negatives=3, routing_reg=False, reg_weight=0.0)
    _train_a_little(model)
    model.eval()  # full graph, no router noise: deterministic
    gen = torch.Generator().manual_seed(5)
    users = torch.randint(0, N_USERS, (16,), generator=gen)
    pos = torch.randint(0, N_ITEMS, (16,), generator=gen)
    neg = torch.randint(0, N_ITEMS, (16, 3), generator=gen)
    with torch.no_grad():
        loss, _ = model.loss(users, pos, neg)
        mixed_u, mixed_i = model.mix_all(train=False)
        e_u, e_i = mixed_u.emb[users], mixed_i.emb
        expected = ranking_loss((e_u * e_i[pos]).sum(1), torch.einsum("bd,bnd->bn", e_u, e_i[neg]), kind)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_weighted_sample_draws_like_sequential_sampling_without_replacement() -> None:
    """Two of four indices, weights 1:2:3:4. Drawing one at a time in proportion to the
    weights left, index i ends up in the pair with probability
    p_i + sum_{j != i} p_j w_i / (W - w_j); the keys' sample must match that."""
    w = np.array([1.0, 2.0, 3.0, 4.0])
    p = w / w.sum()
    exact = [p[i] + sum(p[j] * w[i] / (w.sum() - w[j]) for j in range(4) if j != i) for i in range(4)]
    gen = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = np.zeros(4)
    for _ in range(draws):
        chosen = weighted_sample(w, 2, gen)
        assert len(set(chosen.tolist())) == 2
        counts[chosen] += 1
    assert np.allclose(counts / draws, exact, atol=0.015)  # ~4 standard errors
    assert sorted(weighted_sample(w, 4, gen).tolist()) == [0, 1, 2, 3]


# ----------------------------------------------------------------- feature scale


def test_modalities_on_different_scales_give_the_same_model() -> None:
    """Per-modality feature scale (the held-back set's image rows ~40, audio ~1-11) must not
    matter: the kNN graphs are cosine and the modality MLPs read standardized columns, so the
    same seed on features scaled x40 and x0.1 builds the same graphs and, trained the same
    way, the same embeddings (up to float rounding)."""
    def built(scale: dict[str, float]) -> MAGNET:
        torch.manual_seed(0)
        edges, feats = _data({"image": 12, "audio": 7}, 0)
        feats = {m: (x * scale[m]).astype(np.float32) for m, x in feats.items()}
        model = build("magnet", N_USERS, N_ITEMS, edges, feats, {"knn_k": 5, "dim": 8, "expert_hidden": 8})
        assert isinstance(model, MAGNET)
        _train_a_little(model)
        return model

    plain, scaled = built({"image": 1.0, "audio": 1.0}), built({"image": 40.0, "audio": 0.1})
    for name in plain._knn_names:
        a, b = getattr(plain, name), getattr(scaled, name)
        torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ea, eb = plain.encode(), scaled.encode()
    torch.testing.assert_close(ea.item_emb, eb.item_emb, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ea.user_emb, eb.user_emb, rtol=1e-3, atol=1e-4)
