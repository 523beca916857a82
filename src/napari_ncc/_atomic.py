"""Atomic file output: write under a temporary name, rename when complete.

Every napari-ncc writer writes to a hidden sibling of its destination named after the
writing host and process (:func:`temporary_path`), then renames it into place
(:func:`install`), so an interrupted run never leaves a half-written file under the final
name. A run killed outright (SIGKILL, power loss) cannot clean up after itself: the next
write to the same destination removes what it left (:func:`remove_stale_temporaries`),
and nothing else. :func:`staged` takes all these steps around a block of writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "check_free",
    "install",
    "output_path",
    "remove",
    "remove_stale_temporaries",
    "staged",
    "temporary_path",
    "to_completion",
]

log = logging.getLogger(__name__)

# Temporary names: ``.NAME.tmp-HOST-PID-TOKEN`` beside NAME. The host and process say who
# is writing, so that a later write can tell a leftover of a killed process from a write
# still under way (here, or on another machine of a cluster sharing the file system).
_TMP_PATTERN = re.compile(r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-[0-9a-f]{12}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "localhost"


def temporary_path(path: str | os.PathLike) -> str:
    """A new hidden temporary sibling of `path`, named after this host and process.

    ``dir/.NAME.tmp-HOST-PID-TOKEN`` for ``dir/NAME``: the writers write there and rename
    it to `path` once complete; :func:`remove_stale_temporaries` recognises the name.

    Examples
    --------
    >>> import os
    >>> name = os.path.basename(temporary_path("out/map.zarr"))
    >>> name.startswith(".map.zarr.tmp-") and f"-{os.getpid()}-" in name
    True
    """
    parent, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(parent, f".{base}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _process_gone(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, but belongs to someone else
        return False
    return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporary siblings of `path` left by writers that were killed.

    Only names made by :func:`temporary_path` for this very `path` are considered, and
    only those written on this host by a process that no longer exists are removed:
    anything else (another output's temporaries, a write still under way, a write from
    another machine, a name of another pattern) is left alone.

    Returns
    -------
    removed : list of str
        The paths removed.
    """
    parent, base = os.path.split(os.path.abspath(os.fspath(path)))
    prefix = f".{base}.tmp-"
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    host = _host()
    for name in names:
        match = _TMP_PATTERN.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not _process_gone(pid):
            continue
        stale = os.path.join(parent, name)
        remove(stale)
        log.info("removed %s, left by an interrupted run (process %d)", stale, pid)
        removed.append(stale)
    return removed


def install(tmp: str, path: str) -> None:
    """Rename the complete `tmp` to `path`, replacing what is there only at the very end."""
    if os.path.lexists(path):
        parent, base = os.path.split(path)
        trash = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, trash)
        os.replace(tmp, path)
        remove(trash)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def staged(path: str | os.PathLike, overwrite: bool) -> Iterator[str]:
    """Write into a temporary sibling of `path`, installed as `path` when the block succeeds.

    The steps every writer takes: `path` checked (:func:`output_path`), the leftovers of
    killed runs removed (:func:`remove_stale_temporaries`), a fresh
    :func:`temporary_path` given to the block, and, once the block is done, `path`
    checked free again (another writer may have got there meanwhile) and the temporary
    renamed to it (:func:`install`). On any exception, the temporary is removed and `path`
    is left as it was.

    Yields
    ------
    tmp : str
        Where to write (nothing exists there yet).

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = os.path.join(folder.name, "note.txt")
    >>> with staged(out, overwrite=False) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> os.listdir(folder.name)
    ['note.txt']
    >>> folder.cleanup()
    """
    path = output_path(path, overwrite)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        check_free(path, overwrite)
        install(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def output_path(path: str | os.PathLike, overwrite: bool) -> str:
    """`path` as a str, checked free (unless `overwrite`) and in an existing folder.

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.
    FileNotFoundError
        If the folder of `path` does not exist.
    """
    path = os.fspath(path)
    check_free(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    return path


def remove(path: str) -> None:
    """Remove a file or a folder tree, if it exists (errors inside a tree are ignored)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def check_free(path: str, overwrite: bool) -> None:
    """Raise FileExistsError if `path` exists and `overwrite` is False."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another path or pass overwrite=True to replace it"
        )


def to_completion(function: Callable, /, *args, **kwargs):
    """``function(*args, **kwargs)``, run to its end even if this thread is interrupted.

    zarr 3 writes on an I/O thread of its own while the calling thread waits: an interrupt
    (Ctrl-C, or the command line's SIGTERM/SIGHUP) raised in the waiting thread would
    leave that write going on, and it could recreate a temporary that :func:`staged` has
    just removed. Run in a helper thread and waited for, the write is complete (or failed)
    before the interrupt reaches the clean-up.

    Examples
    --------
    >>> to_completion(max, 3, 4)
    4
    """
    # Leaving the block, by a return or an exception, waits for the function to end.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-ncc-io") as pool:
        return pool.submit(function, *args, **kwargs).result()
