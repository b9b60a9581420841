"""camrt.exporter.verify.compare's criterion on hand-made arrays, and camrt's `_safe_softmax` rule
(camrt.exporter.rules.safe_softmax) against torch's on finite rows and on a fully masked one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camrt
from camrt.errors import VerificationError
from camrt.exporter import verify
from camrt.exporter.rules import safe_softmax


@pytest.mark.parametrize("name", ["logits", "activation.layer4", "gradient.layer4"])
def test_nan_or_infinity_where_eager_is_finite_is_a_mismatch(name) -> None:
    ref = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    got = ref.astype(np.float32)
    assert verify.compare(name, got, ref, ref) is None
    got[1, 2, 3, 0] = np.nan
    bad = verify.compare(name, got, ref, ref)
    assert bad is not None and "1 elements are NaN or infinite where eager PyTorch's are finite" in str(bad)
    got[1, 2, 3, 0] = np.inf
    assert verify.compare(name, got, ref, ref) is not None


def test_safe_softmax_rule_is_softmax_on_rows_with_a_finite_score() -> None:
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    x[0, 1, 2, :3] = -torch.inf  # some keys masked: still a finite score in the row
    torch.testing.assert_close(safe_softmax(x, -1), torch.ops.aten._safe_softmax(x, -1), rtol=0, atol=1e-15)
    assert safe_softmax(x, -1, torch.float32).dtype == torch.float32
    x[1, 0, 4, :] = -torch.inf  # a whole row masked: torch's gives 0, the rule NaN
    assert torch.ops.aten._safe_softmax(x, -1)[1, 0, 4].eq(0).all() and safe_softmax(x, -1)[1, 0, 4].isnan().all()


class MaskedAttention(nn.Module):
    """A token mixer whose last query may attend to no key (a fully masked attention row)."""

    def __init__(self, mask_a_row: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 3)
        mask = torch.ones(16, 16, dtype=torch.bool)
        if mask_a_row:
            mask[-1] = False
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + nn.functional.scaled_dot_product_attention(t, t, t, attn_mask=self.mask)
        return self.head(t.mean(1))


def test_a_fully_masked_attention_row_is_refused_not_written(tmp_path) -> None:
    """Eager attention gives that row 0, the exported softmax NaN: the self-check says so."""
    torch.manual_seed(0)
    camrt.export(MaskedAttention(False).eval(), layers=["embed"], path=tmp_path / "ok.onnx", input_shape=(1, 3, 16, 16))
    with pytest.raises(VerificationError, match="NaN or infinite where eager PyTorch's are finite"):
        camrt.export(MaskedAttention(True).eval(), layers=["embed"], path=tmp_path / "m.onnx",
                     input_shape=(1, 3, 16, 16))
    assert not (tmp_path / "m.onnx").exists()
