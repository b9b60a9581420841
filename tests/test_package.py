"""Package-level promises: dependency walls and lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_camrt_stays_light() -> None:
    code = "import sys, camrt; print(' '.join(m for m in ('torch', 'onnxruntime', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import camrt loaded {out.stdout.strip()}"


def test_ray_stays_optional() -> None:
    """Issue 15: `import camrt`, the engine, the CLI and camrt.scale itself load no Ray, FastAPI or
    pyarrow (camrt[scale] is optional); only camrt/scale/ imports them, inside its functions."""
    code = ("import sys, camrt, camrt.engine, camrt.cli, camrt.scale; "
            "print(' '.join(m for m in ('ray', 'fastapi', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"the imports loaded {out.stdout.strip()}"
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "camrt").rglob("*.py")
        if "scale" not in p.parts and any(
            line.lstrip().startswith(("import ray", "from ray", "import fastapi", "from fastapi"))
            for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_torch_only_in_exporter() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "camrt").rglob("*.py")
        if "exporter" not in p.parts and any(
            line.lstrip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_ruff_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "camrt", "tests", "tools", "models"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
