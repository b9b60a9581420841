"""Device-resident runs: ONNX Runtime's IO binding, so that what the next graph reads stays where
the graph ran and only what the caller reads crosses to the host.

With the CUDA provider, `session.run` copies every feed to the GPU and every output back, each
run: a Score-CAM chunk graph re-uploads the image and the activation for every chunk of channels,
and a Grad-CAM run copies the N×C×h×w activations and gradients back although only the map is
read. `Binder` runs a session with an IO binding instead:

- feeds may be `OrtValue`s already on the device (`Binder.upload`: the image and the activation
  a perturbation method's chunk graphs read, uploaded once per image) or numpy arrays (copied in);
- the outputs named in `host` come back as numpy arrays; the others stay on the device as
  `OrtValue`s, and `Outputs` copies them to the host on first use only.

On the CPU provider "the device" is host memory: the binding changes no number, and the engine
uses it there only when asked (`Engine(io_binding=True)`), which is how the tests cover it.

`FixedBatch` runs a graph at one batch size whatever the rows given (padding, then dropping the
padded rows): the shape condition of CUDA graphs (`Engine(cuda_graphs=True)`), whose replay reads
and writes the same device addresses every run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort

Feed = np.ndarray | ort.OrtValue


class Binder:
    """Runs sessions with IO binding; `device` is where results stay: "cuda" or "cpu"."""

    def __init__(self, device: str, device_id: int = 0) -> None:
        self.device = device
        self.device_id = device_id

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        """`array` copied once to the device, for feeding to any number of runs."""
        # (not np.ascontiguousarray, which turns a scalar into a 1-element vector)
        return ort.OrtValue.ortvalue_from_numpy(np.require(array, requirements="C"), self.device, self.device_id)

    def run(self, session: ort.InferenceSession, feeds: Mapping[str, Feed], names: Sequence[str],
            host: Collection[str]) -> dict[str, np.ndarray | ort.OrtValue]:
        """`session`'s outputs `names` for `feeds`: those in `host` as numpy arrays, the others as
        OrtValues on the device."""
        binding = session.io_binding()
        for name, value in feeds.items():
            # (bind_cpu_input cannot bind an overridable initializer such as class_idx; an OrtValue can)
            binding.bind_ortvalue_input(name, value if isinstance(value, ort.OrtValue) else self.upload(value))
        for name in names:
            binding.bind_output(name, "cpu" if name in host else self.device,
                                0 if name in host else self.device_id)
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: v.numpy() if name in host else v for name, v in zip(names, values, strict=True)}


class Outputs(Mapping[str, np.ndarray]):
    """A run's outputs by name, as numpy arrays; parts left on the device (OrtValues, one per
    chunk of rows) are copied to the host and concatenated on first access, then kept."""

    def __init__(self, parts: Mapping[str, Sequence[np.ndarray | ort.OrtValue]]) -> None:
        self._parts = {k: list(v) for k, v in parts.items()}
        self._host: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._host:
            arrays = [p if isinstance(p, np.ndarray) else p.numpy() for p in self._parts[name]]
            self._host[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            del self._parts[name]
        return self._host[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._parts.pop(name, None)
        self._host[name] = value

    def __iter__(self) -> Iterator[str]:
        return iter([*self._host, *self._parts])

    def __len__(self) -> int:
        return len(self._host) + len(self._parts)

    def on_host(self) -> list[str]:
        """The outputs already on the host (reading them copies nothing)."""
        return [*self._host, *(k for k, v in self._parts.items() if all(isinstance(p, np.ndarray) for p in v))]


class FixedBatch:
    """Runs `session` always `rows` rows at a time, on device buffers bound once: a smaller batch
    is padded with copies of its first row (every feed split along its first axis) and the padded
    rows' outputs are dropped, so every run has the same shapes and addresses, which is what a
    CUDA graph replays (`Engine(cuda_graphs=True)`). Each row of a camrt graph depends on its own
    row of the feeds only (batch norm in training mode is refused at export), so padding changes
    no result. Every input and output must have a static shape apart from the batch."""

    def __init__(self, session: ort.InferenceSession, rows: int, binder: Binder) -> None:
        self.session = session
        self.rows = rows
        self.binder = binder
        self.binding = session.io_binding()
        self.inputs: dict[str, ort.OrtValue] = {}  # bound on the first run, from its feeds
        self.outputs: dict[str, ort.OrtValue] = {}
        for arg in session.get_outputs():
            dims = list(arg.shape)
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
                raise ValueError(f"output '{arg.name}' has the shape {dims}: a fixed-batch run needs every "
                                 "dimension but the first to be static")
            value = ort.OrtValue.ortvalue_from_shape_and_type([rows, *dims[1:]], _dtype(arg.type), binder.device,
                                                              binder.device_id)
            self.binding.bind_ortvalue_output(arg.name, value)
            self.outputs[arg.name] = value

    def get_outputs(self) -> list[ort.NodeArg]:
        return self.session.get_outputs()

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs `names` (None: all) for `feeds` (at most `rows` rows; the same names, dtypes
        and trailing shapes every run), as numpy arrays of the real rows: `InferenceSession.run`'s
        interface, so that `camrt.engine.graphs.run_chunked` splits a batch into such runs."""
        n = len(next(iter(feeds.values())))
        if not 0 < n <= self.rows:
            raise ValueError(f"{n} rows given to a graph run at {self.rows}")
        padded = {k: np.ascontiguousarray(v if n == self.rows else
                                          np.concatenate([v, np.repeat(v[:1], self.rows - n, axis=0)]))
                  for k, v in feeds.items()}
        if not self.inputs:
            for name, value in padded.items():  # a copy: on the CPU an OrtValue shares the array's memory
                self.inputs[name] = self.binder.upload(value.copy())
                self.binding.bind_ortvalue_input(name, self.inputs[name])
        else:
            if padded.keys() != self.inputs.keys():
                raise ValueError(f"a fixed-batch run was bound to the feeds {sorted(self.inputs)}, "
                                 f"got {sorted(padded)}")
            for name, value in padded.items():
                bound = self.inputs[name]
                if list(value.shape) != bound.shape() or value.dtype != np.dtype(_dtype(bound.data_type())):
                    raise ValueError(f"feed '{name}' is {value.dtype}{list(value.shape)}, bound as "
                                     f"{bound.data_type()}{bound.shape()}")
                bound.update_inplace(value)
        self.session.run_with_iobinding(self.binding)
        # copied: on the CPU, numpy() is a view of the buffer that the next run overwrites
        return [np.array(self.outputs[name].numpy()[:n]) for name in (self.outputs if names is None else names)]


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _dtype(onnx_type: str) -> np.dtype:
    if onnx_type not in _DTYPES:
        raise ValueError(f"a fixed-batch run does not handle tensors of type {onnx_type}")
    return np.dtype(_DTYPES[onnx_type])
