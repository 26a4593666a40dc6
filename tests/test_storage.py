"""``write_atomic``: the one way outputs are written (temporary file, then ``os.replace``)."""

import numpy as np
import pytest
import torch

from lit_attr.storage import write_atomic


def test_a_failing_writer_leaves_neither_the_file_nor_a_temporary_one(tmp_path):
    path = tmp_path / "scores.npy"

    def half_write(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_write)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_write)
    assert list(tmp_path.iterdir()) == [path] and path.read_text() == "old"  # the previous file is kept


def test_writers_that_append_suffixes_write_exactly_the_path(tmp_path):
    scores = np.arange(6.0).reshape(2, 3)
    write_atomic(tmp_path / "scores.npy", lambda tmp: np.save(tmp, scores))
    write_atomic(tmp_path / "arrays.npz", lambda tmp: np.savez(tmp, a=scores))
    write_atomic(tmp_path / "images.pt", lambda tmp: torch.save(torch.ones(2), tmp))
    assert write_atomic(tmp_path / "notes.txt", lambda tmp: tmp.write_text("abc")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "images.pt", "notes.txt", "scores.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), scores)
    np.testing.assert_array_equal(np.load(tmp_path / "arrays.npz")["a"], scores)
    assert torch.equal(torch.load(tmp_path / "images.pt"), torch.ones(2))
