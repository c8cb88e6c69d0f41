"""lazyapps compare: saved results lined up by dotted key, the differing settings only, clear refusals."""
import csv
import json

import pytest
from click.testing import CliRunner

from lazyapps.cli import cli
from lazyapps.compare import MAX_LIST, compare, flatten, labels, load_result
from lazyapps.errors import LazyAppsError
from lazyapps.results import make_result, write_result


def result(config, metrics, command="longtail train", elapsed=1.0):
    return make_result(command, config, metrics, elapsed)


def test_flatten_makes_dotted_keys_joins_short_lists_and_names_what_it_leaves_out():
    cells, left_out = flatten({
        "lr": 0.1, "gammas": [0.75, 0.8], "hparams": {"inner": {"steps": 5}, "first_order": False},
        "counts": list(range(MAX_LIST + 1)), "per_class": [{"class": 0}], "note": None,
    })
    assert cells == {"lr": 0.1, "gammas": "0.75,0.8", "hparams.inner.steps": 5, "hparams.first_order": False, "note": None}
    assert left_out == ["counts", "per_class"]


def test_compare_shows_only_the_settings_that_differ_and_every_result():
    a = result({"method": "ce", "lr": 0.1, "seed": 0}, {"best": {"top1_error": 30.0}, "epoch_s": 2.0}, elapsed=10.0)
    b = result({"method": "lazy-two-component", "lr": 0.1, "seed": 0, "inner_steps": 5},
               {"best": {"top1_error": 25.5}, "meta_epoch_s": 9.0}, elapsed=40.0)
    table = compare([a, b], ["a", "b"])
    assert table["settings"] == [{"key": "method", "a": "ce", "b": "lazy-two-component"},
                                 {"key": "inner_steps", "a": None, "b": 5}]  # lr and seed agree; one run lacks inner_steps
    assert table["results"] == [{"key": "best.top1_error", "a": 30.0, "b": 25.5},
                                {"key": "epoch_s", "a": 2.0, "b": None},
                                {"key": "meta_epoch_s", "a": None, "b": 9.0},
                                {"key": "elapsed_s", "a": 10.0, "b": 40.0}]
    everything = compare([a, b], ["a", "b"], all_settings=True)["settings"]
    assert [row["key"] for row in everything] == ["method", "lr", "seed", "inner_steps"]


def test_compare_names_the_commands_when_they_differ_and_refuses_clashing_columns():
    a, b = result({}, {}, command="longtail train"), result({}, {}, command="longtail eval")
    assert compare([a, b], ["a", "b"])["settings"] == [{"key": "command", "a": "longtail train", "b": "longtail eval"}]
    assert compare([a, a], ["a", "b"])["settings"] == []
    with pytest.raises(ValueError, match="one distinct column name per result"):
        compare([a, b], ["x", "x"])
    with pytest.raises(ValueError, match="'key'"):
        compare([a, b], ["key", "b"])
    with pytest.raises(ValueError, match="'section'"):
        compare([a, b], ["section", "b"])


def test_labels_are_the_shortest_path_endings_that_tell_the_files_apart():
    assert labels(["runs/ce.json", "runs/lazy.json"]) == ["ce.json", "lazy.json"]
    assert labels(["x/a/result.json", "x/b/result.json"]) == ["a/result.json", "b/result.json"]
    assert labels(["r.json", "r.json"]) == ["1:r.json", "2:r.json"]  # the same file twice
    assert labels(["d/key", "d/other"]) == ["d/key", "d/other"]  # 'key' is the first column's name
    assert labels(["d/section", "d/other"]) == ["d/section", "d/other"]  # and 'section' the CSV's
    assert labels(["section", "other"]) == ["1:section", "2:other"]


@pytest.mark.parametrize("text, message", [
    ("[1", "not valid JSON"),
    ("[1, 2]", "not a lazyapps result"),
    ('{"command": "x", "config": {}}', "not a lazyapps result"),
    ('{"command": "x", "config": [], "metrics": {}}', "its 'config' is not an object"),
    ('{"command": "x", "config": {}, "metrics": [1]}', "its 'metrics' is not an object"),
])
def test_load_result_refuses_files_that_are_not_results(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(LazyAppsError, match=message) as info:
        load_result(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_compare_command_on_results_written_by_a_real_command(tmp_path):
    runner = CliRunner()
    for family in ("mnist", "cifar"):
        out = runner.invoke(cli, ["zoo", "list", "--family", family, "--json", str(tmp_path / f"{family}.json")])
        assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["compare", str(tmp_path / "mnist.json"), str(tmp_path / "cifar.json"),
                              "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json")])
    assert out.exit_code == 0, out.output
    assert "settings that differ" in out.output
    family_line = next(line for line in out.output.splitlines() if line.startswith("family"))
    assert family_line.split() == ["family", "mnist", "cifar"]
    with open(tmp_path / "c.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {"section": "setting", "key": "family", "mnist.json": "mnist", "cifar.json": "cifar"}
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["command"] == "compare" and saved["metrics"]["columns"] == ["mnist.json", "cifar.json"]


def test_compare_command_refuses_in_one_line(tmp_path):
    good = tmp_path / "good.json"
    write_result(good, result({"lr": 0.1}, {"acc": 1.0}))
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe\x00garbage")
    out = CliRunner().invoke(cli, ["compare", str(good), str(tmp_path / "bad.json")])
    assert out.exit_code == 2
    assert out.output.strip().splitlines()[-1] == f"Error: {tmp_path / 'bad.json'}: not a text file; compare takes the JSON files that --json writes"
    assert CliRunner().invoke(cli, ["compare", str(tmp_path / "missing.json")]).exit_code == 2
    assert CliRunner().invoke(cli, ["compare"]).exit_code == 2


def test_lists_left_out_of_settings_and_results_are_named_and_a_list_of_max_length_is_one_cell(tmp_path):
    cells, left_out = flatten({"counts": list(range(MAX_LIST))})
    assert cells == {"counts": ",".join(map(str, range(MAX_LIST)))} and left_out == []
    # an empty list is a cell of its own, not a blank that reads as a missing value
    assert flatten({"gammas": [], "names": [""]})[0] == {"gammas": "[]", "names": ""}
    # a null inside a list shows as the table's "-", a float as it was written
    assert flatten({"mixed": [None, 0.1 + 0.2, True]})[0] == {"mixed": "-,0.3,True"}
    assert compare([result({"gammas": []}, {}), result({}, {})], ["a", "b"])["settings"] == [{"key": "gammas", "a": "[]", "b": None}]
    a = result({"schedule": [{"epoch": 1}]}, {"per_class": [{"class": 0}], "acc": 1.0})
    b = result({"schedule": [{"epoch": 2}]}, {"per_class": [{"class": 1}], "acc": 0.5})
    table = compare([a, b], ["a", "b"])
    assert table["left_out"] == ["config.schedule", "metrics.per_class"]
    from lazyapps.compare import format_comparison

    assert format_comparison(table).splitlines()[-1] == "not shown (lists; see the files): config.schedule, metrics.per_class"
    # a setting one run lacks and the other sets to null is the same ("-" in both columns): not a difference;
    # one that another run sets to a value is
    table = compare([result({"x": None}, {}), result({}, {})], ["a", "b"])
    assert table["settings"] == []
    table = compare([result({"x": 3}, {}), result({}, {})], ["a", "b"])
    assert table["settings"] == [{"key": "x", "a": 3, "b": None}]


def test_compare_command_all_and_csv_keep_every_setting_and_every_result(tmp_path):
    a, b = tmp_path / "a" / "r.json", tmp_path / "b" / "r.json"
    a.parent.mkdir()
    b.parent.mkdir()
    write_result(a, result({"lr": 0.1, "seed": 0, "out": None}, {"best": {"top1_error": 30.0}}, elapsed=1.0))
    write_result(b, result({"lr": 0.1, "seed": 1}, {"best": {"top1_error": 25.5}}, elapsed=2.0))
    runner = CliRunner()
    differ = runner.invoke(cli, ["compare", str(a), str(b), "--json", str(tmp_path / "d.json")])
    assert differ.exit_code == 0, differ.output
    # seed differs; "out" is a setting only one run has, null there: the same as absent
    assert [row["key"] for row in json.loads((tmp_path / "d.json").read_text())["metrics"]["settings"]] == ["seed"]
    assert "settings that differ" in differ.output
    every = runner.invoke(cli, ["compare", str(a), str(b), "--all", "--csv", str(tmp_path / "c.csv")])
    assert every.exit_code == 0, every.output
    assert "settings that differ" not in every.output and every.output.startswith("settings\n")
    assert any(line.split() == ["lr", "0.1", "0.1"] for line in every.output.splitlines())
    with open(tmp_path / "c.csv", newline="") as handle:
        rows = [(r["section"], r["key"], r["a/r.json"], r["b/r.json"]) for r in csv.DictReader(handle)]
    assert rows == [("setting", "lr", "0.1", "0.1"), ("setting", "seed", "0", "1"), ("setting", "out", "", ""),
                    ("result", "best.top1_error", "30.0", "25.5"), ("result", "elapsed_s", "1.0", "2.0")]
