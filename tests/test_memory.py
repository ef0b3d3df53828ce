"""Memory helpers: dropping only the file pages nobody wrote."""

import mmap
import os
import sys
import time

import pytest

from edgespec.runtime.memory import (clean_mappings, file_mappings, release_after_load,
                                      released_while_loading)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


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
@pytest.mark.skipif(tuple(map(int, __import__("platform").release().split(".")[:2])) < (5, 4),
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
