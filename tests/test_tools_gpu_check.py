"""tools/gpu_check.py's building blocks on tiny models (CPU provider), so that the GPU script
cannot rot between the rare runs on a GPU: exports, fresh inputs, the correctness part (every
check present and passing CPU against CPU), timing rows and targets, the depthwise forms, the
comparison statistics against hand-computed values, and the TF32 switch."""

from __future__ import annotations

import io

import numpy as np
import pytest

from camrt.engine import session as camrt_session
from camrt.methods import METHODS
from tests.tiny import TinyNet, make
from tools import gpu_blocks as blocks
from tools import gpu_check as check


def settings() -> check.Settings:
    return check.Settings("cpu", True, chunk=4, batches=(1, 3), seconds=0.0, max_calls=1, perturbation_images=2,
                          fp16_scorecam=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gpu_check")
    model = make(TinyNet)
    files = blocks.export_files(model, "tiny", "layer2", (1, 3, 32, 32), workdir)
    x, cls = blocks.fresh_inputs(blocks.session(files.cam, "cpu"), (1, 3, 32, 32), 4)
    return model, files, x, cls, workdir


def test_exports_and_reuse(tiny):
    model, files, _, _, workdir = tiny
    assert files.cam16 is not None and files.plain16 is not None, files.fp16_error
    stamp = (workdir / "tiny.sha256").read_text()
    mtime = files.cam.stat().st_mtime_ns
    again = blocks.export_files(model, "tiny", "layer2", (1, 3, 32, 32), workdir)  # same weights: reused
    assert again == files and files.cam.stat().st_mtime_ns == mtime
    assert stamp == blocks.weights_hash(model)
    plain = blocks.session(files.plain, "cpu")
    assert [i.name for i in plain.get_inputs()] == ["input"] and [o.name for o in plain.get_outputs()] == ["logits"]


def test_fresh_inputs_have_two_classes_and_clear_margins(tiny):
    _, files, x, cls, _ = tiny
    assert x.shape == (4, 3, 32, 32) and len(set(cls.tolist())) >= 2 and cls[0] != cls[1]
    z = blocks.session(files.plain, "cpu").run(None, {"input": x})[0]
    assert (z.argmax(1) == cls).all()


def test_correctness_rows_cover_every_method_and_pass_on_the_cpu(tiny):
    _, files, x, cls, _ = tiny
    table = blocks.Table()
    check.correctness(files, x, cls, settings(), table)
    checks = {(r.precision, r.check) for r in table.rows}
    for precision in ("fp32", "fp16"):
        for m in (m.name for m in METHODS.values() if m.family == "gradient"):
            assert any(p == precision and c.startswith(f"{m} map") for p, c in checks), (precision, m)
        for c in ("scorecam map", "reciprocam map", "head saliency.gradcam", "head map.layercam.layer2",
                  "activation layer2", "gradient layer2"):
            assert (precision, c) in checks, (precision, c)
    assert [r for r in table.rows if r.result != "pass"] == []
    assert {r.batch for r in table.rows if r.check == "scorecam map"} == {"2"}


def test_timing_rows_and_targets(tiny):
    model, files, x, _, _ = tiny
    s, table = settings(), blocks.Table()
    clock = blocks.Clock(600, stream=io.StringIO())
    check.time_model(files, model, x, s, table, clock, heavy=False)
    check.time_model(files, model, x, s, table, clock, heavy=True)
    assert [r for r in table.rows if r.result == "error"] == []
    for key in [("tiny", p, w, b) for p in ("fp32", "fp16") for b in (1, 3)
                for w in ("plain inference", "gradcam (map head)", "reciprocam", "ablationcam")] \
            + [("tiny", "fp32", "scorecam", 1), ("tiny", "fp32", "scorecam forwards", 1),
               ("tiny", "fp32", "pytorch-grad-cam ScoreCAM", 1), ("tiny", "fp32", "pytorch-grad-cam GradCAM", 3)]:
        assert s.times[key] > 0, key
    check.targets(["tiny"], s, table)
    ratios = {(r.precision, r.check, r.batch): r for r in table.rows if r.part == "target"}
    assert ratios[("fp32", "gradcam / plain inference", "3")].result in ("pass", "FAIL")
    assert ratios[("fp32", "scorecam / its forward passes alone", "1")].measured.endswith("×")
    assert ratios[("fp16", "scorecam / its forward passes alone", "1")].measured.startswith("not measured")


def test_depthwise_forms(tmp_path):
    import torch

    torch.manual_seed(0)
    spec = (blocks.DepthwiseNet(4, depth=1).eval(), "stem", "dw", (1, 3, 32, 32), "test")
    table = blocks.Table()
    check.depthwise(settings(), tmp_path, table, spec)
    rows = {(r.check, r.batch): r for r in table.rows}
    assert [r for r in table.rows if r.result in ("FAIL", "error")] == []
    assert rows[("form auto: ConvTranspose nodes (grouped)", "")].measured.endswith("(0)")
    assert not rows[("form transpose: ConvTranspose nodes (grouped)", "")].measured.endswith("(0)")
    assert rows[("gradient.stem: auto vs transpose", "3")].result == "pass"
    assert ("transpose / auto", "1") in rows


def test_diff_against_hand_computed_values():
    ref = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    got = ref.copy()
    got[0, 3] = 3.5
    d = blocks.diff(got, ref)
    assert d.max_abs == pytest.approx(0.5) and d.rel_max == pytest.approx(0.5 / 3)
    assert d.rel_l2 == pytest.approx(0.5 / np.sqrt(14 + 4))
    assert d.cos == pytest.approx((0 + 1 + 4 + 10.5) / (np.sqrt(14) * np.sqrt(5 + 12.25)))
    # Image 1 is constant on both sides (correlation taken as 1), so image 0's Pearson correlation is the lowest.
    assert d.corr == pytest.approx(np.corrcoef(got[0], ref[0])[0, 1])
    fp32, fp16 = blocks.TOLERANCES["fp32"], blocks.TOLERANCES["fp16"]
    assert not fp32.ok("map", d) and not fp32.ok("tensor", d) and not fp32.ok("logits", d)
    assert fp16.ok("map", d) and fp16.ok("logits", d) and not fp16.ok("logits", d, top1_same=False)


def test_strict_fp32_turns_tf32_off_for_cuda_only(monkeypatch):
    monkeypatch.setattr(camrt_session, "providers_for", lambda device, *a: ["CUDAExecutionProvider",
                                                                            "CPUExecutionProvider"])
    with blocks.strict_fp32("cuda"):
        assert camrt_session.providers_for("cuda") == [("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                       "CPUExecutionProvider"]
    assert camrt_session.providers_for("cuda")[0] == "CUDAExecutionProvider"
    with blocks.strict_fp32("cpu"):
        assert camrt_session.providers_for("cuda")[0] == "CUDAExecutionProvider"
    assert blocks.providers("cuda", tf32=False)[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})


def test_table_and_guard():
    table = blocks.Table()
    with table.guard("timing", "m", "fp32", 1, "x"):
        raise ValueError("a | b\nsecond line")
    table.add("target", "m", "fp32", 32, "r", "1.00×", "≤ 1.10×", "pass")
    md = table.markdown().splitlines()
    assert md[0].startswith("| part | model") and len(md) == 4
    assert "ValueError: a \\| b" in md[2] and "second line" not in md[2] and md[2].endswith("| error |")
    assert table.count("pass") == 1 and table.count("error") == 1
