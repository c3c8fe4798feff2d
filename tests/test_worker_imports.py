"""How the worker finds a converter that was renamed: the fallback is for an absent package only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parents[1] / "runner" / "worker"
CALL = """
import types, steps
try:
    steps._convert_litert_torch(types.SimpleNamespace(), "tflite")
except BaseException as exc:
    print(type(exc).__name__, exc)
"""


def _convert(path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(WORKER)])}
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True,
                          cwd=path).stdout.strip()


def test_a_litert_torch_that_fails_to_import_is_that_failure(tmp_path: Path) -> None:
    # litert-torch 0.10.0 beside torch 2.9 is installed but does not import: that is the finding, not a missing
    # ai_edge_torch (which the fallback used to report, hiding the cause)
    (tmp_path / "litert_torch").mkdir()
    (tmp_path / "litert_torch" / "__init__.py").write_text("raise ImportError('litert_torch needs torch>=2.10')\n")
    assert _convert(tmp_path) == "ImportError litert_torch needs torch>=2.10"


def test_without_litert_torch_the_converter_is_looked_for_under_its_old_name(tmp_path: Path) -> None:
    assert _convert(tmp_path) == "ModuleNotFoundError No module named 'ai_edge_torch'"
    (tmp_path / "ai_edge_torch").mkdir()
    (tmp_path / "ai_edge_torch" / "__init__.py").write_text("raise ImportError('ai_edge_torch needs torch_xla')\n")
    assert _convert(tmp_path) == "ImportError ai_edge_torch needs torch_xla"
