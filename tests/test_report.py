"""ConflictReport: lookups, JSON/CSV round trips, atomic writes, the plot."""

import json
import math

import pytest

from cb_keras.report import ConflictReport, LayerResult, read_csv, write_csv


def report(epoch=3):
    layers = (LayerResult("conv1", 512, 0.0, 1.0),
              LayerResult("block1_branch", 40, 0.25, 0.9),
              LayerResult("block1_out", None, math.nan, math.nan, diverged=True),
              LayerResult("block2_out", 1, 2.302585, 0.1015625))
    return ConflictReport(layers=layers, num_samples=512, num_classes=10,
                          weight_amplitude=0.731, learning_rate=1e-3, batch_size=64, epoch=epoch)


def test_layers_by_name_and_in_order():
    r = report()
    assert r.names == ["conv1", "block1_branch", "block1_out", "block2_out"]
    assert [layer.name for layer in r] == r.names and len(r) == 4
    assert r["block1_branch"].num_bundles == 40
    assert r.last.name == "block2_out" and r.last.conflicting
    assert r.conflicting == ["block1_branch", "block2_out"]
    assert r.first_conflicting == "block1_branch"
    assert r.diverged == ["block1_out"] and not r["block1_out"].conflicting


def test_no_conflicting_layer():
    r = ConflictReport(layers=(LayerResult("a", 3, 0.0, 1.0),), num_samples=3, num_classes=2,
                       weight_amplitude=1.0, learning_rate=0.1, batch_size=1)
    assert r.first_conflicting is None and r.conflicting == [] and r.epoch is None


def test_unknown_name_lists_the_layers():
    with pytest.raises(KeyError, match=r"no layer 'x'.*available: \['conv1', 'block1_branch'"):
        report()["x"]


def test_empty_report_is_an_error():
    with pytest.raises(ValueError, match="at least one layer"):
        ConflictReport(layers=(), num_samples=1, num_classes=2, weight_amplitude=1.0,
                       learning_rate=0.1, batch_size=1)


def test_dict_round_trip_keeps_everything():
    data = report().to_dict()
    assert data["epoch"] == 3 and data["batch_size"] == 64
    assert data["layers"][1] == {"name": "block1_branch", "num_bundles": 40,
                                 "bundle_entropy": 0.25, "max_accuracy": 0.9,
                                 "diverged": False, "conflicting": True}
    assert data["layers"][2]["bundle_entropy"] is None  # NaN is not JSON
    assert ConflictReport.from_dict(data).to_dict() == data


def test_json_round_trip_is_strict_json(tmp_path):
    path = tmp_path / "sub" / "report.json"
    report().save_json(path)
    assert "NaN" not in path.read_text()
    json.loads(path.read_text(), parse_constant=pytest.fail)
    loaded = ConflictReport.load_json(path)
    assert loaded.to_dict() == report().to_dict()
    assert math.isnan(loaded["block1_out"].bundle_entropy)


def test_non_finite_weight_amplitude_round_trips(tmp_path):
    data = {**report().to_dict(), "weight_amplitude": None}
    diverged = ConflictReport.from_dict(data)
    assert math.isnan(diverged.weight_amplitude)
    diverged.save_json(tmp_path / "r.json")
    assert ConflictReport.load_json(tmp_path / "r.json").to_dict() == data


def test_csv_round_trip_of_several_epochs(tmp_path):
    path = tmp_path / "conflicts.csv"
    reports = [report(epoch=0), report(epoch=1), report(epoch=None)]
    write_csv(reports, path)
    header = path.read_text().splitlines()[0]
    assert header == ("epoch,index,layer,num_bundles,bundle_entropy,max_accuracy,conflicting,"
                      "diverged,num_samples,num_classes,weight_amplitude,learning_rate,"
                      "batch_size")
    assert [r.to_dict() for r in read_csv(path)] == [r.to_dict() for r in reports]
    report().save_csv(path)
    assert [r.to_dict() for r in read_csv(path)] == [report().to_dict()]


def test_csv_floats_are_exact(tmp_path):
    value = 0.1 + 0.2  # not representable in a short decimal
    r = ConflictReport(layers=(LayerResult("a", 2, value, 0.5),), num_samples=2, num_classes=2,
                       weight_amplitude=value, learning_rate=1e-3, batch_size=3)
    r.save_csv(tmp_path / "r.csv")
    assert read_csv(tmp_path / "r.csv")[0] == r


def test_reading_a_foreign_csv_says_what_is_missing(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="is not a ConflictReport CSV: it needs the columns"):
        read_csv(path)


def test_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing keys \['num_classes', 'layers'\]"):
        ConflictReport.from_dict({"num_samples": 1, "weight_amplitude": 1.0,
                                  "learning_rate": 0.1, "batch_size": 1, "epoch": None})


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    broken = ConflictReport(layers=(LayerResult("a", 1, 0.0, 1.0),), num_samples=1,
                            num_classes=2, weight_amplitude=1.0, learning_rate=0.1,
                            batch_size=object())  # not JSON serialisable
    with pytest.raises(TypeError):
        broken.save_json(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "conflicts.png"
    report().plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    many = ConflictReport(layers=tuple(LayerResult(f"layer{i}", i + 1, 0.01 * i, 1.0)
                                       for i in range(120)),
                          num_samples=512, num_classes=10, weight_amplitude=1.0,
                          learning_rate=1e-3, batch_size=64)
    many.plot(tmp_path / "many.png", title="120 layers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.png", "plots"]
