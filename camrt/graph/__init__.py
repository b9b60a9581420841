"""Graph passes: small, pure `ModelProto -> ModelProto` steps, run from visible lists.

Every pass returns a new model and leaves its argument untouched. The exporter runs
`export_passes(...)` (ending with `map_passes(...)` when map heads are asked for, which
`camrt add-maps` also runs on an exported file), then, for `--fp16`, `fp16_passes()` on the
verified float32 graph (which `camrt convert --fp16` also runs); the engine runs `forward_only`,
`keep_outputs` and `tail` to get cheap sub-graphs (ONNX Runtime computes every node of a graph
whatever outputs are requested).

A pass never finds nothing silently when it had something to find: a rewrite pass checks whether
the graph calls for its rewrite (`gather_selected_rows`: the logits are a linear layer) and raises
`PatternNotFound` when it does and no match is found, for example after a torch upgrade traces
the pattern in another form. The exporter turns that into an `ExportError`: camrt does not write
a file whose graph is not the one it documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from camrt.graph._util import PatternNotFound
from camrt.graph.broadcast_weights import unexpand_matmul_weights
from camrt.graph.chunks import ablationcam_chunks, groupcam_chunks, reciprocam_chunks, rise_chunks, scorecam_chunks
from camrt.graph.class_idx import default_class_idx, guard_class_idx, required_class_idx
from camrt.graph.class_select import gather_selected_rows
from camrt.graph.fp16 import cast_round_trips, fp16_passes, to_fp16
from camrt.graph.layer_norm_stats import layer_norm_statistics
from camrt.graph.map_heads import add_map_heads, check_maps, map_passes
from camrt.graph.metadata import attach_manifest
from camrt.graph.output_matmul import unflatten_output_matmuls
from camrt.graph.reciprocam_head import add_reciprocam_head, without_gradients
from camrt.graph.subgraph import forward_only, keep_outputs, tail

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]


def run_passes(model: onnx.ModelProto, passes: Sequence[Pass]) -> onnx.ModelProto:
    """Apply `passes` in order; a `PatternNotFound` from any of them propagates."""
    for p in passes:
        model = p(model)
    return model


def export_passes(num_classes: int, manifest_json: str, maps: Sequence[str] = (), targeted: bool = False
                  ) -> list[Pass]:
    """What the exporter does to the graph torch.onnx wrote, in order; `maps`: the methods to add
    map heads for (`camrt.graph.map_heads`), none by default. In target mode (`targeted`) there is
    no class to select, guard or default: the class passes are left out."""
    classes = [] if targeted else [gather_selected_rows, guard_class_idx(num_classes), default_class_idx]
    return [
        unexpand_matmul_weights,
        unflatten_output_matmuls,
        layer_norm_statistics,
        *classes,
        attach_manifest(manifest_json),
        *(map_passes(maps) if maps else []),
    ]


__all__ = ["Pass", "PatternNotFound", "run_passes", "export_passes", "forward_only", "keep_outputs", "tail",
           "default_class_idx", "guard_class_idx", "required_class_idx", "attach_manifest", "gather_selected_rows",
           "add_map_heads",
           "check_maps", "map_passes", "scorecam_chunks", "ablationcam_chunks", "reciprocam_chunks", "to_fp16",
           "groupcam_chunks", "rise_chunks", "layer_norm_statistics",
           "fp16_passes", "cast_round_trips", "add_reciprocam_head", "without_gradients", "unexpand_matmul_weights",
           "unflatten_output_matmuls"]
