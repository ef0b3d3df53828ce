"""Memory helpers: dropping only the file pages nobody wrote."""

import mmap
import sys

import pytest

from edgespec.runtime.memory import clean_mappings, release_after_load

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
