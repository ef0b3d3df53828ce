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
import mmap
import os
import sys
import threading
from pathlib import Path


_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim; a page that exists only in memory is kept
_MADV_COLLAPSE = 25  # Linux 6.1+: copy a range onto transparent huge pages now
_HUGE_PAGE = 2 << 20


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


def mappings(select) -> list[dict]:
    """This process's mappings whose path `select(path)` accepts (None: anonymous memory),
    from /proc/self/smaps: each with its "start" and "end" address and its KB counters
    ("Rss", "Anonymous": copy-on-write pages, "AnonHugePages", ...) and its "path"."""
    found, current = [], None
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header
            path = head[5] if len(head) >= 6 else None
            current = None
            if select(path):
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = {"start": start, "end": end, "path": path}
                found.append(current)
        elif current is not None and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            current[head[0][:-1]] = int(head[1])
    return found


def file_mappings(files) -> list[dict]:
    """This process's mappings of `files` (see `mappings`)."""
    names = {str(Path(f).resolve()) for f in files}
    return mappings(lambda path: path in names)


def anonymous_mappings() -> list[dict]:
    """This process's anonymous memory: what malloc and mmap hand out (see `mappings`)."""
    return mappings(lambda path: path is None or path == "[heap]")


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
    Yields a list that, after the load, holds the anonymous ranges the load filled
    (ORT's prepacked weights), for `collapse_to_huge_pages`.

    Prepacking reads each weight into a new buffer while the file's pages stay
    resident, so the load's peak would hold the weights twice (1.5B alone:
    1493 -> ~1315 MiB peak, same load time). ORT is reading these mappings
    meanwhile, so the advice is pageout: the kernel reclaims a clean page as
    memory pressure would, and never a written one. It also evicts them from
    the page cache, so the files are read ahead again afterwards.
    """
    files = list(files)
    existing = [(m["start"], m["end"]) for m in anonymous_mappings()]
    filled: list[tuple[int, int]] = []
    done = threading.Event()

    def keep_dropping():
        while not done.wait(every):
            _drop([(m["start"], m["end"]) for m in file_mappings(files)], _MADV_PAGEOUT)

    worker = threading.Thread(target=keep_dropping, name="edgespec-release", daemon=True)
    if _libc() is not None and files:
        worker.start()
    try:
        yield filled
    finally:
        done.set()
        if worker.is_alive():
            worker.join()
            _read_ahead(files)  # pageout dropped them from the page cache too: bring them back
        release_after_load(files)
        now = [(m["start"], m["end"]) for m in anonymous_mappings()]
        filled.extend(_huge_page_ranges(now, existing))


def collapse_to_huge_pages(ranges) -> threading.Thread:
    """Move the fully resident 2 MB pages of `ranges` onto huge pages, in a background
    thread (join it to wait).

    A decode step streams all prepacked weights; on 4 KB pages the CPU's
    prefetchers stop at every page boundary. Collapsed, a 1.5B int4 step was
    4-10% faster and the 0.5B's 3-4% (side by side in one process, 2 threads),
    but collapsing the 1.5B's 1 GB costs 0.5-3 s of one core: worth it for
    long-lived processes (chat, serve, bench), not for one short reply. Only
    extents whose every page is resident are collapsed, so RSS stays as it is.
    Needs Linux 6.1+ (MADV_COLLAPSE); elsewhere nothing changes.
    """
    def collapse():
        libc = _libc()
        if libc is None:
            return
        for start, end in ranges:
            for s in range(start, end, _HUGE_PAGE):  # (the GIL is free during each call)
                if _resident(libc, s, _HUGE_PAGE):
                    libc.madvise(s, _HUGE_PAGE, _MADV_COLLAPSE)
    worker = threading.Thread(target=collapse, name="edgespec-huge-pages", daemon=True)
    worker.start()
    return worker


def _resident(libc, start: int, length: int) -> bool:
    """Whether every page of [start, start+length) is in memory (mincore)."""
    pages = length // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
        return False
    return all(v & 1 for v in vec)


def _huge_page_ranges(ranges, existing, page: int = _HUGE_PAGE) -> list[tuple[int, int]]:
    """The whole huge pages inside `ranges` outside every one of the `existing` ranges."""
    out = []
    for start, end in ranges:
        pieces = [(start, end)]
        for a, b in existing:  # cut out what was mapped before
            pieces = [p for s, e in pieces for p in ((s, min(e, a)), (max(s, b), e)) if p[0] < p[1]]
        for s, e in pieces:
            s, e = -(-s // page) * page, e // page * page
            if e > s:
                out.append((s, e))
    return out


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


def zeros_on_demand(shape, dtype) -> "np.ndarray":
    """Zeros on 4 KB pages that become resident only as they are written.

    numpy puts large arrays on transparent huge pages, so writing the first row
    of a KV buffer [1, kv_heads, max_len, head_dim] made 2 MB per head resident:
    the whole 224 MB cache of the 1.5B after one token. On small pages a reply
    holds the rows it wrote (`edgespec run`, 200 tokens, target alone: peak RSS
    1396 -> 1336 MiB) at the same speed (side by side: plain 1.06x, chain 1.00x).
    """
    import numpy as np
    dtype, count = np.dtype(dtype), int(np.prod(shape))
    nbytes = max(count * dtype.itemsize, 1)  # (mmap refuses 0 bytes)
    if os.name == "nt":
        buffer = mmap.mmap(-1, nbytes)
    else:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # (fileno -1: anonymous)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss where the OS has it)."""
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 / (1024 if sys.platform == "darwin" else 1)
    except ImportError:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
