"""Full-size transformers of issue 11 (timm's ViT-Tiny and distilled DeiT-Tiny, 12 blocks, random
weights): exported at two depths, against float64 eager autograd on real photos, one explained for
a class that is not its top-1 (`tools/check_transformers.py`, which also runs vit_b_16, swin_t,
maxvit_t and timm's Swin by hand: minutes each)."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")
pytest.importorskip("skimage")

from tools import check_transformers  # noqa: E402

check_transformers.MODELS["timm:deit_tiny_distilled_patch16_224"] = (
    check_transformers._timm("deit_tiny_distilled_patch16_224"), ("blocks.5.norm1", "blocks.11.norm1"), "head")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224", "timm:deit_tiny_distilled_patch16_224"])
def test_full_size_transformer_matches_float64_autograd(name, tmp_path) -> None:
    row = check_transformers.check(name, tmp_path)
    assert row["domains"] == ["ai.onnx"] and row["tensorrt problems"] == [], row
    assert row["logits"] <= 1e-4, row
    for layer in check_transformers.MODELS[name][1]:
        assert row[f"layout {layer}"] == "tokens"
        assert row[f"activation {layer}"] <= 1e-4, row
        assert row[f"gradient {layer}"] <= 1e-4, row
