import csv
import json

from lazyapps.results import format_table, make_result, write_csv, write_result


def test_result_object_has_the_documented_keys(tmp_path):
    result = make_result("zoo train", {"arch": "net4"}, {"accuracy": 0.98}, 1.23456)
    assert set(result) == {"command", "config", "metrics", "versions", "elapsed_s"}
    assert result["elapsed_s"] == 1.235 and "torch" in result["versions"]
    write_result(tmp_path / "r.json", result)
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == {"accuracy": 0.98}


def test_table_aligns_columns():
    table = format_table([{"name": "net4", "acc": 0.98765}, {"name": "lenet5", "acc": 1}], title="T")
    lines = table.splitlines()
    assert lines[0] == "T"
    assert lines[1].split() == ["name", "acc"]
    assert lines[3].startswith("net4  ") and lines[3].endswith("0.9877")
    assert len({len(line) for line in lines[1:]}) == 1


def test_table_puts_prose_columns_flush_left():
    rows = [{"algo": "maml", "description": "Short.", "n": 1}, {"algo": "x", "description": "A much longer one.", "n": 10}]
    lines = format_table(rows, left=("description",)).splitlines()
    assert lines[2] == "maml  Short.               1"
    assert lines[3] == "x     A much longer one.  10"


def test_csv(tmp_path):
    write_csv(tmp_path / "a.csv", [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    with open(tmp_path / "a.csv") as handle:
        assert list(csv.DictReader(handle)) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_a_failed_write_keeps_the_previous_result(tmp_path):
    import pytest

    path = tmp_path / "r.json"
    write_result(path, make_result("zoo train", {}, {"accuracy": 0.5}, 1.0))
    before = path.read_text()
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot be shown")

    with pytest.raises(RuntimeError, match="cannot be shown"):  # fails half-way through serialising
        write_result(path, make_result("zoo train", {}, {"accuracy": 0.7, "bad": Unprintable()}, 1.0))
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_table_shows_missing_values_as_a_dash():
    lines = format_table([{"k": "a", "x": None}, {"k": "b", "x": 2.0}]).splitlines()
    assert lines[2].split() == ["a", "-"]


def test_csv_writes_the_given_columns_in_their_order_and_leaves_other_keys_out(tmp_path):
    write_csv(tmp_path / "a.csv", [{"a": 1, "b": 2, "extra": 9}, {"b": 4, "a": 3}], ["b", "a"])
    assert (tmp_path / "a.csv").read_text().splitlines() == ["b,a", "2,1", "4,3"]


def test_result_keeps_extra_entries():
    result = make_result("zoo train", {}, {}, 0.5, path="/cache/zoo/net4.pt")
    assert result["path"] == "/cache/zoo/net4.pt"


def test_table_is_as_wide_as_a_header_longer_than_its_values():
    lines = format_table([{"k": "a", "top1_error": 1}]).splitlines()
    assert lines == ["k  top1_error", "-  ----------", "a           1"]
