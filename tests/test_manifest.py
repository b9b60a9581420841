"""camrt.manifest.Manifest: the JSON that travels inside every camrt model."""

from __future__ import annotations

import json

import pytest

from camrt.manifest import FORMAT_VERSION, Layer, Manifest, Preprocessing


def full() -> Manifest:
    return Manifest(
        input_shape=(1, 3, 32, 32), num_classes=3,
        layers=(Layer("layer1", (6, 16, 16)), Layer("layer2.0", (8, 8, 8))),
        preprocessing=Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear"),
        labels=("cat", "dog", "bird ü"), camrt_version="0.1.0", weights_sha256="ab" * 32,
        source="model.pt2", opset=20,
    )


@pytest.mark.parametrize("manifest", [full(), Manifest((2, 1, 7, 9), 10, (Layer("c", (4, 7, 9)),))],
                         ids=["full", "minimal"])
def test_round_trip(manifest) -> None:
    text = manifest.to_json()
    back = Manifest.from_json(text)
    assert back == manifest
    assert isinstance(back.input_shape, tuple) and isinstance(back.layers[0].shape, tuple)
    assert back.to_json() == text
    d = json.loads(text)
    assert d["format_version"] == FORMAT_VERSION
    la = manifest.layers[0]
    assert d["layers"][0] == {"name": la.name, "shape": list(la.shape), "layout": la.layout,
                              "prefix_tokens": la.prefix_tokens}


def test_token_layers_round_trip_and_older_files_read_as_maps() -> None:
    m = Manifest(input_shape=(1, 3, 224, 224), num_classes=10,
                 layers=(Layer("blocks.11.norm1", (768, 14, 14), "tokens", 1), Layer("layers.3", (768, 7, 7), "nhwc")))
    assert Manifest.from_json(m.to_json()) == m
    d = json.loads(m.to_json())
    for la in d["layers"]:  # a file written before layouts existed
        del la["layout"], la["prefix_tokens"]
    old = Manifest.from_json(json.dumps(d))
    assert [(la.layout, la.prefix_tokens) for la in old.layers] == [("nchw", 0), ("nchw", 0)]


def test_json_is_compact_and_plain() -> None:
    text = full().to_json()
    assert "\n" not in text and ", " not in text
    d = json.loads(text)
    assert d["labels"] == ["cat", "dog", "bird ü"] and d["preprocessing"]["mean"] == [0.5, 0.4, 0.3]
    d["labels"] = None
    assert Manifest.from_json(json.dumps(d)) == Manifest(**{**full().__dict__, "labels": None})


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, None, "1"])
def test_format_version_mismatch(version) -> None:
    d = json.loads(full().to_json())
    if version is None:
        del d["format_version"]
    else:
        d["format_version"] = version
    with pytest.raises(ValueError, match=rf"is not {FORMAT_VERSION}; re-export the model"):
        Manifest.from_json(json.dumps(d))


def test_input_gradient_round_trip() -> None:
    with_it = Manifest(**{**full().__dict__, "input_gradient": True})
    text = with_it.to_json()
    assert json.loads(text)["input_gradient"] is True
    assert Manifest.from_json(text) == with_it and Manifest.from_json(text).input_gradient
    assert json.loads(full().to_json())["input_gradient"] is False  # the default, written out


def test_manifest_written_before_input_gradient_still_loads() -> None:
    """Format 1 as first released: no `input_gradient` key means a model without that output."""
    d = json.loads(full().to_json())
    del d["input_gradient"]
    old = Manifest.from_json(json.dumps(d))
    assert old == full() and old.input_gradient is False


def test_layer_lookup() -> None:
    m = full()
    assert m.layer(None).name == "layer2.0"  # the last one by default
    assert m.layer("layer1") == Layer("layer1", (6, 16, 16))
    assert (m.layer("layer1").activation, m.layer("layer1").gradient) == ("activation.layer1", "gradient.layer1")
    with pytest.raises(KeyError, match="no target layer 'layer3'.*layer1, layer2.0"):
        m.layer("layer3")
