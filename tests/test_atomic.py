"""Atomic writes: all or nothing, and files as readable as a plain open() would make them."""

import os
import stat

import pytest
import torch

from medcls._atomic import atomic_open, write_json
from medcls.train.checkpoint import load_weights, save_weights


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_files_get_umask_permissions_not_mkstemps_owner_only(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_json(tmp_path / "m.json", {"a": 1})
    save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    expected = 0o666 & ~_umask()
    assert _mode(plain) == expected
    assert _mode(tmp_path / "m.json") == expected
    assert _mode(tmp_path / "w.safetensors") == expected


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as fh:
            fh.write('{"half": ')
            raise RuntimeError("disk full")
    assert p.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]


def test_weights_replace_in_place_and_round_trip(tmp_path):
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    p = tmp_path / "w.safetensors"
    save_weights(a, p)
    save_weights(b, p)
    c = torch.nn.Linear(3, 2)
    load_weights(c, p)
    assert torch.equal(c.weight, b.weight) and not torch.equal(c.weight, a.weight)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.safetensors"]


def test_a_full_disk_is_reported_as_a_write_error_naming_the_file(tmp_path, monkeypatch):
    """Writers hide ENOSPC in their own errors (torch: 'unexpected pos'); the free space tells."""
    import shutil
    from collections import namedtuple

    from medcls.errors import WriteError

    p = tmp_path / "state.pt"
    p.write_bytes(b"old")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(WriteError, match="no space left") as info:
        with atomic_open(p, "wb") as fh:
            fh.write(b"new, half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2140 vs 2139")
    assert str(p) in str(info.value)
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["state.pt"]


def test_an_impossible_folder_is_a_write_error_and_bugs_keep_their_type(tmp_path):
    from medcls.errors import WriteError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match="afile"):
        write_json(tmp_path / "afile" / "m.json", {})
    with pytest.raises(TypeError):  # plenty of space: a bug is not disguised as a write error
        write_json(tmp_path / "m.json", {"x": object()})
