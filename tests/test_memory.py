"""Memory helpers: dropping only the file pages nobody wrote; weights onto huge pages."""

import mmap
import os
import sys
import time

import pytest

from edgespec.runtime.memory import (_huge_page_ranges, anonymous_mappings, clean_mappings,
                                      collapse_to_huge_pages, file_mappings, release_after_load,
                                      released_while_loading, zeros_on_demand)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def _kernel() -> tuple[int, int]:
    return tuple(map(int, __import__("platform").release().split(".")[:2]))


@linux
def test_only_unwritten_mappings_count_as_clean(tmp_path):
    path = tmp_path / "weights.data"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KB
    with open(path, "rb") as f:
        clean = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, writable, like ORT's
        dirty = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    assert clean[100] == 100 and dirty[100] == 100
    dirty[5] = 0  # a copy-on-write page now exists only in this process
    starts = [start for start, _ in clean_mappings([path])]
    assert len(starts) == 1  # the written mapping is never offered for dropping
    release_after_load([path])
    assert clean[:256] == bytes(range(256))  # dropped pages read back from the file
    assert dirty[5] == 0 and dirty[6] == 6  # the written mapping kept its write
    clean.close()
    dirty.close()


def _resident_kb(path) -> int:
    return sum(m.get("Rss", 0) for m in file_mappings([path]))


def _filesystem(path) -> str:
    mounts = [line.split() for line in open("/proc/mounts")]
    here = str(path.resolve())
    return max((m for m in mounts if here.startswith(m[1])), key=lambda m: len(m[1]))[2]


@linux
@pytest.mark.skipif(_kernel() < (5, 4),
                    reason="MADV_PAGEOUT needs Linux 5.4")
def test_pages_read_while_loading_are_paged_out_but_writes_kept(tmp_path):
    if _filesystem(tmp_path) == "tmpfs":
        pytest.skip("tmpfs pages live in memory: only swap could page them out")
    path = tmp_path / "weights.data"
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 4096)  # 1 MB: 256 pages
        os.fsync(f.fileno())  # a page not yet written back cannot be reclaimed
    with released_while_loading([path], every=0.01):
        with open(path, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        assert sum(view[i] for i in range(0, len(view), 4096)) == 0  # touch every page
        view[4096 + 7] = 255  # one copy-on-write page
        for _ in range(200):  # the loader is still "running": wait for the pageout
            if _resident_kb(path) <= 8:
                break
            time.sleep(0.01)
        assert _resident_kb(path) <= 8  # the written page (and at most one more)
    assert view[4096 + 7] == 255 and view[4096 + 8] == 8  # the write survived
    assert view[: 256 * 4] == bytes(range(256)) * 4  # paged-out pages read back from the file
    view.close()


MB = 1 << 20


def test_huge_page_ranges_skip_what_existed_and_partial_pages():
    existing = [(10 * MB, 14 * MB)]
    ranges = [(MB, 20 * MB), (30 * MB + 4096, 31 * MB)]
    # whole 2 MB pages only, and nothing of the range mapped before
    assert _huge_page_ranges(ranges, existing) == [(2 * MB, 10 * MB), (14 * MB, 20 * MB)]


def _mapping_of(address):
    return next(m for m in anonymous_mappings() if m["start"] <= address < m["end"])


@linux
def test_loading_reports_the_ranges_it_filled_and_collapse_keeps_their_bytes():
    import ctypes
    private = dict(flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # what malloc hands out
    before = mmap.mmap(-1, 8 * MB, **private)
    before[:] = b"x" * len(before)  # mapped and filled before the "load": never reported
    with released_while_loading([]) as filled:
        weights = mmap.mmap(-1, 32 * MB, **private)  # plain 4 KB pages, written in full like prepacked weights
        data = bytes(range(256)) * (len(weights) // 256)
        weights[:] = data
    address = ctypes.addressof(ctypes.c_char.from_buffer(weights))
    inside = lambda a: any(s <= a < e for s, e in filled)  # noqa: E731
    assert inside(address + 4 * MB) and inside(address + 28 * MB)
    assert not inside(ctypes.addressof(ctypes.c_char.from_buffer(before)) + 4 * MB)
    huge_before = _mapping_of(address + 4 * MB).get("AnonHugePages", 0)
    collapse_to_huge_pages(_huge_page_ranges([(address, address + len(weights))], [])).join()
    assert weights[:] == data  # the same bytes, now on other pages
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if _kernel() >= (6, 1) and "[never]" not in thp:  # MADV_COLLAPSE ran: 2 MB pages now
        assert _mapping_of(address + 4 * MB).get("AnonHugePages", 0) >= huge_before + 16 * 1024


@linux
def test_kv_buffer_is_resident_only_where_written():
    """A [1, 2 heads, 8192 rows, 128] buffer (8 MiB) with 16 rows written holds a few 4 KB
    pages, not a 2 MB huge page per head."""
    import numpy as np
    buffer = zeros_on_demand((1, 2, 8192, 128), np.float32)
    assert buffer.shape == (1, 2, 8192, 128) and not buffer.any()
    buffer[:, :, :16] = 1.0  # 16 rows x 512 bytes per head
    assert buffer.sum() == 2 * 16 * 128
    start, end = buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes
    # (smaps splits a mapping where its huge-page advice differs: sum every piece)
    resident = sum(m["Rss"] for m in anonymous_mappings() if m["start"] < end and m["end"] > start)
    assert 16 <= resident <= 64  # KB (np.zeros: 4096, two huge pages, where THP is on)
