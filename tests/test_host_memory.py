"""reuse_host_memory: while training on the CPU, freed blocks stay in the heap; afterwards glibc's defaults again.

Each check runs in a fresh interpreter: in a process that has trained before, the heap holds
large free chunks that serve a big request without a new mmap, whatever the settings.
"""

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator only")

PRELUDE = textwrap.dedent('''
    import ctypes, torch
    from medcls.infer import reuse_host_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        raise SystemExit(77)  # glibc older than 2.33
    libc.mallinfo2.restype = MallInfo2

    def mmapped():  # does a 128 MB block (over any threshold glibc moves to) get an mmap of its own?
        before = libc.mallinfo2().hblks
        t = torch.empty(32 << 20)
        during = libc.mallinfo2().hblks
        del t
        return during > before
''')


def _run(body: str) -> None:
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 77:
        pytest.skip("glibc older than 2.33 has no mallinfo2")
    assert r.returncode == 0, r.stderr[-2000:]


def test_large_blocks_come_from_the_heap_inside_and_from_mmap_again_after():
    _run('''
        assert mmapped()  # glibc's default
        with reuse_host_memory(torch.device("cpu")):
            assert not mmapped()
            with reuse_host_memory(torch.device("cpu")):  # nested (a refit's two passes): the outer one restores
                assert not mmapped()
            assert not mmapped()
        assert mmapped()
    ''')


def test_restored_after_an_exception_and_untouched_for_other_devices():
    _run('''
        try:
            with reuse_host_memory(torch.device("cpu")):
                raise RuntimeError("a training step failed")
        except RuntimeError:
            pass
        assert mmapped()
        with reuse_host_memory(torch.device("meta")):  # not the CPU: glibc's settings are left alone
            assert mmapped()
    ''')
