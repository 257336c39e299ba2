"""TrainConfig: defaults < YAML < fields < --set, and clear errors naming the setting."""

import pytest

from offline.config import ConfigError, apply_overrides, load_config


def test_set_overrides_are_typed_and_nested():
    cfg = load_config(None, ["lr=5e-3", "epochs=7", "lightgcn.n_layers=3", "ks=[5,10]"], model="lightgcn")
    assert cfg.lr == pytest.approx(5e-3)
    assert cfg.epochs == 7
    assert cfg.lightgcn.n_layers == 3
    assert cfg.ks == [5, 10, 20]  # @20 is always evaluated: early stopping needs it
    assert cfg.learning_rate() == pytest.approx(5e-3)


def test_yaml_then_fields_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: lightgcn\nepochs: 3\nseed: 4\n")
    cfg = load_config(path, ["seed=9"], epochs=5)
    assert (cfg.model, cfg.epochs, cfg.seed) == ("lightgcn", 5, 9)


def test_override_copies_instead_of_mutating():
    base = {"magnet": {"a": 1}}
    out = apply_overrides(base, ["magnet.b=2"])
    assert base == {"magnet": {"a": 1}} and out == {"magnet": {"a": 1, "b": 2}}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["no_such_setting=1"], "no_such_setting"),
        (["epochs=-1"], "epochs"),
        (["model=bpr"], "model"),
        (["lightgcn.nope=1"], "lightgcn.nope"),
        (["novalue"], "key=value"),
        (["select_metric=hits@20"], "select_metric"),
        (["select_metric=recall@0"], "select_metric"),
        (["select_metric=recall"], "select_metric"),
    ],
)
def test_bad_settings_name_the_problem(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_batch_size_defaults_to_the_models_and_shrinks_on_small_data():
    cfg = load_config(None, [], model="magnet")
    assert cfg.train_batch_size(1_000_000) == cfg.magnet.batch_size
    assert cfg.train_batch_size(16_000) == 2000  # 8 steps per epoch at least
    assert load_config(None, ["batch_size=300"], model="magnet").train_batch_size(16_000) == 300
    assert load_config(None, [], model="lightgcn").train_batch_size(16_000) == 2048


def test_select_metric_defaults_to_the_contracts_recall_at_20_and_sums_its_terms():
    assert load_config().select_metric == "recall@20"
    cfg = load_config(None, ["select_metric=recall@20 + ndcg@50"])
    assert cfg.select_metric == "recall@20+ndcg@50" and cfg.ks == [10, 20, 50]
    assert cfg.selection_score({"recall@20": 0.25, "ndcg@50": 0.125, "recall@10": 9.0}) == 0.375
