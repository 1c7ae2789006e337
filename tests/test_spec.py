"""NetworkSpec: the JSON form run directories hold, labels, validation, build."""

import json

import pytest

from cb_keras.paper import models
from cb_keras.paper.spec import NetworkSpec

# Specs as state.json / results.json of runs made before NetworkSpec hold them.
GOLDEN = [
    ('{"model": "fnn", "depth": 5, "width": 50}', NetworkSpec("fnn", depth=5, width=50),
     "fnn-d5-w50"),
    ('{"model": "vgg", "blocks": [3, 12, 41, 3]}', NetworkSpec("vgg", (3, 12, 41, 3)),
     "vgg-3-12-41-3"),
    ('{"model": "resnet", "blocks": [1, 0, 0, 0]}', NetworkSpec("resnet", [1, 0, 0, 0]),
     "resnet-1-0-0-0"),
]


@pytest.mark.parametrize("text, spec, label", GOLDEN)
def test_a_spec_round_trips_the_json_runs_hold_byte_for_byte(text, spec, label):
    assert NetworkSpec.from_dict(json.loads(text)) == spec
    assert json.dumps(spec.to_dict()) == text  # same keys, same order
    assert spec.label == label


def test_blocks_are_held_as_a_tuple_of_ints_so_equal_specs_compare_equal():
    import numpy as np

    spec = NetworkSpec("vgg", np.array([1, 1, 0, 0]))
    assert spec.blocks == (1, 1, 0, 0) and all(type(b) is int for b in spec.blocks)
    assert spec == NetworkSpec("vgg", [1, 1, 0, 0])
    assert json.dumps(spec.to_dict()) == '{"model": "vgg", "blocks": [1, 1, 0, 0]}'


def test_build_makes_the_network_of_the_kind():
    assert NetworkSpec("fnn", depth=2, width=8).build((8, 8, 1), 10).name == "fnn2x8"
    assert NetworkSpec("vgg", models.paper_blocks(4)).build((8, 8, 1), 10).name == "vgg4"
    resnet = NetworkSpec("resnet", [1, 1, 0, 0]).build((8, 8, 1), 10)
    assert resnet.name == "resnet6" and resnet.output.shape == (None, 10)
    assert "stage2_block1_add" in [layer.name for layer in resnet.layers]


@pytest.mark.parametrize("make, message", [
    (lambda: NetworkSpec("mlp", depth=2, width=8), "Unknown model kind 'mlp'; known kinds"),
    (lambda: NetworkSpec("fnn", depth=2), "fnn spec needs depth and width"),
    (lambda: NetworkSpec("fnn", blocks=(1, 1, 1, 1), depth=2, width=8),
     "fnn spec needs depth and width"),
    (lambda: NetworkSpec("fnn", depth=0, width=8), "depth must be a positive integer"),
    (lambda: NetworkSpec("fnn", depth=2, width=True), "width must be a positive integer"),
    (lambda: NetworkSpec("vgg"), "vgg spec needs blocks"),
    (lambda: NetworkSpec("resnet", (1, 1, 1, 1), depth=10), "resnet spec needs blocks"),
    (lambda: NetworkSpec("vgg", (1, 1, 1)), "blocks must be 4 non-negative ints"),
    (lambda: NetworkSpec("vgg", (0, 0, 0, 0)), "at least one block"),
    (lambda: NetworkSpec.from_dict({"model": "vgg", "depth": 10}), "A network spec is"),
    (lambda: NetworkSpec.from_dict({"model": "fnn", "depth": 2}), "A network spec is"),
    (lambda: NetworkSpec.from_dict({"model": "vgg", "blocks": [1, 1, 1, 1], "width": 3}),
     "A network spec is"),
    (lambda: NetworkSpec.from_dict(["vgg", [1, 1, 1, 1]]), "A network spec is"),
    (lambda: NetworkSpec.from_dict({"model": "mlp", "blocks": [1]}), "Unknown model kind"),
])
def test_a_bad_spec_is_refused_in_one_line_saying_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message) as refused:
        make()
    assert "\n" not in str(refused.value)


def test_a_spec_is_frozen():
    spec = NetworkSpec("vgg", (1, 1, 1, 1))
    with pytest.raises(AttributeError):
        spec.blocks = (2, 2, 2, 2)
