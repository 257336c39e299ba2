"""Atomic publishing (offline/publish.py): whatever happens to the writer, the
destination holds the old complete directory or the new one, never neither."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import offline.publish as publish_mod
from offline.publish import publish, staged


def _write(directory: Path, version: str, files: int = 20) -> None:
    """A directory whose completeness can be checked: n files, then the marker last."""
    for n in range(files):
        (directory / f"part{n}.txt").write_text(version)
    (directory / "COMPLETE").write_text(version)


def _version(out: Path) -> str | None:
    """The complete version at `out`, or None if there is none (missing or partial)."""
    try:
        version = (out / "COMPLETE").read_text()
        parts = {(out / f"part{n}.txt").read_text() for n in range(20)}
    except (FileNotFoundError, NotADirectoryError):
        return None
    return version if parts == {version} else None


def test_first_publish_and_replacement_leave_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for version in ("v1", "v2"):
        with staged(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
            _write(tmp, version)
        assert _version(out) == version
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_reader_never_finds_the_destination_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "v0")
    seen: list[str | None] = []
    done = threading.Event()

    def read() -> None:  # opening a path resolves it atomically: old or new directory, or none
        while not done.is_set():
            try:
                seen.append((out / "COMPLETE").read_text())
            except FileNotFoundError:
                seen.append(None)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 60):
            with staged(out) as tmp:
                _write(tmp, f"v{n}")
    finally:
        done.set()
        reader.join()
    assert seen and None not in seen
    assert _version(out) == "v59"


def test_a_failure_while_writing_keeps_the_old_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "old")
    with pytest.raises(OSError, match="disk full"):
        with staged(out) as tmp:
            _write(tmp, "new", files=3)
            raise OSError("disk full")
    assert _version(out) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_exchange_keeps_the_old_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "old")

    def broken(a: Path, b: Path) -> bool:
        raise OSError("injected: exchange failed")

    monkeypatch.setattr(publish_mod, "exchange", broken)
    with pytest.raises(OSError, match="injected"):
        with staged(out) as tmp:
            _write(tmp, "new")
    assert _version(out) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_without_exchange_the_fallback_replaces_or_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the atomic exchange is unavailable: rename aside, rename in, and put the
    old directory back when the second rename fails."""
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "old")
    monkeypatch.setattr(publish_mod, "exchange", lambda a, b: False)
    with staged(out) as tmp:
        _write(tmp, "new")
    assert _version(out) == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]

    real_rename = publish_mod.os.rename
    staged_dir = publish_mod.staging_dir(out)
    _write(staged_dir, "newer")

    def rename(src, dst):  # the second rename (staged -> out) fails
        if Path(src) == staged_dir:
            raise OSError("injected: rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(publish_mod.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        publish(staged_dir, out)
    assert _version(out) == "new"


@pytest.mark.parametrize("kill_at,expected", [("writing", "old"), ("after_exchange", "new"), ("removing_old", "new")])
def test_a_killed_writer_leaves_the_old_or_the_new_complete_directory(tmp_path: Path, kill_at: str,
                                                                       expected: str) -> None:
    """SIGKILL the writing process in the middle of writing, right after the new
    directory is put in place, and half-way through removing the old one: `out` is
    complete each time (the old directory is only ever removed under the temporary
    name, after the exchange)."""
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "old")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import offline.publish as publish_mod

        out = Path({str(out)!r})
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        def remove_half(path):
            for part in sorted(Path(path).iterdir())[:10]:
                part.unlink()
            die()
        if {kill_at!r} == "after_exchange":
            publish_mod._remove = die
        if {kill_at!r} == "removing_old":
            publish_mod._remove = remove_half
        with publish_mod.staged(out) as tmp:
            for n in range(20):
                (tmp / f"part{{n}}.txt").write_text("new")
                if {kill_at!r} == "writing" and n == 10:
                    die()
            (tmp / "COMPLETE").write_text("new")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert _version(out) == expected
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert all(name.startswith(".out.tmp-") for name in leftovers)  # hidden, never under the final name
