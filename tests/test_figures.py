"""The figure command: the whole set on a small configuration, deterministic, from Python and
from the command line; an output directory that cannot be written is refused."""

import pytest

from tinyrlhf import figures
from tinyrlhf.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which follows the 8-byte signature."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_make_figures_writes_the_set_deterministically(tmp_path, capsys):
    paths = figures.make_figures(tmp_path / "python", small=True)
    assert [path.name for path in paths] == [name for name, _ in figures.FIGURES]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        width, height = png_size(data)
        assert width >= 700 and height >= 500  # readable at DPI 150
    # the command line writes byte-identical files (fixed seeds, no date/version metadata)
    assert main(["figures", "--out", str(tmp_path / "cli"), "--small"]) == 0
    assert f"wrote {len(paths)} figure(s)" in capsys.readouterr().out
    for path in paths:
        assert (tmp_path / "cli" / path.name).read_bytes() == path.read_bytes(), path.name


def test_unwritable_output_directory_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be created"):
        figures.make_figures(blocker / "figures", small=True)
    with pytest.raises(ValueError, match="cannot be created"):
        figures.make_figures(blocker, small=True)
    assert main(["figures", "--out", str(blocker / "figures"), "--small"]) == 2
    assert "cannot be created" in capsys.readouterr().err
    with pytest.raises(TypeError, match="out_dir must be a path"):
        figures.make_figures(3)
