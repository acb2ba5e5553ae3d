"""The hidden staging directory a compile writes into, and how it goes away.

A compile writes OUT_DIR into `.OUT_DIR.omnic-staging-<pid>` beside it, and
omnic.compiler.pipeline renames that into place at the end. Here:

- `staged(out_dir)` creates the staging directory and removes it when the compile raises anything:
  a crash, Ctrl-C (KeyboardInterrupt) or SIGTERM (which the CLI turns into an exception the same
  way, omnic.cli.main). A full disk (ENOSPC, EDQUOT) becomes a CompileError naming the path.
- `remove_stale(out_dir)`, called by `staged`: the staging directories of earlier compiles into
  the same OUT_DIR whose process no longer runs (killed with SIGKILL, or the machine went down)
  are removed. One whose process is alive belongs to a compile still running and is left alone;
  a pid reused by an unrelated process keeps a stale directory until that process ends, the safe
  side of that error. Liveness is this host's and this PID namespace's: a compile into the same
  folder from another container would look dead.
- `publish(staging, final)`: the two renames that move a previous build aside and the new one in
  run with SIGINT and SIGTERM held; a previous build a killed compile left moved aside is put
  back (or removed, when a newer build took its place) by `remove_stale`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from omnic.compiler.errors import CompileError

_log = logging.getLogger(__name__)

STAGING_MARK = ".omnic-staging-"
OLD_MARK = ".omnic-old-"  # a previous build, moved aside while the new one is renamed in
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def staging_path(out_dir: Path) -> Path:
    """Where this process's compile stages OUT_DIR."""
    return out_dir.with_name(f".{out_dir.name}{STAGING_MARK}{os.getpid()}")


def failed_dir(out_dir: Path) -> Path:
    """Where a build whose golden check failed is kept."""
    return out_dir.with_name(out_dir.name + ".failed")


def _process_alive(pid: int) -> bool:
    import psutil  # os.kill(pid, 0) would terminate the process on Windows

    return psutil.pid_exists(pid)


def _dead(path: Path, prefix: str) -> int | None:
    """The pid in `path`'s name (after `prefix`) when that process no longer runs, else None."""
    tail = path.name[len(prefix):] if path.name.startswith(prefix) else ""
    if not tail.isdigit() or int(tail) == os.getpid() or not path.is_dir():
        return None
    return None if _process_alive(int(tail)) else int(tail)


def remove_stale(out_dir: Path) -> list[Path]:
    """Clean up after compiles into OUT_DIR whose process no longer runs; returns what it
    removed. Their staging directories go; a previous build a killed `publish` had moved aside
    (`.NAME.omnic-old-PID`, for OUT_DIR and OUT_DIR.failed) goes back in place when nothing
    replaced it, and goes when something did."""
    if not out_dir.parent.is_dir():
        return []
    removed = []
    prefix = f".{out_dir.name}{STAGING_MARK}"
    for path in sorted(out_dir.parent.glob(f"{prefix}*")):
        pid = _dead(path, prefix)
        if pid is None:
            continue
        shutil.rmtree(path, ignore_errors=True)
        _log.warning(f"removed stale staging directory {path} (its compile, pid {pid}, "
                     "no longer runs)")
        removed.append(path)
    for final in (out_dir, failed_dir(out_dir)):
        prefix = f".{final.name}{OLD_MARK}"
        for path in sorted(out_dir.parent.glob(f"{prefix}*")):
            if _dead(path, prefix) is None:
                continue
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            else:
                path.rename(final)
                _log.warning(f"restored {final} from {path}, where a killed compile had "
                             "moved it")
    return removed


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (they are delivered right after): for
    steps that must not stop halfway, such as the two renames that publish a build."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # not on Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def publish(staging: Path, final: Path) -> None:
    """Rename the finished staging directory to `final`, replacing what is there; a signal
    cannot stop it between the two renames, and a failed second rename puts the old one back."""
    old = final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}") if final.exists() else None
    with signals_held():
        if old is not None:
            final.rename(old)
        try:
            staging.rename(final)
        except BaseException:
            if old is not None:
                old.rename(final)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind `err` (itself, or a cause a stage wrapped), or None."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in DISK_FULL_ERRNOS:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _shown_path(filename: object, out_dir: Path, staging: Path) -> Path:
    """The path the failed write was for, as the user knows it: under OUT_DIR, not staging."""
    if not filename:
        return out_dir
    path = Path(os.fsdecode(filename))  # type: ignore[arg-type]
    try:
        return out_dir / path.relative_to(staging)
    except ValueError:
        return path


def disk_full_message(err: OSError, out_dir: Path, staging: Path,
                      needed_bytes: int | None = None) -> str:
    """One line: what could not be written, why, and the bytes needed and free where known."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    msg = f"{reason} while writing {_shown_path(err.filename, out_dir, staging)}"
    if needed_bytes:
        msg += f"; the artifacts need about {needed_bytes:,} bytes (memory plan)"
    with contextlib.suppress(OSError):
        msg += f", {shutil.disk_usage(out_dir.parent).free:,} bytes are free there"
    return msg + f"; nothing was written to {out_dir}"


@contextlib.contextmanager
def staged(out_dir: Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """The staging directory of OUT_DIR, new and empty; removed if the body raises.

    The body publishes it (renames it into place) before it returns.

    Args:
        out_dir: the build directory the compile makes.
        needed_bytes: the artifacts' predicted bytes, for the message of a full disk.

    Raises:
        CompileError: the disk (or the quota) was full; nothing is left behind.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)
    staging = staging_path(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        # a Ctrl-C or SIGTERM stays what it is, even while a disk-full error was being handled
        full = disk_full_cause(err) if isinstance(err, Exception) else None
        if full is None:
            raise
        raise CompileError(disk_full_message(full, out_dir, staging, needed_bytes)) from None
