"""The JSON manifest that travels inside every camrt model (`metadata_props["camrt"]`).

It is public API: the engine reads the preprocessing, layer names and labels from it, and so can
any other runtime. Output names are fixed: `logits`, `class_idx_used`, per target layer L
`activation.L` and `gradient.L`, and, in a model exported with `input_gradient=True` (the
manifest's `input_gradient` says so), `gradient.input` = ∂ logits[n, class_idx_used[n]] / ∂ input[n].
A model with map heads (`camrt.graph.map_heads`; the manifest's `maps` lists their methods) also
has, per method M, `map.M.L` (N×h×w, the method's map after its ReLU) for every target layer L and
`saliency.M` (N×H×W in [0, 1], at the input size) for the last target layer; `layercam-fusion` has
only `saliency.layercam-fusion`, the LayerCAM fusion of every target layer in manifest order.
A model with a Recipro-CAM head (`camrt.graph.reciprocam_head`) has `map.reciprocam.L` (N×h×w, the
explained class's probability per position) and `saliency.reciprocam` for its one layer L, and
optionally `class_maps.reciprocam.L` (N×K×h×w, every class's map); `map_options` records the
options a head was built with (``{"reciprocam": {"kernel": "onehot"}}``). A model written without
the gradient branch (`gradients` false: `camrt add-maps --no-gradients`) has no `gradient.L`.
A model exported in target mode (`target_shape` non-empty: `camrt export --target`, issue 12)
takes, instead of `class_idx`, the input `target` (N × `target_shape`, the shape of the chosen
model output per image) and has, instead of `logits` and `class_idx_used`, the outputs `output`
(that model output) and `score` (N: Σ target ⊙ output per image); `gradient.L` = ∂ score[n] /
∂ activation.L[n].
A model exported with `--map-output NAME` (the manifest's `model_map`) also has `model_map`, the
model's own map output (N×K×h×w, one per class, or N×h×w), which the method `model-map` serves.
A model exported with `--relevance` (the manifest's `relevance`) also has, per target layer L,
`relevance.L` (N×C×h×w): the layer-wise relevance (LRP, Relevance-CAM's rules,
`camrt.exporter.relevance`) of the class `class_idx_used` at activation.L.
`precision` says how the graph computes: "fp32", or "fp16" (`camrt.graph.fp16`: the forward pass
in float16, the gradient branch and map heads in float32); inputs and outputs keep their types.

Format 1 grows only by fields with defaults: a manifest written before a field existed still loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

METADATA_KEY = "camrt"
FORMAT_VERSION = 1

# The ONNX opsets camrt writes, and its default (why these: `camrt.exporter.api`).
OPSETS = range(18, 27)
DEFAULT_OPSET = 20

# How a graph computes (`Manifest.precision`): float32 throughout, or float16 (`camrt.graph.fp16`).
FP32 = "fp32"
FP16 = "fp16"

INPUT = "input"
LAYOUTS = ("nchw", "nhwc", "tokens")  # how a target layer returns its map (Layer.layout)
CLASS_IDX = "class_idx"
LOGITS = "logits"
CLASS_IDX_USED = "class_idx_used"
INPUT_GRADIENT = "gradient.input"  # N×C×H×W, like the input; only when Manifest.input_gradient
# Target mode (Manifest.target_shape non-empty): the vector of the vector-Jacobian product is an input.
TARGET = "target"  # N × target_shape, float32
OUTPUT = "output"  # the chosen model output, N × target_shape
SCORE = "score"  # N: Σ target ⊙ output per image, the scalar whose gradient gradient.L is
# A model that computes its own attribution map (CALM, LFI-CAM), exported with --map-output: that
# output, N×K×h×w (one map per class) or N×h×w, as the model returns it; only when Manifest.model_map.
MODEL_MAP = "model_map"


def activation_name(layer: str) -> str:
    return f"activation.{layer}"


def gradient_name(layer: str) -> str:
    return f"gradient.{layer}"


def relevance_name(layer: str) -> str:
    """The output holding the layer-wise relevance at `layer` (N×C×h×w, `camrt export --relevance`)."""
    return f"relevance.{layer}"


def map_name(method: str, layer: str) -> str:
    """The output holding `method`'s map at `layer` (N×h×w, after its ReLU) in a model with map heads."""
    return f"map.{method}.{layer}"


def saliency_name(method: str) -> str:
    """The output holding `method`'s saliency (N×H×W in [0, 1]) in a model with map heads."""
    return f"saliency.{method}"


def class_maps_name(method: str, layer: str) -> str:
    """The output holding `method`'s maps of every class at `layer` (N×K×h×w) in a model with such a
    head (Recipro-CAM's, with ``all_classes=True``)."""
    return f"class_maps.{method}.{layer}"


def is_gradient(name: str) -> bool:
    """Whether the output `name` is a gradient: `gradient.L` of a target layer, or `INPUT_GRADIENT`."""
    return name == INPUT_GRADIENT or name.startswith(gradient_name(""))


@dataclass(frozen=True)
class Layer:
    """A target layer: its module name, the per-image shape C×h×w of `activation.L` and
    `gradient.L`, and how the module returns that map (`layout`, one of `LAYOUTS`: "nchw" as is;
    "nhwc" channels last, as Swin; "tokens" N×T×C with `prefix_tokens` prefix tokens before the
    h·w patch tokens, as ViT; see `camrt.exporter.tokens`)."""

    name: str
    shape: tuple[int, int, int]
    layout: str = "nchw"
    prefix_tokens: int = 0

    @property
    def activation(self) -> str:
        return activation_name(self.name)

    @property
    def gradient(self) -> str:
        return gradient_name(self.name)

    @property
    def relevance(self) -> str:
        return relevance_name(self.name)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the model input: resize to the input's H×W (bilinear),
    scale to [0, 1], then `(x - mean) / std` per channel."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: str = "bilinear"


@dataclass(frozen=True)
class Manifest:
    input_shape: tuple[int, int, int, int]  # example shape N×C×H×W; N is dynamic in the graph
    num_classes: int
    layers: tuple[Layer, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, ...] | None = None
    camrt_version: str = ""
    weights_sha256: str = ""
    source: str = ""
    opset: int = 0  # the default-domain opset the file imports
    format_version: int = FORMAT_VERSION
    input_gradient: bool = False  # the graph has the output INPUT_GRADIENT (absent from older manifests)
    maps: tuple[str, ...] = ()  # methods with map heads, in the order they were added (absent from older manifests)
    precision: str = FP32  # FP32 or FP16 (camrt.graph.fp16); IO types are the same (absent from older manifests)
    # The options each head in `maps` that takes options was built with, as the method's
    # `Options.as_dict()` (Recipro-CAM's kernel); a head answers only callers asking for the same.
    map_options: dict[str, dict] = field(default_factory=dict, hash=False)
    gradients: bool = True  # the graph has the outputs gradient.L (False: `camrt add-maps --no-gradients`)
    # Target mode: the per-image shape of the output explained and of the input `target`; () for
    # the classification contract (class_idx, logits). Absent from older manifests.
    target_shape: tuple[int, ...] = ()
    # The graph has the output MODEL_MAP (`camrt export --map-output`); absent from older manifests.
    model_map: bool = False
    # The graph has the outputs relevance.L (`camrt export --relevance`); absent from older manifests.
    relevance: bool = False
    # The graph outputs only the logits, the classes and its map heads' outputs (`camrt add-maps
    # --maps-only`): no activation, gradient or relevance. Absent from older manifests.
    maps_only: bool = False

    @property
    def targeted(self) -> bool:
        """True for a model exported in target mode (inputs input and target; outputs output, score)."""
        return bool(self.target_shape)

    def layer(self, name: str | None) -> Layer:
        """The target layer called `name`, or the only/last one when `name` is None."""
        if name is None:
            return self.layers[-1]
        for layer in self.layers:
            if layer.name == name:
                return layer
        known = ", ".join(la.name for la in self.layers)
        raise KeyError(f"the model has no target layer '{name}'; it was exported with: {known}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"camrt manifest format {d.get('format_version')} is not {FORMAT_VERSION}; "
                             "re-export the model with this camrt version")
        d["input_shape"] = tuple(d["input_shape"])
        d["layers"] = tuple(Layer(la["name"], tuple(la["shape"]), la.get("layout", "nchw"), la.get("prefix_tokens", 0))
                            for la in d["layers"])
        p = d["preprocessing"]
        d["preprocessing"] = Preprocessing(tuple(p["mean"]), tuple(p["std"]), p["resize"])
        if d.get("labels") is not None:
            d["labels"] = tuple(d["labels"])
        if "maps" in d:
            d["maps"] = tuple(d["maps"])
        if "target_shape" in d:
            d["target_shape"] = tuple(d["target_shape"])
        return cls(**d)
