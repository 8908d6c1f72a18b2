"""kit/io.py's shared primitives, written once for every stage: the lock, the directory swap, the figure."""

from __future__ import annotations

import os

from kit.io import replace_dir, save_figure, take_lock


def test_take_lock_reports_a_holder_or_waits_for_it(tmp_path):
    lock = tmp_path / ".lock"
    first, busy = take_lock(lock)
    assert not busy
    second, busy = take_lock(lock)  # flock: a second open file is refused even in this process
    assert busy
    os.close(second)
    said = []

    def release_first():  # what a waiting caller hears, here also the holder ending
        said.append("waiting")
        os.close(first)

    third, busy = take_lock(lock, on_busy=release_first)
    assert busy and said == ["waiting"]
    fourth, busy = take_lock(lock)
    assert busy  # the waiter holds it now
    os.close(fourth)
    os.close(third)
    fifth, busy = take_lock(lock)
    assert not busy
    os.close(fifth)


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    out, staged = tmp_path / "bundle", tmp_path / ".bundle.staged"
    for folder, text in ((out, "old"), (staged, "new")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    (out / "only-old.txt").write_text("old")
    assert replace_dir(staged, out) == out
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # neither the staged nor the old folder stays


def test_save_figure_writes_a_png_of_a_plain_figure(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "report" / "f.png", dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG") and [p.name for p in path.parent.iterdir()] == ["f.png"]
