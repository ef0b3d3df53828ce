"""Writing the user's files so that no failure loses one, and cleaning up after killed runs.

A file is written to a temporary sibling, flushed to disk and renamed over its
name: a failed write (a full disk) or an interrupt leaves the old file whole and
no temporary file behind. A folder is replaced the same way: the old one is
renamed aside, the new one renamed in, then the old one removed.

Work folders carry their owner's PID in their name, `.NAME.KIND-PID` (KIND:
`partial` for an export, `tmp` for a cache entry being made, `old` for a folder
being replaced). `remove_stale` removes those whose process is gone, and puts an
`old` folder back where a killed replacement left nothing in its place. A live
owner's folder is never touched. (PIDs are this machine's: a cache shared by
machines or containers that export at the same time needs one cache each.)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterator

from .errors import EdgespecError

KINDS = ("partial", "tmp", "old")
_WORK = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|tmp|old)-(?P<pid>\d+)$")
# psutil derives a process's start time from the boot time, which /proc gives in whole seconds
CLOCK_SLACK_S = 2.0


class FileExists(EdgespecError, FileExistsError):
    """An output that exists and that the caller did not ask to replace."""


def write_error(path: str | Path, e: OSError) -> EdgespecError:
    return EdgespecError(f"cannot write to {path}: {e.strerror or e}")


# --- files -----------------------------------------------------------------------------------

@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """An empty temporary sibling of `path` (same suffix, for writers that read it, like savefig);
    fsynced and renamed onto `path` when the block ends, removed if the block raises.
    OSErrors become one-line EdgespecErrors naming `path`."""
    path = Path(path).expanduser()
    if path.is_symlink():  # write where the link points, as open() would
        path = path.resolve()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as umask allows
        yield tmp
        _fsync(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # a replaced file keeps its mode
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` all or nothing (see `replacing`)."""
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return Path(path).expanduser()


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; some systems refuse it for folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


# --- folders ---------------------------------------------------------------------------------

def work_path(dest: Path, kind: str) -> Path:
    """This process's hidden work folder for `dest`, next to it: `.NAME.KIND-PID`."""
    assert kind in KINDS, kind
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}")


def replace_folder(new: Path, dest: Path) -> None:
    """Rename folder `new` onto `dest` (both in one parent folder). A folder already at `dest`
    is renamed aside first and removed last, so at every moment one of the two is whole; a
    process killed between the renames leaves the old one aside, and `remove_stale` puts it back."""
    aside = work_path(dest, "old")
    if aside.exists() or aside.is_symlink():
        _remove(aside)  # this PID's, so no live process is using it
    try:
        if dest.exists() or dest.is_symlink():
            os.rename(dest, aside)
        try:
            os.rename(new, dest)
        except BaseException:
            if aside.exists() or aside.is_symlink():
                os.rename(aside, dest)
            raise
    except OSError as e:
        raise write_error(dest, e) from None
    _remove(aside)


def remove_stale(folder: Path, name: str | None = None, kinds: tuple[str, ...] = KINDS) -> list[Path]:
    """Remove the work folders in `folder` (only those of `name` and `kinds`, if given) whose
    process is gone; an `old` folder whose destination is missing is renamed back instead.
    Returns what it removed or restored."""
    try:
        entries = list(folder.iterdir())
    except OSError:  # missing or unreadable: nothing of ours to clean
        return []
    found = []
    for entry in entries:
        m = _WORK.match(entry.name)
        if m and m["kind"] in kinds and (name is None or m["name"] == name):
            found.append((entry, m["name"], m["kind"], int(m["pid"])))
    done = []
    # newest first: if several killed replacements left old folders, the latest one goes back
    for entry, entry_name, kind, pid in sorted(found, key=lambda f: _touched(f[0]), reverse=True):
        if owner_alive(entry, pid):
            continue
        dest = folder / entry_name
        if kind == "old" and not (dest.exists() or dest.is_symlink()):
            with contextlib.suppress(OSError):
                os.rename(entry, dest)
        else:
            _remove(entry)
        done.append(entry)
    return done


def owner_alive(entry: Path, pid: int) -> bool:
    """Whether process `pid` may still use `entry`: it runs and it started before the entry was
    last made, renamed or changed (a process that started later only reuses the PID of the one
    that did)."""
    import psutil
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= _touched(entry) + CLOCK_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: leave it


def _touched(entry: Path) -> float:
    """When `entry` was last made, renamed or changed: a rename moves ctime, not mtime."""
    try:
        st = entry.lstat()
        return max(st.st_mtime, st.st_ctime)
    except OSError:
        return float("inf")  # gone already: never judged stale


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()
