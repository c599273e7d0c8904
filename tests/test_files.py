"""Atomic writes: permissions as open() would give them, and nothing left behind on an error."""

from __future__ import annotations

import os
import stat

import pytest

from dais_search.files import atomic_write, write_json


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    umask = os.umask(0o022)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        atomic_write(tmp_path / "atomic", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o644  # readable by others: a bundle to deploy


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == '{\n "a": 1\n}\n' and os.listdir(tmp_path) == ["m.json"]
    with pytest.raises(ValueError, match="NaN"):
        write_json(target, {"a": float("nan")})
    assert target.read_text() == '{\n "a": 1\n}\n'
