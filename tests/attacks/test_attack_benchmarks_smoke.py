"""The attack benchmarks' --smoke sizes run and write their JSON with the papers' rows beside ours."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import attack_cifar  # noqa: E402
import attack_mnist  # noqa: E402
import pytest  # noqa: E402
from _script import run_script  # noqa: E402

from ._mini_data import build_mini_root  # noqa: E402


@pytest.fixture(scope="module")
def mini_root(data_root, tmp_path_factory):
    """The first images of the real MNIST / CIFAR-10 files: the smoke runs stay in seconds."""
    return build_mini_root(data_root, tmp_path_factory.mktemp("mini-data"))


def test_mnist_benchmark_smoke(mini_root, session_cache, tmp_path, capsys):
    out = tmp_path / "mnist.json"
    attack_mnist.main(["--smoke", "--data-dir", str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu",
                       "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert "MNIST / net4 (untargeted, preset smoke)" in printed and "paper" in printed
    result = json.loads(out.read_text())
    # each meta-attack row names its ranking (ours by default), so rows of runs with either can share a table
    assert [(r["method"], r.get("settings")) for r in result["rows"]] == [("lazy-meta", "skip_blocked"), ("meta", "skip_blocked")]
    assert all(r["n_images"] == 2 for r in result["rows"])
    assert {(r["method"], r["mean_queries"]) for r in result["paper"]} == {("meta", 749), ("lazy-meta", 566)}


def test_mnist_benchmark_smoke_with_du_et_al_ranking(mini_root, session_cache, tmp_path, capsys):
    out = tmp_path / "mnist-du.json"
    # --zoo and --no-skip-blocked go to the meta-attacks only (the CLI refuses them for a baseline)
    attack_mnist.main(["--smoke", "--methods", "lazy-meta,bandits", "--no-skip-blocked", "--zoo", "lenet5,net2,net3", "--data-dir", str(mini_root),
                       "--cache-dir", str(session_cache), "--device", "cpu", "--json", str(out), "--quiet"])
    assert "no_skip_blocked" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [(r["method"], r.get("settings")) for r in result["rows"]] == [("lazy-meta", "no_skip_blocked"), ("bandits", None)]


def test_mnist_benchmark_smoke_with_the_maml_family(mini_root, session_cache, tmp_path):
    out = tmp_path / "mnist-maml.json"
    attack_mnist.main(["--smoke", "--meta-family", "maml", "--data-dir", str(mini_root), "--cache-dir",
                       str(session_cache), "--device", "cpu", "--json", str(out), "--quiet"])
    result = json.loads(out.read_text())
    assert [(r["method"], r.get("settings")) for r in result["rows"]] == [
        ("lazy-meta", "skip_blocked,meta_training=lazy-maml"), ("meta", "skip_blocked,meta_training=maml")]
    assert result["config"]["meta_family"] == "maml" and "meta_training" not in result["config"]


def test_cifar_benchmark_smoke(mini_root, session_cache, tmp_path, capsys):
    out = tmp_path / "cifar.json"
    # the smallest CIFAR nets keep this in seconds; the script and pipeline are the benchmark's own
    attack_cifar.main(["--smoke", "--methods", "lazy-meta", "--zoo", "vgg11", "--target", "resnet32", "--n-images", "1", "--data-dir",
                       str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu", "--json", str(out), "--quiet"])
    assert "CIFAR-10 / resnet18" in capsys.readouterr().out  # the benchmark's title
    result = json.loads(out.read_text())
    assert result["config"]["dataset"] == "cifar10" and result["config"]["zoo"] == ["vgg11"]
    assert result["rows"][0]["n_images"] == 1
    # Algorithm 3's student explores k = 10 steps on CIFAR-10 (8 on MNIST): the cached meta-attacker says so
    saved = [json.loads(p.read_text()) for p in (session_cache / "meta_attackers").glob("*-lazy-meta-*.pt.json")]
    steps = {m["name"].split("-")[0]: m["settings"]["inner_steps"] for m in saved}
    assert steps["cifar10"] == 10 and steps.get("mnist", 8) == 8


@pytest.mark.parametrize("count", ["0", "-2"])
def test_an_image_count_below_one_is_one_clear_error_before_any_work(count, mini_root, tmp_path, capsys):
    """-2 once sliced the selection from its end (345 images attacked); 0 ended in a traceback."""
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as exited:  # as `python benchmarks/attack_mnist.py ...` runs it
        run_script(lambda: attack_mnist.main(["--smoke", "--n-images", count, "--methods", "bandits", "--max-queries", "3",
                                              "--data-dir", str(mini_root), "--cache-dir", str(cache), "--device", "cpu",
                                              "--json", str(tmp_path / "r.json"), "--quiet"]),
                   allocator=False)  # (the test process's malloc settings stay as they are)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"Error: --n-images: must be at least 1, got {count}"] and not captured.out
    assert not (tmp_path / "r.json").exists() and not cache.exists()  # no target trained, nothing written


@pytest.mark.parametrize("argv, message", [
    (["--methods", ""], "--methods: expected at least one attack method"),  # once printed the paper's rows alone
    (["--methods", "lazy-meta,nosuch"], "--methods: unknown attack method 'nosuch'; valid: bandits, boundary, hsja,"),
    (["--seed", "-1"], "--seed: must be in 0..4294967295, got -1"),  # the CLI's range
    (["--max-queries", "0"], "--max-queries: must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_any_work(argv, message, tmp_path, capsys):
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as exited:
        attack_mnist.main(["--smoke", "--cache-dir", str(cache), "--json", str(tmp_path / "r.json"), *argv])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"Error: {message}") and len(captured.err.strip().splitlines()) == 1 and not captured.out
    assert not (tmp_path / "r.json").exists() and not cache.exists()
