"""`platform demo` shows our output; the engine's (every process's) goes to a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

# A process like `platform demo`: a logger writing to stderr (as vLLM's do) and a child process
# writing to file descriptors 1 and 2 directly (as vLLM's engine core does).
SCRIPT = """
import logging, subprocess, sys
from pathlib import Path
from cli.demo import engine_output_to

logger = logging.getLogger("fake-engine")
logger.addHandler(logging.StreamHandler(sys.stderr))
print("ours before", flush=True)
with engine_output_to(Path(sys.argv[1])):
    child = "import os; os.write(1, b'INFO engine core\\\\n'); os.write(2, b'WARNING NUMA\\\\n')"
    subprocess.run([sys.executable, "-c", child], check=True)
    logger.warning("WARNING Triton not found")
    print("engine print")
print("ours after")
"""


def test_engine_output_of_child_processes_and_loggers_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ours before", "ours after"]
    assert out.stderr == ""
    for line in ("INFO engine core", "WARNING NUMA", "WARNING Triton not found", "engine print"):
        assert line in log.read_text()
