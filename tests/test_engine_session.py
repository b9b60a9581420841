"""camrt.engine.session: provider lists, OpenVINO options and precision, and the errors for what
cannot run. Where the OpenVINO provider is absent (onnxruntime or onnxruntime-gpu installed), its
presence, the CPU's flags and OpenVINO's devices are mocked; with onnxruntime-openvino installed
the last tests also run a graph through it against the CPU provider."""

from __future__ import annotations

import json
import types

import numpy as np
import onnx
import onnx.helper
import onnx.parser
import onnxruntime as ort
import pytest

from camrt.engine import session as session_module
from camrt.engine.session import CPU, OPENVINO, open_session, providers_for
from camrt.errors import InputError

HAS_OPENVINO = OPENVINO in ort.get_available_providers()
BF16_CPU = bool((session_module.cpu_flags() or set()) & set(session_module.BF16_FLAGS))

# A tiny classifier: 3×3 conv, ReLU, global average pool, linear head (weights seeded below).
TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
net (float[N, 3, 8, 8] input) => (float[N, 5] logits) {
    a = Conv <pads = [1, 1, 1, 1]> (input, w, b)
    r = Relu(a)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    logits = Gemm <transB = 1> (f, fc, fcb)
}
"""


# The same with an input that has a default, as camrt's class_idx: k_used = k + 0.
DEFAULTED = (TEXT.replace("input) => (float[N, 5] logits)", "input, int64[1] k) => (float[N, 5] logits, int64[1] used)")
             .replace("}", "    used = Add(k, zero)\n}"))


def tiny_model(text: str = TEXT) -> bytes:
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    weights = {"w": (4, 3, 3, 3), "b": (4,), "fc": (5, 4), "fcb": (5,)}
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in weights.items())
    if "int64[1] k" in text:
        model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([-1], np.int64), "k"),
                                        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")])
    return model.SerializeToString()


@pytest.fixture
def openvino_present(monkeypatch):
    """As with onnxruntime-openvino installed on a CPU with native bfloat16 and no Intel GPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [OPENVINO, CPU])
    monkeypatch.setattr(session_module, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(session_module, "openvino_devices", lambda: ["CPU"])


def test_cpu_and_auto_without_a_gpu_are_the_cpu_provider(monkeypatch) -> None:
    assert providers_for("cpu") == [CPU]
    monkeypatch.setattr(session_module, "_cuda_driver_present", lambda: False)
    assert providers_for("auto") == [CPU] and providers_for("cuda") == [CPU]


def test_auto_never_picks_openvino(openvino_present) -> None:
    assert providers_for("auto") == [CPU]


def test_unknown_device_lists_openvino() -> None:
    with pytest.raises(InputError, match="device 'ov' is not one of auto, cpu, cuda, openvino$"):
        providers_for("ov")


def test_openvino_float32_is_its_cpu_device_without_a_hint(openvino_present) -> None:
    assert providers_for("openvino") == [(OPENVINO, {"device_type": "CPU"}), CPU]


def test_openvino_bf16_is_the_precision_hint_in_load_config(openvino_present) -> None:
    [(name, options), cpu] = providers_for("openvino", "bf16")
    assert (name, cpu) == (OPENVINO, CPU) and options["device_type"] == "CPU"
    # The hint goes in load_config, JSON per device: the provider's `precision` option takes only
    # FP32 or ACCURACY on a CPU.
    assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    assert "precision" not in options


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"amx_bf16", "amx_tile"}, {"avx_ne_convert", "avx2"}])
def test_bf16_accepts_each_native_instruction_set(openvino_present, monkeypatch, flags) -> None:
    monkeypatch.setattr(session_module, "cpu_flags", lambda: flags)
    assert "load_config" in providers_for("openvino", "bf16")[0][1]


@pytest.mark.parametrize("flags", [set(), {"avx2", "fma"}, {"avx512f", "avx512bw", "avx512_vnni"}])
def test_bf16_without_native_instructions_is_refused(openvino_present, monkeypatch, flags) -> None:
    # Plain AVX-512 included: OpenVINO would emulate bfloat16 there, slower than float32.
    monkeypatch.setattr(session_module, "cpu_flags", lambda: flags)
    with pytest.raises(InputError, match=r"'bf16' needs a CPU with native bfloat16 .* use precision=None"):
        providers_for("openvino", "bf16")


def test_bf16_where_the_flags_cannot_be_read_is_left_to_openvino(openvino_present, monkeypatch) -> None:
    monkeypatch.setattr(session_module, "cpu_flags", lambda: None)  # no /proc/cpuinfo
    assert "load_config" in providers_for("openvino", "bf16")[0][1]


def test_f16_needs_an_intel_gpu(openvino_present, monkeypatch) -> None:
    with pytest.raises(InputError, match=r"'f16' runs on an Intel GPU .* finds none \(devices: CPU\); .*'bf16'"):
        providers_for("openvino", "f16")
    monkeypatch.setattr(session_module, "openvino_devices", lambda: [])
    with pytest.raises(InputError, match=r"devices: none"):
        providers_for("openvino", "f16")
    monkeypatch.setattr(session_module, "openvino_devices", lambda: ["CPU", "GPU.0", "GPU.1"])
    [(_, options), _] = providers_for("openvino", "f16")
    assert options["device_type"] == "GPU"
    assert json.loads(options["load_config"]) == {"GPU": {"INFERENCE_PRECISION_HINT": "f16"}}


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_precision_without_openvino_is_refused(openvino_present, device, precision) -> None:
    # Refused, not ignored: the CPU and CUDA providers have no precision switch.
    with pytest.raises(InputError, match=rf"precision='{precision}' needs device='openvino' .*camrt\[openvino\]"):
        providers_for(device, precision)


@pytest.mark.parametrize("precision", ["fp16", "BF16", "f32", "", 16])
def test_unknown_precision_is_refused(openvino_present, precision) -> None:
    with pytest.raises(InputError, match=r"precision must be None \(float32\), 'bf16' or 'f16', got "):
        providers_for("openvino", precision)


def test_openvino_without_its_provider_says_what_to_install(monkeypatch) -> None:
    # No fallback to the CPU provider, unlike "cuda": the provider comes with the wheel.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
    for precision in (None, "bf16"):
        with pytest.raises(InputError, match=r"needs ONNX Runtime's OpenVINO execution provider, which this "
                                             r"onnxruntime .* lacks \(it has CUDAExecutionProvider, "
                                             r"CPUExecutionProvider\): pip install camrt\[openvino\]"):
            providers_for("openvino", precision)
    with pytest.raises(InputError, match="OpenVINO execution provider"):
        open_session(tiny_model(), "openvino")


def test_a_session_that_left_openvino_out_is_refused() -> None:
    # ONNX Runtime logs an error and runs on the CPU provider when OpenVINO refuses an option.
    on_cpu = types.SimpleNamespace(get_providers=lambda: [CPU])
    providers = [(OPENVINO, {"device_type": "CPU", "precision": "BF16"}), CPU]
    with pytest.raises(InputError, match=r"could not start its OpenVINO .*'precision': 'BF16'.* its CPU provider"):
        session_module.check_started(on_cpu, providers)
    session_module.check_started(types.SimpleNamespace(get_providers=lambda: [OPENVINO, CPU]), providers)
    session_module.check_started(on_cpu, [CPU])  # the CPU provider asked for


@pytest.mark.skipif(HAS_OPENVINO, reason="the provider is really there")
def test_open_session_checks_the_provider_it_got(openvino_present) -> None:
    # Here onnxruntime is told OpenVINO exists but lacks it: it warns and falls back to its CPU provider.
    with pytest.warns(UserWarning, match="OpenVINOExecutionProvider"), \
            pytest.raises(InputError, match="could not start its OpenVINO"):
        open_session(tiny_model(), "openvino")


def test_cpu_flags_from_proc_cpuinfo() -> None:
    flags = session_module.cpu_flags()
    if flags is not None:  # Linux
        assert flags and all(f == f.strip() and f for f in flags)


def test_cpu_session_is_unchanged() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    sess = open_session(tiny_model(), "cpu", spinning=False, precision=None)
    assert sess.get_providers() == [CPU]
    plain = ort.InferenceSession(tiny_model(), providers=[CPU])
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], plain.run(None, {"input": x})[0])


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs onnxruntime-openvino (pip install camrt[openvino])")
@pytest.mark.parametrize(("precision", "tolerance"), [(None, 1e-5), ("bf16", 3e-2)])
def test_openvino_runs_the_graph_as_the_cpu_provider(precision, tolerance) -> None:
    if precision == "bf16" and not BF16_CPU:
        pytest.skip("the CPU has no native bfloat16")
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    sess = open_session(tiny_model(), "openvino", precision=precision)
    assert sess.get_providers()[0] == OPENVINO
    got = sess.run(None, {"input": x})[0]
    want = open_session(tiny_model(), "cpu").run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


def test_required_inputs_drops_the_defaults_only() -> None:
    before = onnx.load_from_string(tiny_model(DEFAULTED))
    after = onnx.load_from_string(session_module.required_inputs(tiny_model(DEFAULTED)))
    assert [i.name for i in after.graph.input] == ["input", "k"]
    assert sorted(t.name for t in after.graph.initializer) == sorted(t.name for t in before.graph.initializer
                                                                      if t.name != "k")
    assert session_module.required_inputs(tiny_model()) == tiny_model()  # nothing to do
    sess = ort.InferenceSession(session_module.required_inputs(tiny_model(DEFAULTED)), providers=[CPU])
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert sess.run(["used"], {"input": x, "k": np.array([3])})[0].tolist() == [3]
    with pytest.raises(ValueError, match="Required inputs"):  # omitted: an error, not the default
        sess.run(["used"], {"input": x})


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs onnxruntime-openvino (pip install camrt[openvino])")
def test_openvino_reads_a_fed_input_that_has_a_default() -> None:
    # Its provider would compile the default as a constant and ignore the fed value.
    x = np.zeros((2, 3, 8, 8), np.float32)
    sess = open_session(tiny_model(DEFAULTED), "openvino")
    assert sess.run(["used"], {"input": x, "k": np.array([3])})[0].tolist() == [3]
