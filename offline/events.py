"""`magnet events export`: the service's event stream (Redis, service.events) as an
interactions CSV that `magnet import` reads (columns user_id, item_id, timestamp)."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path

from service.events import STREAM, read_stream

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "timestamp")


class EventsExportError(ValueError):
    """Redis unreachable or the output not writable; the message says which."""


def _number(ts: float) -> str:
    """Whole seconds without a trailing .0 (what `magnet import` reads back as integers)."""
    return str(int(ts)) if float(ts).is_integer() else repr(float(ts))


def export_events(redis_url: str, out: Path, since: float | None = None) -> int:
    """Writes every event of the stream (timestamp >= `since` when given), oldest first, to
    `out` (atomically: a temporary file in the same directory, then renamed); returns the rows."""
    import redis

    out = Path(out)
    if not out.parent.is_dir():
        raise EventsExportError(f"{out.parent}: directory does not exist")
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        events = read_stream(client, since)
    except redis.RedisError as exc:
        raise EventsExportError(f"cannot read the event stream {STREAM} from {redis_url}: {exc}") from None
    finally:
        client.close()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows((e.user_id, e.item_id, _number(e.timestamp)) for e in events)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("exported %d events to %s", len(events), out)
    return len(events)
