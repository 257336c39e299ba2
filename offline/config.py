"""The one typed place for training settings: defaults, YAML files, --set overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model import CONFIGS
from model.base import TrainingDefaults
from offline.evaluate import METRICS

ModelName = Literal["magnet", "lightgcn", "popularity"]
MODEL_NAMES: tuple[str, ...] = ("magnet", "lightgcn", "popularity")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names it."""


class TrainConfig(BaseModel):
    """Everything `magnet train` needs besides the data. Model-specific settings live
    in the nested section named after the model (``magnet.*``, ``lightgcn.*``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelName = "magnet"
    epochs: int = Field(500, ge=0, description="upper bound on training epochs (early stopping ends most runs first)")
    patience: int = Field(20, ge=1, description="evaluations without a better selection metric before stopping")
    select_metric: str = Field(
        "recall@20", description="the valid metric that picks the best epoch and drives patience; "
        "'+' sums several with equal weight, e.g. recall@20+ndcg@20"
    )
    batch_size: int | None = Field(None, ge=1, description="training rows per step; None takes the model's default")
    lr: float | None = Field(None, gt=0, description="Adam learning rate; None takes the model's default")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="bf16 autocast when training on CUDA")
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    ks: list[int] = Field(default_factory=lambda: [10, 20])
    tail_threshold: int = Field(10, ge=1, description="items with fewer training interactions count as long tail")
    nproc: int = Field(1, ge=1, description="data-parallel processes (torch.distributed)")
    progress: bool = True
    lightgcn: CONFIGS["lightgcn"] = Field(default_factory=CONFIGS["lightgcn"])  # type: ignore[valid-type]
    magnet: CONFIGS["magnet"] = Field(default_factory=CONFIGS["magnet"])  # type: ignore[valid-type]
    popularity: CONFIGS["popularity"] = Field(default_factory=CONFIGS["popularity"])  # type: ignore[valid-type]

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        if 20 not in ks:  # early stopping and the contract's metrics need @20
            ks = sorted(set(ks) | {20})
        return sorted(set(ks))

    @field_validator("select_metric")
    @classmethod
    def _select_metric_known(cls, value: str) -> str:
        for term in value.split("+"):
            name, _, k = term.strip().partition("@")
            if name not in METRICS or not k.isdigit() or int(k) < 1:
                raise ValueError(f"unknown metric {term.strip()!r}: expected e.g. recall@20 or recall@20+ndcg@20")
        return "+".join(t.strip() for t in value.split("+"))

    @model_validator(mode="after")
    def _ks_cover_selection(self) -> TrainConfig:
        needed = {int(t.split("@")[1]) for t in self.select_metric.split("+")}
        self.ks = sorted(set(self.ks) | needed)
        return self

    def selection_score(self, metrics: dict[str, float]) -> float:
        """The sum of the selection metric's terms in one split's metrics."""
        return float(sum(metrics[t] for t in self.select_metric.split("+")))

    def model_section(self) -> BaseModel:
        """The nested settings of the chosen model."""
        return getattr(self, self.model)

    def training_defaults(self) -> TrainingDefaults:
        """The chosen model's batch size, steps, learning rate and weight-average decay
        (popularity has none: it is never trained)."""
        section = self.model_section()
        if not isinstance(section, TrainingDefaults):
            raise ConfigError(f"model {self.model!r} has nothing to train")
        return section

    def train_batch_size(self, n_train: int) -> int:
        """Explicit batch_size, else the model section's own, lowered on small data so
        an epoch still takes the model's `min_steps_per_epoch` steps."""
        if self.batch_size is not None:
            return self.batch_size
        section = self.training_defaults()
        return max(1, min(section.batch_size, -(-n_train // section.min_steps_per_epoch)))

    def learning_rate(self) -> float:
        """Explicit lr, else the model section's own."""
        return self.lr if self.lr is not None else self.training_defaults().lr


def _parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars/lists: 3 -> int, 1e-3 -> float, [a,b] -> list."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``key.sub=value`` strings onto a nested dict (copying as it goes)."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set has an empty key in {item!r}")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = _parse_value(raw.strip())
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
    """Builds the config from defaults < YAML file < keyword fields < --set overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        data.update(loaded)
    data.update({k: v for k, v in fields.items() if v is not None})
    data = apply_overrides(data, overrides or [])
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None


def dump_config(cfg: TrainConfig) -> str:
    """YAML of the fully resolved config, written into every run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
