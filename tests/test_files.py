"""trime.files: a file appears under its name only once written whole."""

import pytest

from trime.files import open_whole, written_whole


def test_a_file_is_renamed_into_place_only_when_complete(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with open_whole(str(path)) as f:
            f.write("half")
            raise KeyboardInterrupt  # the session ends mid-write
    assert path.read_text() == "old"
    with open_whole(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new" and not (tmp_path / "table.json.tmp").exists()
    with written_whole(str(tmp_path / "model.pt"), ".partial") as temporary:
        assert temporary.endswith("model.pt.partial")
        with open(temporary, "wb") as f:
            f.write(b"\x00")
    assert (tmp_path / "model.pt").read_bytes() == b"\x00"
