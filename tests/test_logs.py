"""A library logs, a command prints: kit's messages reach the console only where the kit command (or a script)
shows them (kit.console), as the plain lines kit printed before, and a run's train.log receives them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from kit.cli import main
from kit.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def test_messages_are_plain_lines_on_stdout_and_stderr_and_in_train_log(tmp_path, capsys):
    run = RunDir(tmp_path / "run")  # conftest shows kit's messages as the CLI does
    run.path.mkdir()
    run.config_path.write_text("{}\n")  # train.log starts once the run's config exists
    with run.writing(), run.logging():
        logging.getLogger("kit.data.pack").info("images: 40 train images")
        logging.getLogger("kit.data.labels").warning("warning: 4 ids have no row")
        logging.getLogger("kit.data.pack").debug("not shown")
    out, err = capsys.readouterr()
    assert (out, err) == ("images: 40 train images\n", "warning: 4 ids have no row\n")
    log = run.log_path.read_text()
    assert "images: 40 train images\n" in log and "warning: 4 ids have no row\n" in log and "not shown" not in log


def test_kit_as_a_library_shows_warnings_only_until_told(tmp_path):
    code = ("import logging, sys\n"
            "say = logging.getLogger('kit.data.labels')\n"
            "say.info('quiet'); say.warning('warning: shown')\n"
            "if sys.argv[1] == 'cli':\n"
            "    from kit.console import show_messages\n"
            "    show_messages(); show_messages()\n"  # twice: still one handler
            "    say.info('an info line'); say.warning('warning: a warning line')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for mode, out, err in (("library", "", "warning: shown\n"),
                           ("cli", "an info line\n", "warning: shown\nwarning: a warning line\n")):
        p = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=60)
        assert (p.returncode, p.stdout, p.stderr) == (0, out, err), mode


def test_the_kit_command_shows_a_library_warning_as_one_line(demo_data, tmp_path, capsys):
    data = tmp_path / "isic-2019"
    shutil.copytree(demo_data("isic-2019"), data)
    meta_file = data / "ISIC_2019_Training_Metadata.csv"
    meta = pd.read_csv(meta_file, dtype=str)
    meta.iloc[2:].to_csv(meta_file, index=False)  # two images lose their metadata row
    assert main(["check-data", "--competition", "isic-2019", "--data", str(data)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning: ")] == [
        f"warning: {meta_file}: 2 of {len(meta)} ids of ISIC_2019_Training_GroundTruth.csv have no row (first: "
        f"{meta['image'][0]}, {meta['image'][1]}); they get no metadata and each is its own group in the folds"]
