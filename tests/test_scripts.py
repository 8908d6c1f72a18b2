"""Scripts are code too: every script under scripts/ starts and shows its --help, so a function that moves or goes
breaks this test instead of the next person who runs a benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))

# One interpreter runs every script's --help in turn (torch and timm are imported once, not once per script):
# a script's import errors and its argparse setup run exactly as from the command line.
RUN_HELP = """
import contextlib, io, json, runpy, sys
results = {}
for script in sys.argv[1:]:
    sys.argv, out = [script, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        results[script] = "ran without exiting: has it no --help?"
    except SystemExit as e:
        results[script] = "ok" if e.code in (0, None) and "usage:" in out.getvalue() else f"exit {e.code}"
    except BaseException as e:
        results[script] = f"{type(e).__name__}: {e}"
print(json.dumps(results))
"""


def help_of(scripts: list[Path]) -> dict[str, str]:
    """Script -> "ok", or what went wrong when it was started with --help."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", RUN_HELP, *map(str, scripts)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_every_script_starts_and_shows_its_help():
    assert len(SCRIPTS) >= 10 and (REPO / "scripts" / "bench_quality.py") in SCRIPTS
    failed = {Path(s).name: why for s, why in help_of(SCRIPTS).items() if why != "ok"}
    assert not failed, failed


def test_a_script_importing_a_removed_function_fails(tmp_path):
    broken = tmp_path / "bench_broken.py"
    broken.write_text("import argparse\nfrom kit.data.dataset import load_image_cache\n"
                      "argparse.ArgumentParser().parse_args()\n")
    fine = tmp_path / "bench_fine.py"
    fine.write_text("import argparse\nif __name__ == '__main__':\n    argparse.ArgumentParser().parse_args()\n")
    result = help_of([broken, fine])
    assert result[str(broken)].startswith("ImportError: cannot import name 'load_image_cache'")
    assert result[str(fine)] == "ok"
