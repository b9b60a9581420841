"""What every CLI test checks of a failed command, and the torch-free run of a command (no tests here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `camrt ARGS` in a fresh interpreter and fails if the command failed or imported torch.
_WITHOUT_TORCH = ("import sys; from camrt.cli import main\n"
                  "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                  "assert 'torch' not in sys.modules, 'torch was imported'\n")


def assert_one_line_error(result, *fragments: str, exit_code: int = 2) -> str:
    """A CliRunner result that failed as camrt promises: `exit_code`, exactly one line on stderr
    starting with "camrt: error: " and holding every fragment, no traceback anywhere."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("camrt: error: "), result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    """`camrt ARGS` in a fresh interpreter, checked to succeed without importing torch."""
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc
