"""kit tune in daily use: a default search space per competition, spaces apart from presets, a line per trial with
the study's ETA, Optuna's experimental warnings once, and last.pt dropped when a trial's fold finishes."""

from __future__ import annotations

import pytest

from kit import tune
from kit.cli import main
from kit.competitions import list_competitions
from kit.config import PRESET_DIR, load_config
from kit.errors import ConfigError

HCD = "histopathologic-cancer-detection"
TINY = ["model.img_size=32", "n_folds=2", "train.epochs=1", "train.batch_size=16", "train.warmup_epochs=0",
        "train.device=cpu"]


@pytest.mark.parametrize("competition", [c.name for c in list_competitions()])
def test_every_competition_has_a_default_space_that_fits_its_config(competition):
    path = tune.resolve_space(None, competition)
    assert path == tune.SPACE_DIR / f"{competition}.yaml"
    space = tune.load_space(path)
    tune.check_space(space, load_config(competition), str(path))
    if "train.loss" in space:  # a loss of the wrong task (ce for a binary competition) would fail every trial
        for loss in space["train.loss"].choices:
            load_config(competition, overrides=[f"train.loss={loss}"])


def test_spaces_and_presets_do_not_share_a_namespace(capsys):
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert not [p for p in presets if p.startswith("space")]
    assert main(["config", "show", "--competition", HCD, "--config", "space-hcd"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found: space-hcd" in err and "unknown config key" not in err
    assert tune.resolve_space(HCD, HCD) == tune.SPACE_DIR / f"{HCD}.yaml"  # a shipped space by its name
    with pytest.raises(ConfigError, match="is a config preset .* not a search space"):
        tune.resolve_space(str(PRESET_DIR / f"{HCD}.yaml"), HCD)
    with pytest.raises(ConfigError, match=r"search space file not found: nope \(shipped spaces: "):
        tune.resolve_space("nope", HCD)


def test_a_study_with_the_default_space_reports_each_trial_and_drops_last_pt(demo_data, tmp_path, capsys):
    data, out = demo_data(HCD, n=40), tmp_path / "tune"
    args = ["tune", "--competition", HCD, "--data", str(data), "--trials", "1", "--study", "s", "--out", str(out),
            "--sampler", "random", "--seed", "0", "--pruner", "none", "--keep-checkpoints"]
    for pair in TINY:
        args += ["--set", pair]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"kit tune: search space {tune.SPACE_DIR / f'{HCD}.yaml'}" in captured.out
    assert "kit tune: trial 0 complete " in captured.out and "1/1 trials (100%), best " in captured.out
    notes = [s for s in captured.err.splitlines() if "experimental" in s]
    assert len(notes) == 1 and notes[0].startswith("note: kit tune uses Optuna features marked experimental"), notes
    assert "heartbeat_interval" in notes[0] and "ExperimentalWarning" not in captured.err
    for k in (0, 1):  # --keep-checkpoints keeps best.pt; train.keep_last=false (tune's default) drops last.pt
        assert (out / "s" / "trial-0" / f"fold{k}" / "best.pt").is_file()
        assert not (out / "s" / "trial-0" / f"fold{k}" / "last.pt").exists()


def test_tune_plots_name_the_metric_and_explain_the_step_axis(tmp_path):
    import json

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(direction="maximize")
    base = load_config("isic-2024-challenge")
    study.set_user_attr("kit", json.loads(json.dumps({"config": base.to_dict(), "stride": 4})))
    for i in range(3):
        study.add_trial(create_trial(params={"train.lr": 0.001 * (i + 1)}, value=0.1 + 0.01 * i,
                                     distributions={"train.lr": FloatDistribution(1e-4, 1e-2)},
                                     intermediate_values={0: 0.05, 4: 0.1 + 0.01 * i}))
    axes = tune.results.labelled_plots(study)
    assert "pauc80" in axes["history"].get_ylabel() and "pauc80" in axes["history"].get_title()
    assert axes["intermediate"].get_xlabel().startswith("step = fold position x 4 + epoch")
    assert "pauc80" in axes["intermediate"].get_ylabel()
    for ax in axes.values():  # 3 trials: ticks at whole trial numbers and steps only
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    paths = tune.save_plots(study, tmp_path)
    assert (tmp_path / "intermediate.png").read_bytes()[:4] == b"\x89PNG" and paths["history"].is_file()
