"""vinvl.files.replaced_directory: a directory replaced whole, or not at all."""
import os

import pytest

from vinvl.files import replaced_directory


def test_a_finished_write_replaces_the_directory_whole(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with replaced_directory(str(final)) as work:
        assert os.path.dirname(work) == str(tmp_path) and not os.listdir(work)
        (tmp_path / os.path.basename(work) / "new.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no work directory left


def test_an_interrupted_write_leaves_the_previous_directory(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with replaced_directory(str(final)) as work:
            (tmp_path / os.path.basename(work) / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert sorted(os.listdir(final)) == ["old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
