"""reuse_host_memory: while training on the CPU, freed blocks stay in the heap; afterwards glibc's defaults again."""

import ctypes
import platform

import pytest
import torch

from medcls.infer import reuse_host_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _mmapped_blocks() -> int:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblks


def _big_alloc_is_mmapped() -> bool:
    before = _mmapped_blocks()
    t = torch.empty(8 << 20)  # 32 MB: over glibc's mmap threshold
    during = _mmapped_blocks()
    del t
    return during > before


def test_large_blocks_come_from_the_heap_inside_and_from_mmap_again_after():
    assert _big_alloc_is_mmapped()  # glibc's default
    with reuse_host_memory(torch.device("cpu")):
        assert not _big_alloc_is_mmapped()
        with reuse_host_memory(torch.device("cpu")):  # nested (a refit's two passes): the outer one restores
            assert not _big_alloc_is_mmapped()
        assert not _big_alloc_is_mmapped()
    assert _big_alloc_is_mmapped()


def test_restored_after_an_exception_and_untouched_for_other_devices():
    with pytest.raises(RuntimeError):
        with reuse_host_memory(torch.device("cpu")):
            raise RuntimeError("a training step failed")
    assert _big_alloc_is_mmapped()
    with reuse_host_memory(torch.device("meta")):  # not the CPU: glibc's settings are left alone
        assert _big_alloc_is_mmapped()
