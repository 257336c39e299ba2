"""The `magnet` console script: import, train, evaluate, export, add-items, serve, quickstart.

Every expected failure (bad files, bad settings, a bundle that fails verification)
ends with one line on stderr naming the problem and a non-zero exit code; set
MAGNET_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(
    name="magnet",
    help="MAGNET multimodal recommender: import data, train, evaluate, export a bundle, serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("magnet")


def _known_errors() -> tuple[type[BaseException], ...]:
    """Error types whose message is meant for the user (imported lazily: start-up stays fast)."""
    from offline.events import EventsExportError
    from offline.export import ExportError
    from service.bundle import BundleError
    from service.settings import SettingsError

    serving: tuple[type[BaseException], ...] = (ExportError, BundleError, SettingsError, FileNotFoundError,
                                                EventsExportError)
    try:  # these need torch and pandas, which the serve-only install (the API image) lacks
        from offline.add_items import AddItemsError
        from offline.config import ConfigError
        from offline.dataset import DatasetError
        from offline.train import TrainError
    except ImportError:  # then no command could have raised them
        return serving
    return (AddItemsError, ConfigError, DatasetError, TrainError, *serving)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns expected exceptions into one clear line and exit 1 (2 for the unexpected)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to never show a traceback
            if os.environ.get("MAGNET_DEBUG"):
                raise
            if isinstance(exc, _known_errors()):
                _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            _fail(f"unexpected {type(exc).__name__}: {exc} (set MAGNET_DEBUG=1 for the traceback)", code=2)

    return wrapper


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise


#: --exact-max-items of the commands that write a bundle
ExactMaxItems = Annotated[
    Optional[int], typer.Option(min=1, help="largest catalogue served by the exact index (default 10000); HNSW above")
]


def _csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@app.command("import")
@friendly_errors
def import_cmd(
    interactions: Annotated[Path, typer.Option(help="interactions CSV (one row per interaction)")],
    name: Annotated[str, typer.Option(help="dataset name (the .inter file's stem)")],
    out: Annotated[Path, typer.Option(help="dataset directory to write")],
    items: Annotated[Optional[Path], typer.Option(help="items CSV with content columns")] = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str = "rating",
    text_cols: Annotated[Optional[str], typer.Option(help="comma-separated text columns -> text_feat.npy")] = None,
    meta_cols: Annotated[
        Optional[str], typer.Option(help="comma-separated (|-multi-valued) columns -> meta_feat.npy")
    ] = None,
    kcore: Annotated[int, typer.Option(min=0, help="iterative k-core on users and items")] = 5,
    min_rating: Annotated[Optional[float], typer.Option(help="drop rows rated below this first")] = None,
    title_col: Annotated[
        Optional[str], typer.Option(help="items column with display names -> item_names.json "
                                         "(default: a column named title or name, if any)")
    ] = None,
) -> None:
    """Raw CSVs -> a dataset directory in MMRec layout (features, mappings, split)."""
    from offline.importer import import_dataset

    ds = import_dataset(
        interactions,
        items,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        text_cols=_csv_list(text_cols),
        meta_cols=_csv_list(meta_cols),
        title_col=title_col,
        kcore=kcore,
        min_rating=min_rating,
        name=name,
        out=out,
    )
    typer.echo(
        f"wrote {out}: {ds.n_users} users, {ds.n_items} items, "
        f"{len(ds.train)}/{len(ds.valid)}/{len(ds.test)} train/valid/test, modalities {sorted(ds.features)}"
    )


def _run_training(data: Path, out: Path, cfg: Any, overwrite: bool) -> None:
    """Entry point of each process (one, N spawned, or torchrun's)."""
    from offline.distributed import init_from_env
    from offline.train import train

    init_from_env(cfg.device)
    metrics = train(data, out, cfg, overwrite=overwrite)
    if metrics:
        typer.echo(json.dumps({k: metrics[k] for k in ("model", "best_epoch", "valid", "test")}, indent=2))
        typer.echo(f"run written to {out}")


@app.command()
@friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="dataset directory (MMRec layout)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    model: Annotated[Optional[str], typer.Option(help="magnet | lightgcn | popularity")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=0)] = None,
    patience: Annotated[Optional[int], typer.Option(min=1)] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of settings")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key=value (dotted keys)")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="data-parallel processes (torch.distributed)")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
) -> None:
    """Train a model; writes RUN/metrics.json and what export needs."""
    from offline.config import MODEL_NAMES, load_config

    if model is not None and model not in MODEL_NAMES:
        _fail(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    cfg = load_config(
        config, set_, model=model, epochs=epochs, patience=patience, seed=seed, device=device, nproc=nproc if nproc > 1 else None
    )
    if cfg.nproc > 1:
        from offline.dataset import load_dataset
        from offline.distributed import launch
        from offline.train import check_run_out

        # a worker's error would reach the user as a traceback: check what train() checks first
        load_dataset(data)
        check_run_out(out, overwrite)
        launch(cfg.nproc, cfg.device, _run_training, data, out, cfg, overwrite)
        if out.exists():
            typer.echo(f"run written to {out} (world size {cfg.nproc})")
        return
    _run_training(data, out, cfg, overwrite)


@app.command()
@friendly_errors
def evaluate(
    run: Annotated[Path, typer.Option(help="run directory from `magnet train`")],
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
) -> None:
    """Print the run's metrics on a split, recomputed from its exported embeddings."""
    from offline.runs import evaluate_run

    if split not in ("valid", "test"):
        _fail(f"--split must be valid or test, got {split!r}")
    typer.echo(json.dumps(evaluate_run(run, split), indent=2))


@app.command()
@friendly_errors
def export(
    run: Annotated[Path, typer.Option(help="run directory from `magnet train`")],
    out: Annotated[Path, typer.Option(help="bundle directory to write")],
    exact_max_items: ExactMaxItems = None,
) -> None:
    """Turn a run into a verified serving bundle (embeddings, routing, FAISS index)."""
    from offline.export import EXACT_MAX_ITEMS, export_bundle

    path = export_bundle(run, out, exact_max_items=exact_max_items or EXACT_MAX_ITEMS)
    typer.echo(f"bundle written to {path}")


@app.command("add-items")
@friendly_errors
def add_items_cmd(
    run: Annotated[Path, typer.Option(help="MAGNET run directory from `magnet train`")],
    items: Annotated[Path, typer.Option(help="items CSV: the id column and the content columns recorded at import")],
    out: Annotated[Path, typer.Option(help="bundle directory to write (the run's items plus the new ones)")],
    replace: Annotated[bool, typer.Option(help="embed ids the run already has again, from content")] = False,
    collaborative: Annotated[
        Optional[str], typer.Option(help="how a new item's collaborative part is made: ridge | knn | graph | learned")
    ] = None,
    exact_max_items: ExactMaxItems = None,
) -> None:
    """Embed new items from their content alone (no retraining) into a new verified bundle."""
    from offline.add_items import DEFAULT_COLLABORATIVE, add_items
    from offline.export import EXACT_MAX_ITEMS
    from model.magnet.cold import COLLABORATIVE

    if collaborative is not None and collaborative not in COLLABORATIVE:
        _fail(f"--collaborative must be one of {', '.join(COLLABORATIVE)}, got {collaborative!r}")
    summary = add_items(run, items, out, replace=replace, collaborative=collaborative or DEFAULT_COLLABORATIVE,
                        exact_max_items=exact_max_items or EXACT_MAX_ITEMS)
    typer.echo(f"bundle written to {out}: {summary['added']} items added, {summary['replaced']} replaced, "
               f"{summary['n_items']} items ({summary['cold_items']} from content alone)")


@app.command()
@friendly_errors
def serve(
    bundle: Annotated[Optional[Path], typer.Option(help="bundle directory (default: $MAGNET_BUNDLE)")] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve a bundle over HTTP (FastAPI + uvicorn)."""
    from service.server import serve as run_server

    run_server(bundle, host=host, port=port, workers=workers)


@app.command()
@friendly_errors
def quickstart(
    workdir: Annotated[Path, typer.Option(help="where the demo data, run and bundle go")] = Path("demo"),
    epochs: Annotated[int, typer.Option(min=1, help="MAGNET training epochs")] = 30,
    host: str = "127.0.0.1",
    port: int = 8000,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="start the API at the end")] = True,
) -> None:
    """Demo data -> train MAGNET -> export -> serve, with no other service needed."""
    from offline.quickstart import run_quickstart

    run_quickstart(workdir, epochs=epochs, host=host, port=port, serve=serve_after)


events_app = typer.Typer(help="The service's interaction events (POST /events).", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command("export")
@friendly_errors
def events_export(
    redis: Annotated[str, typer.Option("--redis", help="the service's MAGNET_REDIS_URL, e.g. redis://host:6379/0")],
    out: Annotated[Path, typer.Option(help="CSV to write: user_id,item_id,timestamp (what `magnet import` reads)")],
    since: Annotated[Optional[float], typer.Option(help="only events with timestamp >= this UNIX time")] = None,
) -> None:
    """Write the event stream as an interactions CSV, oldest first."""
    from offline.events import export_events

    n = export_events(redis, out, since)
    typer.echo(f"{n} events written to {out}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
