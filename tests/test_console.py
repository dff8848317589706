"""pipeline.console: our lines on stdout, the libraries' in the log file, a progress line with ETA.

Each case runs in a subprocess: `console.setup` configures process-wide logging, as the CLI does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _run(code: str, *args: str, tty: bool = False) -> subprocess.CompletedProcess:
    """Run `code`; stdout/stderr as text, with carriage returns kept (they are what a terminal redraws)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    for k in ("TQDM_DISABLE", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # as a user's shell has them: unset
        env.pop(k, None)
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if tty:  # a real pseudo-terminal, as a person's shell gives
        cmd = ["script", "-qec", " ".join(f"'{c}'" for c in cmd), "/dev/null"]
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=240, cwd=ROOT)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


ROUTING = """
import logging, sys
from pipeline import console
console.setup(verbose=sys.argv[2] == "1", log_file=sys.argv[1])
import mlflow  # installs its own handlers on import: they must not reach the terminal either
import ray.data  # so does Ray Data (the embed stage imports it before a pipeline)
console.route_third_party()
logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
logging.getLogger("ray.data").info("Execution plan: InputDataBuffer -> MapBatches")
logging.getLogger("alembic.runtime.migration").warning("Running upgrade")
logging.getLogger("ray.data").error("an actor died")
logging.getLogger("pipeline.grid").info("[grid] 4 cells to run")
print(console.log_file_note())
"""


def test_library_lines_go_to_the_log_file_ours_to_stdout(tmp_path):
    log = tmp_path / "logs" / "run.log"
    r = _run(ROUTING, str(log), "0")
    assert r.returncode == 0, r.stderr
    assert "[grid] 4 cells to run" in r.stdout
    for noise in ("Creating initial MLflow", "Execution plan", "Running upgrade"):
        assert noise not in r.stdout and noise not in r.stderr, noise
    assert "an actor died" in r.stderr  # errors still reach the terminal
    text = log.read_text()
    for line in ("Creating initial MLflow", "Execution plan", "Running upgrade", "an actor died", "[grid] 4 cells"):
        assert line in text, line
    assert f"library logs (Ray, MLflow): {log}" in r.stdout


def test_verbose_shows_the_library_lines(tmp_path):
    r = _run(ROUTING, str(tmp_path / "run.log"), "1")
    assert r.returncode == 0, r.stderr
    assert "Creating initial MLflow" in r.stdout + r.stderr and "Running upgrade" in r.stdout + r.stderr


PROGRESS = """
import logging, time
from pipeline import console
console.setup()
p = console.Progress("cells", 4, "cells", every_s=0)
for i in range(4):
    time.sleep(0.05)
    p.advance(note=f"cell {i} acc=0.9")
    logging.getLogger("pipeline.grid").info(f"line {i}")
p.close()
"""


def test_progress_is_line_based_when_redirected():
    r = _run(PROGRESS)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "\r" not in r.stdout
    assert [ln for ln in lines if ln.startswith("[cells] ")][-1].startswith("[cells] 4/4 cells, ")
    assert "ETA" in lines[0] and "cell 0 acc=0.9" in lines[0]
    assert [ln for ln in lines if ln.startswith("line ")] == [f"line {i}" for i in range(4)]


def test_progress_redraws_one_line_on_a_terminal():
    r = _run(PROGRESS, tty=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "\r[cells] 1/4 cells" in out and "\r[cells] 4/4 cells" in out  # redrawn in place
    for i in range(4):  # log lines still come out whole, between redraws (the pty writes \r\n)
        assert f"line {i}\r\n" in out


NESTED = """
import logging
from pipeline import console
console.setup()
cells = console.Progress("cells", 2, "cells", every_s=0)
emb = console.Progress("embed", 3, "rows", every_s=0)
emb.advance(3)
emb.close()
cells.advance()
cells.advance()
cells.close()
"""


def test_a_nested_progress_takes_the_line_and_gives_it_back():
    out = _run(NESTED, tty=True).stdout
    assert "\r[embed] 3/3 rows" in out
    after = out[out.index("[embed] 3/3 rows"):]
    assert "\r[cells] 0/2 cells" in after and "\r[cells] 2/2 cells" in after  # the outer one is redrawn


def test_benign_lines_ray_forwards_from_its_actors_are_skipped_unless_verbose():
    # in a child process: console.setup changes process-wide logging and the environment
    code = textwrap.dedent("""
        import os, re
        from pipeline import console
        console.setup(verbose=True)  # --verbose: Ray prints everything
        assert "RAY_DEDUP_LOGS_SKIP_REGEX" not in os.environ
        console.setup(verbose=False)
        skip = re.compile(os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"])
        assert skip.search("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.")
        assert skip.search("Actor with class name: 'PreemptionWatcher' and ID: '68' has constructor arguments in "
                           "the object store and max_restarts > 0. If the arguments ...")
        assert not skip.search("[train] step 2/2 loss 0.4750 dims 16 points 50 lr 1.00e-06 2.95 steps/s ETA 0.0 min")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS_SKIP_REGEX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


LIBRARY_BARS = """
import sys
from pipeline import console
console.setup(verbose=sys.argv[1] == "1")
from tqdm.auto import tqdm  # what transformers' GGUF conversion draws, with no switch of its own
for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
    pass
import os
print("mlflow urls suppressed:", os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"))
"""


def test_library_progress_bars_and_mlflow_run_urls_stay_off_the_console_unless_verbose():
    quiet = _run(LIBRARY_BARS, "0")
    assert quiet.returncode == 0, quiet.stderr
    assert "de-quantizing" not in quiet.stdout + quiet.stderr
    assert "mlflow urls suppressed: true" in quiet.stdout
    loud = _run(LIBRARY_BARS, "1")
    assert "de-quantizing" in loud.stdout + loud.stderr
    assert "mlflow urls suppressed: None" in loud.stdout
