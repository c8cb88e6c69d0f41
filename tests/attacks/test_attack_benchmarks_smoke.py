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
    assert result["benchmark"] == "attack_mnist"


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
    # the title names the target attacked, and whose the paper's rows beside it are
    assert "CIFAR-10 / resnet32 (untargeted, preset smoke; the paper's rows: resnet18)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["benchmark"] == "attack_cifar"  # (the script's name, not the caller's: here pytest's)
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


def _fake_run_attack(monkeypatch, json_out=None):
    """attacks.cli.run_attack replaced by a recorder: the driver's own bookkeeping runs in milliseconds."""
    import attacks.cli
    import torch

    calls = []

    def run_attack(ctx, *, target_spec, targeted, method, zoo_spec, preset, overrides, images, skip_blocked, meta_training):
        # what the JSON held when this method started (written after every finished method)
        saved = json.loads(json_out.read_text())["rows"] if json_out is not None and json_out.exists() else []
        calls.append({"method": method, "target": target_spec, "images": images, "zoo": zoo_spec, "skip_blocked": skip_blocked, "targeted": targeted,
                      "meta_training": meta_training, "overrides": overrides, "draw": torch.rand(1).item(), "saved": len(saved)})
        if images is None:  # one image fewer than asked was correctly classified
            n = overrides["n_images"] - 1
            images = (torch.zeros(n, 1, 28, 28), torch.arange(n) % 10, list(range(n)))
        meta = meta_training is not None
        config = {"method": method, "dataset": "mnist", "preset": preset,
                  **({"skip_blocked": skip_blocked, "meta_training": meta_training} if meta else {"baseline": {"of": method}})}
        row = {"method": method, "success_rate": 0.5, "mean_l2": 1.0, "mean_queries": 10.0, "median_queries": 10.0, "wall_s": 0.0}
        return {"outcome": None, "config": config, "row": row, "test_index": images[2], "images": images}

    monkeypatch.setattr(attacks.cli, "run_attack", run_attack)
    return calls


def test_every_method_attacks_the_same_images_from_the_same_seed(monkeypatch, tmp_path, capsys):
    """The driver's bookkeeping: same images and seed per method, per-method options, JSON after every method."""
    out = tmp_path / "r.json"
    calls = _fake_run_attack(monkeypatch, out)
    attack_mnist.main(["--methods", "lazy-meta,bandits,meta,nes", "--n-images", "3", "--zoo", "lenet5", "--seed", "7",
                       "--no-skip-blocked", "--json", str(out), "--quiet"])
    assert [c["method"] for c in calls] == ["lazy-meta", "bandits", "meta", "nes"]
    assert calls[0]["images"] is None and all(c["images"] is calls[1]["images"] for c in calls[1:])
    assert len({c["draw"] for c in calls}) == 1  # each method starts from --seed, not from where the last one left off
    assert all(c["overrides"] == {"n_images": 3, "max_queries": None} and c["targeted"] is False for c in calls)
    assert {c["target"] for c in calls} == {"net4"}  # the paper's target, whose numbers the table shows
    # --zoo, the ranking and the meta-training go to the meta-attacks only
    assert [(c["zoo"], c["skip_blocked"], c["meta_training"]) for c in calls] == [
        ("lenet5", False, "lazy-reptile"), (None, False, None), ("lenet5", False, "reptile"), (None, False, None)]
    assert [c["saved"] for c in calls] == [0, 1, 2, 3]  # a run stopped part-way keeps the methods it finished
    result = json.loads(out.read_text())
    assert [r["n_images"] for r in result["rows"]] == [2] * 4  # the images attacked, not the count asked for
    assert result["config"]["baselines"] == {"bandits": {"of": "bandits"}, "nes": {"of": "nes"}}
    # our rows, then the paper's rows of the same setting only, in one table
    assert [(r["method"], r["mean_queries"]) for r in result["paper"]] == [("meta", 749), ("lazy-meta", 566)]
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "MNIST / net4 (untargeted, preset quick)" and "settings" in table[1]
    assert [line.split()[:2] for line in table[3:]] == [["ours", m] for m in ("lazy-meta", "bandits", "meta", "nes")] + [
        ["paper", "meta"], ["paper", "lazy-meta"]]


def test_another_target_is_the_one_attacked(monkeypatch, tmp_path):
    calls = _fake_run_attack(monkeypatch)
    attack_mnist.main(["--methods", "bandits", "--target", "net3", "--json", str(tmp_path / "r.json"), "--quiet"])
    attack_cifar.main(["--methods", "bandits", "--target", "resnet32", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert [c["target"] for c in calls] == ["net3", "resnet32"]


def test_a_targeted_run_is_printed_beside_the_papers_targeted_rows(monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.json"
    calls = _fake_run_attack(monkeypatch)
    attack_cifar.main(["--methods", "lazy-meta", "--targeted", "--meta-family", "maml", "--max-queries", "50",
                       "--json", str(out), "--quiet"])
    assert calls[0]["targeted"] is True and calls[0]["meta_training"] == "lazy-maml" and calls[0]["skip_blocked"] is True
    assert calls[0]["overrides"]["max_queries"] == 50 and calls[0]["target"] == "resnet18"
    result = json.loads(out.read_text())
    assert [(r["source"], r["method"], r["mean_queries"]) for r in result["paper"]] == [("paper", "lazy-meta", 3092)]
    assert result["rows"][0]["settings"] == "skip_blocked,meta_training=lazy-maml"
    assert result["config"]["meta_family"] == "maml" and "meta_training" not in result["config"]
    assert capsys.readouterr().out.startswith("CIFAR-10 / resnet18 (targeted, preset quick)\n")
