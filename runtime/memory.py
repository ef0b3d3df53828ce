"""Resident memory: what a session keeps after loading, and the process's peak.

ONNX Runtime prepacks every int4 MatMul into its own buffer at load time. What
it leaves behind is memory the process no longer needs but still holds:
the pages of the weight file that prepacking read (the file stays mapped
for the initializers that are not prepacked), and heap freed by the loader
that glibc does not hand back on its own. Dropping both costs nothing: a
dropped file page is read again from the page cache if it is ever touched.

The release is Linux-only (glibc, /proc); elsewhere it changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from pathlib import Path


_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim; a page that exists only in memory is kept


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except OSError:
        return None


def file_mappings(files) -> list[dict]:
    """This process's mappings of `files`, from /proc/self/smaps: each with its "start"
    and "end" address and its KB counters ("Rss", "Anonymous": copy-on-write pages, ...)."""
    names = {str(Path(f).resolve()) for f in files}
    found, current = [], None
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header
            current = None
            if len(head) >= 6 and head[5] in names:
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = {"start": start, "end": end}
                found.append(current)
        elif current is not None and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            current[head[0][:-1]] = int(head[1])
    return found


def clean_mappings(files) -> list[tuple[int, int]]:
    """Address ranges of `files` mapped in this process with no page written to.

    Only such ranges are safe to drop: a private mapping's written pages are
    anonymous copies that exist nowhere else; the others are the file's own bytes.
    """
    return [(m["start"], m["end"]) for m in file_mappings(files) if m.get("Anonymous", 0) == 0]


def release_after_load(files) -> None:
    """Give back what loading a session left resident: the weight files' read pages and freed heap."""
    _drop(clean_mappings(files))
    trim_heap()


@contextlib.contextmanager
def released_while_loading(files, every: float = 0.02):
    """Page the weight files out while a session loads, then release after load.

    Prepacking reads each weight into a new buffer while the file's pages stay
    resident, so the load's peak would hold the weights twice (1.5B alone:
    1493 -> ~1315 MiB peak, same load time). ORT is reading these mappings
    meanwhile, so the advice is pageout: the kernel reclaims a clean page as
    memory pressure would, and never a written one. It also evicts them from
    the page cache, so the files are read ahead again afterwards.
    """
    files = list(files)
    done = threading.Event()

    def keep_dropping():
        while not done.wait(every):
            _drop([(m["start"], m["end"]) for m in file_mappings(files)], _MADV_PAGEOUT)

    worker = threading.Thread(target=keep_dropping, name="edgespec-release", daemon=True)
    if _libc() is not None and files:
        worker.start()
    try:
        yield
    finally:
        done.set()
        if worker.is_alive():
            worker.join()
            _read_ahead(files)  # pageout dropped them from the page cache too: bring them back
        release_after_load(files)


def _read_ahead(files) -> None:
    """Ask the kernel to read `files` into its page cache (not this process's memory)."""
    for f in files:
        with contextlib.suppress(OSError, AttributeError):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def _drop(ranges, advice: int = _MADV_DONTNEED) -> None:
    libc = _libc()
    if libc is None:
        return
    for start, end in ranges:
        libc.madvise(start, end - start, advice)


def trim_heap() -> None:
    """Hand heap pages that were freed back to the OS (glibc keeps them otherwise)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc
        libc.malloc_trim(0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss where the OS has it)."""
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 / (1024 if sys.platform == "darwin" else 1)
    except ImportError:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
