"""kit.progress: one progress reporter for every long phase, a bar in a terminal and plain lines in a log."""

from __future__ import annotations

import io

from kit.progress import Eta, Progress, fmt_duration, progress_every


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal_with_the_overall_eta():
    out = io.StringIO()
    overall = Eta(total=10)  # 10 epochs in the run
    bar = Progress(500, "fold 0 epoch 3/10", unit="step", every=0.0, overall=overall, overall_weight=1 / 500,
                   stream=out)
    bar.eta.start -= 10
    overall.start -= 10
    bar.update(125)
    line = out.getvalue().strip()
    assert line.startswith("fold 0 epoch 3/10: 125/500 steps (25%), 12.5 steps/s, ETA ")
    assert line.endswith("; overall 2%, ETA 6m30s"), line  # 0.25 epoch in 10 s: 9.75 epochs left at 0.025/s
    assert overall.done == 0.25


def test_lines_come_at_most_once_per_interval(monkeypatch):
    monkeypatch.setenv("KIT_PROGRESS_EVERY", "3600")
    out = io.StringIO()
    bar = Progress(100, "predicting", unit="img", stream=out)
    assert bar.every == 3600
    for _ in range(100):
        bar.update(1)
    assert out.getvalue() == ""
    monkeypatch.setenv("KIT_PROGRESS_EVERY", "0")
    bar = Progress(100, "predicting", unit="img", stream=out)
    for _ in range(3):
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 3


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    term = _Terminal()
    with Progress(4, "packed", unit="img", stream=term, every=0.0) as bar:
        assert bar.bar is not None
        bar.update(4)
    assert "|" in term.getvalue() and "imgs/s" not in term.getvalue()  # tqdm's bar, not a plain line
    quiet = io.StringIO()
    bar = Progress(4, "packed", stream=quiet, every=0.0, enabled=False)
    bar.update(4)
    assert quiet.getvalue() == "" and bar.done == 4


def test_progress_every_and_durations(monkeypatch):
    monkeypatch.setenv("KIT_PROGRESS_EVERY", "junk")
    assert progress_every() == 30.0
    monkeypatch.delenv("KIT_PROGRESS_EVERY")
    assert progress_every() == 30.0
    assert [fmt_duration(s) for s in (12, 245, 3720)] == ["12s", "4m05s", "1h02m"]
    assert Eta(10).eta() == "?"


def test_packing_reports_progress(demo_data, monkeypatch, capsys, tmp_path):
    from kit.data.pack import build_pack

    monkeypatch.setenv("KIT_PROGRESS_EVERY", "0")
    data = demo_data("histopathologic-cancer-detection", n=12)
    ids = sorted(p.stem for p in (data / "train").glob("*.tif"))
    pack = build_pack("hcd", data, "train", 32, ids, cache_dir=tmp_path, workers=1)
    assert pack.images.shape == (12, 32, 32, 3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("packed: 12/12 imgs (100%), ")
