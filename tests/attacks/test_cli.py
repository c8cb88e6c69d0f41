"""``lazyapps attack`` end to end on real MNIST images (a small root cut from the real files, smoke preset,
throw-away cache) and its bad-input messages."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from lazyapps.cli import cli

from ._mini_data import build_mini_root


def invoke(*args: str):
    return CliRunner().invoke(cli, ["attack", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def mini_root(data_root, tmp_path_factory):
    return build_mini_root(data_root, tmp_path_factory.mktemp("mini-data"))


@pytest.fixture(scope="module")
def smoke_run(mini_root, tmp_path_factory):
    """One untargeted smoke run that builds the whole pipeline into a cache of its own (other tests may
    already have built the same artefacts into the session cache, and this run must build them)."""
    out = tmp_path_factory.mktemp("attack-cli")
    cache = tmp_path_factory.mktemp("attack-cli-cache")
    args = ["--target", "net4", "--untargeted", "--preset", "smoke", "--data-dir", str(mini_root),
            "--cache-dir", str(cache), "--device", "cpu", "--json", str(out / "r.json"),
            "--per-image", str(out / "p.csv"), "--plot", str(out / "curve.png")]
    result = invoke(*args)
    return result, out, args, cache


def test_smoke_run_end_to_end(smoke_run):
    result, out, _, _ = smoke_run
    assert result.exit_code == 0, result.output
    assert "lazy-meta attack on net4 (mnist, untargeted, 2 images, budget 1000)" in result.stdout
    assert "success_rate" in result.stdout and "mean_queries" in result.stdout
    for step in ("target net4 (mnist)", "zoo lenet5 (mnist)", "zoo net2", "zoo net3", "gradient set lenet5",
                 "meta-attacker lazy-meta: meta-trained (lazy-reptile"):
        assert step in result.stderr
    saved = json.loads((out / "r.json").read_text())
    assert saved["command"] == "attack" and saved["metrics"]["n_images"] == 2
    assert saved["config"]["zoo"] == ["lenet5", "net2", "net3"] and saved["config"]["dataset"] == "mnist"
    rows = list(csv.DictReader((out / "p.csv").open()))
    assert len(rows) == 2 and all(int(r["queries"]) <= 1000 for r in rows)
    assert [int(r["test_index"]) for r in rows] == sorted(int(r["test_index"]) for r in rows)
    assert (out / "curve.png").stat().st_size > 0


def test_rerun_loads_from_cache_and_rebuilds_a_corrupt_file_with_a_warning(smoke_run):
    _, out, args, cache = smoke_run
    first = (out / "p.csv").read_text()
    files = sorted((cache / "meta_attackers").glob("mnist-lazy-meta-*.pt"))
    assert files
    files[0].write_bytes(b"not a checkpoint")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (out / "p.csv").read_text() == first  # same images, queries and L2 as the run that built everything
    assert "gradient set net3: 64 maps loaded from cache" in result.stderr
    assert "zoo net2 (mnist): loaded from cache" in result.stderr
    assert "warning:" in result.stderr and "rebuilding it" in result.stderr
    assert "meta-attacker lazy-meta: meta-trained" in result.stderr


def test_a_zoo_checkpoint_file_of_a_zoo_architecture_is_no_blackbox_target(smoke_run):
    _, _, args, cache = smoke_run
    net2 = sorted((cache / "zoo").glob("net2-mnist-*.pt"))[0]  # the very model the whitebox zoo differentiates
    result = invoke(*[a if a != "net4" else str(net2) for a in args])
    assert result.exit_code == 2 and "the target 'net2' is in the default whitebox zoo (lenet5, net2, net3)" in result.output


def test_a_zoo_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    from attacks import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net4").mkdir()
    assert not pipeline.is_user_model("net4") and pipeline.infer_dataset("net4") == "mnist"
    assert pipeline.is_user_model("net4/") and pipeline.is_user_model("net4:w.pt")


def test_skip_blocked_is_the_default_is_recorded_and_changes_no_cached_artefact(smoke_run):
    _, out, args, cache = smoke_run
    before = sorted(p.name for p in cache.rglob("*") if p.is_file())
    plain = json.loads((out / "r.json").read_text())
    assert plain["config"]["skip_blocked"] is True and plain["config"]["meta_training"] == "lazy-reptile"
    json_at = args.index("--json") + 1
    result = invoke(*args[:json_at], str(out / "du.json"), "--no-skip-blocked", "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "du.json").read_text())
    assert saved["config"]["skip_blocked"] is False and saved["metrics"]["n_images"] == 2
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before  # an attack option: nothing rebuilt


def test_meta_training_lazy_maml_builds_its_own_attacker_and_is_recorded(smoke_run, tmp_path):
    _, out, args, cache = smoke_run
    reptile_attackers = sorted((cache / "meta_attackers").glob("mnist-lazy-meta-*.pt"))
    json_at = args.index("--json") + 1
    result = invoke(*args[:json_at], str(tmp_path / "lazy-maml.json"), "--meta-training", "lazy-maml")
    assert result.exit_code == 0, result.output
    assert "meta-attacker lazy-meta: meta-trained (lazy-maml, 2 iterations of 8 inner steps)" in result.stderr
    assert "gradient set net3: 64 maps loaded from cache" in result.stderr  # only the attacker is new
    saved = json.loads((tmp_path / "lazy-maml.json").read_text())
    assert saved["config"]["meta_training"] == "lazy-maml" and saved["metrics"]["n_images"] == 2
    attackers = sorted((cache / "meta_attackers").glob("mnist-lazy-meta-*.pt"))
    assert len(attackers) == len(reptile_attackers) + 1 and set(reptile_attackers) < set(attackers)


def test_targeted_run_reaches_for_the_target_class(mini_root, session_cache, tmp_path):
    result = invoke("--target-class", "3", "--preset", "smoke", "--data-dir", str(mini_root), "--cache-dir",
                    str(session_cache), "--device", "cpu", "--per-image", str(tmp_path / "p.csv"), "--quiet",
                    "--method", "nes")
    assert result.exit_code == 0, result.output
    assert "targeted" in result.stdout
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert all(r["target"] == "3" and r["label"] != "3" for r in rows)


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "nonet"], "unknown model 'nonet'"),
    (["--zoo", "lenet5,bogus"], "unknown zoo model 'bogus'"),
    (["--zoo", "lenet5,net4"], "the target 'net4' is in the whitebox zoo (lenet5, net4); a blackbox target must be held "
                               "out: drop it from --zoo"),
    (["--target", "lenet5"], "the target 'lenet5' is in the default whitebox zoo (lenet5, net2, net3); a blackbox target "
                             "must be held out: pass a zoo without it, e.g. --zoo net2,net3"),
    (["--zoo", "vgg13"], "zoo model 'vgg13' is for cifar10"),
    (["--max-queries", "0"], "--max-queries (the query budget per image) must be at least 1, got 0"),
    (["--max-queries", str(2**63)], f"--max-queries (the query budget per image) must be at most {2**63 - 1:,}, got {2**63}"),
    (["--n-images", "0"], "--n-images must be at least 1"),
    (["--untargeted", "--target-class", "2"], "--target-class is for targeted attacks"),
    (["--target-class", "10"], "--target-class 10 is out of range"),
    (["--target-class", "-1"], "--target-class -1 is out of range: mnist has classes 0..9"),
    (["--target", "missing.pt"], "does not exist"),
    (["--method", "zoo", "--skip-blocked"], "--skip-blocked is an option of the meta-attacks"),
    (["--method", "bandits", "--no-skip-blocked"], "--no-skip-blocked is an option of the meta-attacks"),
    (["--method", "nes", "--meta-training", "maml"], "--meta-training is an option of the meta-attacks"),
    (["--meta-training", "maml"], "--meta-training maml does not train a lazy-meta attacker; lazy-meta takes lazy-reptile or lazy-maml"),
    (["--method", "meta", "--meta-training", "lazy-reptile"], "meta takes reptile or maml"),
    (["--zoo", ""], "--zoo needs at least one model name"),
    (["--method", "zoo", "--zoo", "lenet5"], "--zoo is the whitebox zoo the meta-attacks learn from (lazy-meta, meta); zoo does not use one"),
    (["--target", "net4:"], "'net4:' names no file after 'net4:'; give ARCH:STATE_DICT_PATH"),
])
def test_bad_input_is_one_clear_line(args, message, mini_root, tmp_path):
    result = CliRunner().invoke(cli, ["attack", *args, "--preset", "smoke", "--data-dir", str(mini_root),
                                      "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "zoo").exists()  # refused before the target (or any zoo model) was trained


def test_target_accepts_torchscript_and_arch_state_dict(mini_root, session_cache, tmp_path):
    """A user's own net4 as a TorchScript file and as ``net4:STATE_DICT``: same model, same images, same numbers."""
    import torch

    import models_zoo

    torch.manual_seed(0)
    net = models_zoo.create("net4").eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "mine.ts"))
    torch.save(net.state_dict(), tmp_path / "mine_sd.pt")
    runs = {}
    for spec in (str(tmp_path / "mine.ts"), f"net4:{tmp_path / 'mine_sd.pt'}"):
        out = tmp_path / f"{len(runs)}.json"
        result = invoke("--target", spec, "--method", "zoo", "--preset", "smoke", "--max-queries", "300",
                        "--data-dir", str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu",
                        "--seed", "3", "--json", str(out), "--per-image", str(tmp_path / f"{len(runs)}.csv"))
        assert result.exit_code == 0, result.output
        assert f"target {spec}: user model loaded" in result.stderr
        assert "Warning" not in result.stderr  # (torch's deprecation of TorchScript is not the user's business here)
        saved = json.loads(out.read_text())
        assert saved["config"]["target"] == spec and saved["config"]["dataset"] == "mnist"
        runs[spec] = list(csv.DictReader((tmp_path / f"{len(runs)}.csv").open()))
    # the selected images are the ones this net (not a zoo net4) classifies correctly
    with torch.no_grad():
        from lazyapps.data import load_dataset

        test = load_dataset("mnist", root=mini_root).test
        right = (net(test.images.float().div(255)).argmax(1) == test.labels).nonzero().flatten()[:2].tolist()
    first, second = runs.values()
    assert [int(r["test_index"]) for r in first] == right
    wrapped = invoke("--target", f"net4:{tmp_path / 'mine.ts'}", "--data-dir", str(mini_root), "--quiet")
    assert wrapped.exit_code == 2 and wrapped.output.strip().endswith("carries its own code, so pass it without 'net4:'")
    state = net.state_dict()
    state.pop("net.classifier.3.bias" if "net.classifier.3.bias" in state else list(state)[-1])
    torch.save(state, tmp_path / "short.pt")
    short = invoke("--target", f"net4:{tmp_path / 'short.pt'}", "--data-dir", str(mini_root), "--quiet")
    assert short.exit_code == 2 and "Missing key(s) in state_dict" in short.output
    assert [(r["test_index"], r["queries"], r["l2"]) for r in first] == [(r["test_index"], r["queries"], r["l2"]) for r in second]


@pytest.mark.parametrize("clash", [("--per-image", "--json"), ("--json", "--plot"), ("--per-image", "--plot")])
def test_outputs_that_name_the_same_file_are_refused_before_any_work(clash, mini_root, tmp_path):
    first, second = clash
    same = tmp_path / "same.png"  # (--plot takes only image extensions)
    result = CliRunner().invoke(cli, ["attack", "--preset", "smoke", first, str(same), second, f"{tmp_path}/./same.png",
                                      "--data-dir", str(mini_root), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("/same.png; give each output its own path")
    assert {first, second} == set(lines[0].split(" name the same file ")[0].removeprefix("Error: ").split(" and "))
    assert not same.exists() and not (tmp_path / "cache").exists()  # refused before the pipeline was built


def test_a_target_that_takes_one_image_at_a_time_is_one_clear_error(mini_root, tmp_path):
    """It passes the dataset probe (one image) and fails on the next batch it is sent: the 16 test images that tell
    whether it returns probabilities."""
    import torch

    class OneAtATime(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x.reshape(1, 784))

    torch.jit.save(torch.jit.script(OneAtATime()), str(tmp_path / "b1_ts.pt"))
    result = CliRunner().invoke(cli, ["attack", "--target", str(tmp_path / "b1_ts.pt"), "--method", "zoo", "--n-images", "2",
                                      "--max-queries", "500", "--data-dir", str(mini_root), "--cache-dir", str(tmp_path),
                                      "--device", "cpu", "--quiet", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "Error: the target failed on a batch of 16 images of shape (1, 28, 28) (RuntimeError: shape '[1, 784]' is invalid "
        "for input of size 12544); a target must classify (B, C, H, W) batches of any size B"]
    assert not (tmp_path / "r.json").exists()


def _table_row(stdout: str, method: str) -> dict[str, str]:
    """The result table's row of ``method`` as {column: printed value}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    row = next(line for line in lines[header:] if line.startswith(method))
    return dict(zip(lines[header].split(), row.split()))


def _assert_table_shows(stdout: str, method: str, metrics: dict) -> None:
    """The printed row holds the --json metrics, column by column (NaN, none succeeding, is null in the JSON)."""
    from lazyapps.results import _fmt

    printed = _table_row(stdout, method)
    keys = ("success_rate", "mean_l2", "mean_queries", "median_queries")
    assert {k: printed[k] for k in keys} == {k: _fmt(float("nan") if metrics[k] is None else metrics[k]) for k in keys}


def test_targeted_defaults_to_the_next_class_and_n_images_budget_and_seed_reach_the_attack(
        mini_root, session_cache, tmp_path, monkeypatch):
    import importlib

    from lazyapps.data import load_dataset

    score_attack = importlib.import_module("attacks.score_attack")
    seen = []
    real = score_attack.run_baseline

    def recording(method, blackbox, x, y, **kwargs):
        seen.append(kwargs)
        return real(method, blackbox, x, y, **kwargs)

    monkeypatch.setattr(score_attack, "run_baseline", recording)
    from attacks.outcome import AttackOutcome

    real_summary = AttackOutcome.summary  # distinct numbers in every column, so a column showing another's value shows
    monkeypatch.setattr(AttackOutcome, "summary", lambda self: {**real_summary(self), "mean_l2": 1.25, "mean_queries": 150.5,
                                                                "median_queries": 120.0})
    result = invoke("--targeted", "--method", "nes", "--n-images", "3", "--max-queries", "400", "--seed", "1", "--preset", "smoke",
                    "--data-dir", str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu", "--quiet",
                    "--json", str(tmp_path / "r.json"), "--per-image", str(tmp_path / "p.csv"))
    assert result.exit_code == 0, result.output
    assert "nes attack on net4 (mnist, targeted, 3 images, budget 400)" in result.stdout
    assert len(seen) == 1 and seen[0]["max_queries"] == 400 and seen[0]["estimator_settings"] == {"seed": 1}
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    labels = load_dataset("mnist", root=mini_root).test.labels
    assert len(rows) == 3 and all(int(r["target"]) == (int(r["label"]) + 1) % 10 for r in rows)  # (y + 1) mod 10
    assert all(int(labels[int(r["test_index"])]) == int(r["label"]) and int(r["queries"]) <= 400 for r in rows)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["config"]["targeted"] is True and saved["config"]["target_class"] is None
    assert (saved["config"]["n_images"], saved["config"]["max_queries"], saved["config"]["seed"]) == (3, 400, 1)
    # NES's own settings on MNIST (docs/attack_baselines.md), not the meta-attack's step, q, zoo... it never used
    assert saved["config"]["baseline"] == {"estimator": {"samples": 50, "sigma": 0.001}, "attack": {"update": "l2", "step_size": 0.2}}
    assert not {"step", "q", "every", "h", "zoo", "grad_images", "meta_iterations", "attack_batch"} & set(saved["config"])
    metrics = saved["metrics"]
    assert metrics["n_images"] == 3 and metrics["success_rate"] == sum(r["success"] == "True" for r in rows) / 3
    _assert_table_shows(result.stdout, "nes", metrics)


def test_target_class_rows_name_the_test_images_they_attacked(mini_root, session_cache, tmp_path):
    from lazyapps.data import load_dataset

    # MNIST's first test image is a 7: skipping class 7 shifts every later image's number in the filtered split
    result = invoke("--target-class", "7", "--method", "nes", "--n-images", "3", "--max-queries", "100", "--preset", "smoke",
                    "--data-dir", str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu", "--quiet",
                    "--per-image", str(tmp_path / "p.csv"))
    assert result.exit_code == 0, result.output
    labels = load_dataset("mnist", root=mini_root).test.labels
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 3 and all(r["target"] == "7" and int(labels[int(r["test_index"])]) == int(r["label"]) != 7 for r in rows)


def test_zoo_and_skip_blocked_reach_the_meta_attack(smoke_run, tmp_path, monkeypatch):
    import importlib

    meta_attack_module = importlib.import_module("attacks.meta_attack")  # (the package exports the function under this name)
    _, _, args, _ = smoke_run
    seen = []
    real = meta_attack_module.meta_attack

    def recording(*a, **kwargs):
        seen.append(kwargs)
        return real(*a, **kwargs)

    monkeypatch.setattr(meta_attack_module, "meta_attack", recording)
    json_at = args.index("--json") + 1
    result = invoke(*args[:json_at], str(tmp_path / "z.json"), "--zoo", "lenet5", "--skip-blocked", "--max-queries", "500",
                    "--n-images", "3")
    assert result.exit_code == 0, result.output
    assert "zoo lenet5 (mnist)" in result.stderr and "zoo net2" not in result.stderr and "gradient set net3" not in result.stderr
    assert len(seen) == 1 and seen[0]["skip_blocked"] is True and seen[0]["max_queries"] == 500
    from attacks.pipeline import PRESETS

    smoke = PRESETS["smoke"]["mnist"]  # the preset's attack settings, each to its own argument
    names = ("q", "every", "step", "h", "finetune_steps", "finetune_lr")
    assert {k: seen[0][k] for k in (*names, "batch_size")} == {**{k: smoke[k] for k in names}, "batch_size": smoke["attack_batch"]}
    saved = json.loads((tmp_path / "z.json").read_text())
    config = saved["config"]
    _assert_table_shows(result.stdout, "lazy-meta", saved["metrics"])
    assert saved["metrics"]["n_images"] == 3 and config["zoo"] == ["lenet5"] and config["skip_blocked"] is True and config["max_queries"] == 500


def test_the_presets_are_the_documented_ones():
    from attacks.pipeline import PRESETS

    documented = {  # docs/attack.md, "Presets": (grad_images, meta_iterations, n_images, max_queries) on MNIST, CIFAR-10
        "smoke": {"mnist": (64, 2, 2, 1000), "cifar10": (32, 1, 1, 300)},
        "quick": {"mnist": (3000, 300, 100, 10000), "cifar10": (1500, 150, 100, 10000)},
        "paper": {"mnist": (10000, 2000, 100, 10000), "cifar10": (10000, 2000, 100, 10000)},
    }
    for preset, by_dataset in documented.items():
        for dataset, numbers in by_dataset.items():
            s = PRESETS[preset][dataset]
            assert (s["grad_images"], s["meta_iterations"], s["n_images"], s["max_queries"]) == numbers, (preset, dataset)
            # Du et al.'s attack settings in every preset; 20 fine-tuning steps (smoke: 2)
            assert (s["q"], s["every"]) == ((128, 5) if dataset == "mnist" else (125, 3)) and (s["step"], s["h"]) == (0.01, 1e-4)
            assert s["finetune_steps"] == (2 if preset == "smoke" else 20) and s["finetune_lr"] == 1e-2
    zoo = {preset: {d: (s["zoo_epochs"], s["zoo_subset"], s["target_epochs"], s["target_subset"]) for d, s in by.items()}
           for preset, by in PRESETS.items()}
    assert zoo == {"smoke": {"mnist": (1, 512, 1, 1024), "cifar10": (1, 128, 1, 128)},
                   "quick": {"mnist": (1, None, 2, None), "cifar10": (2, 6000, 3, 6000)},
                   "paper": {"mnist": (None, None, None, None), "cifar10": (None, None, None, None)}}


def test_the_help_states_the_presets_defaults():
    from attacks.pipeline import PRESETS

    result = CliRunner().invoke(cli, ["attack", "--help"])
    text = " ".join(result.output.split())
    for option, key in (("--n-images", "n_images"), ("--max-queries", "max_queries")):
        by = {p: {d: f"{PRESETS[p][d][key]:,}" for d in ("mnist", "cifar10")} for p in PRESETS}
        assert len({by[p][d] for p in ("quick", "paper") for d in by[p]}) == 1  # (one number stated for these four)
        stated = (f"(default: the preset's; quick and paper {by['quick']['mnist']}, smoke {by['smoke']['mnist']} on MNIST / "
                  f"{by['smoke']['cifar10']} on CIFAR-10)")
        assert stated in text.split(option, 1)[1], option


def test_a_target_that_returns_probabilities_is_attacked_through_their_logarithm(mini_root, session_cache, tmp_path):
    """The attacks' losses are logit margins: a user's net4 ending in a softmax is attacked as the same net without it."""
    import torch

    import models_zoo

    torch.manual_seed(0)
    net = models_zoo.create("net4").eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "logits.ts"))
    torch.jit.save(torch.jit.script(torch.nn.Sequential(net, torch.nn.Softmax(dim=1))), str(tmp_path / "probs.ts"))
    rows = {}
    for name in ("logits", "probs"):
        result = invoke("--target", str(tmp_path / f"{name}.ts"), "--method", "zoo", "--preset", "smoke",
                        "--max-queries", "300", "--data-dir", str(mini_root), "--cache-dir", str(session_cache),
                        "--device", "cpu", "--seed", "3", "--per-image", str(tmp_path / f"{name}.csv"))
        assert result.exit_code == 0, result.output
        assert ("returns probabilities; attacked through their logarithm" in result.stderr) == (name == "probs")
        rows[name] = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
    assert [r["test_index"] for r in rows["probs"]] == [r["test_index"] for r in rows["logits"]]
    assert [r["success"] for r in rows["probs"]] == [r["success"] for r in rows["logits"]]
    # (the finite differences of log-softmax margins round otherwise than the logits', so L2 may differ a little)
    assert [int(r["queries"]) for r in rows["probs"]] == [int(r["queries"]) for r in rows["logits"]]


def test_a_target_class_meta_attack_learns_from_gradients_towards_that_class(smoke_run, mini_root, session_cache, tmp_path):
    """The meta-attacker of ``--target-class 3`` is trained on margins towards 3, not on the default (y + 1) mod C."""
    args = ["--preset", "smoke", "--data-dir", str(mini_root), "--cache-dir", str(session_cache), "--device", "cpu"]
    result = invoke("--target-class", "3", *args, "--per-image", str(tmp_path / "p.csv"))
    assert result.exit_code == 0, result.output
    sets = sorted(p.name for p in session_cache.rglob("*-to3-*.pt"))
    assert len(sets) == 3 and all("-targeted-to3" in name for name in sets), sets  # the three zoo models'
    assert "meta-attacker lazy-meta: meta-trained" in result.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows and all(r["target"] == "3" for r in rows)


def test_per_image_csv_and_json_hold_the_documented_fields_and_agree(smoke_run):
    """--per-image has docs/attack.md's header, and the --json metrics (with the attack's wall time, a column of
    the printed table) are those of the per-image rows."""
    result, out, _, _ = smoke_run
    with (out / "p.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["image", "test_index", "label", "target", "success", "queries", "l2", "first_success"]
    assert [r["image"] for r in rows] == ["0", "1"] and all(r["target"] == "" and r["first_success"] == "" for r in rows)
    metrics = json.loads((out / "r.json").read_text())["metrics"]
    ok = [r for r in rows if r["success"] == "True"]
    assert (metrics["n_images"], metrics["n_success"]) == (len(rows), len(ok))
    assert metrics["total_queries"] == sum(int(r["queries"]) for r in rows)
    # (a later test reruns these arguments, rewriting both files; the printed table is the first run's)
    assert isinstance(metrics["wall_s"], float) and metrics["wall_s"] >= 0 and "wall_s" in _table_row(result.stdout, "lazy-meta")


def test_seed_and_device_reach_every_step_of_the_meta_attack_pipeline(mini_root, tmp_path, monkeypatch):
    """--seed 5 trains the target, each zoo model, each gradient set and the meta-attacker with seed 5 (not only the
    attack): each step is stubbed to record what it was given, and the run stops at the meta-attacker."""
    import types
    from pathlib import Path

    import torch

    from attacks import pipeline
    from lazyapps.errors import LazyAppsError

    class Ones(torch.nn.Module):  # classifies every image as 1: the selected images are the first two 1s
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 10).float()

    seen = []

    def load_target(spec, dataset, settings, **kwargs):
        seen.append(("target", spec, kwargs["seed"], kwargs["device"]))
        return pipeline.Target(Ones(), spec, dataset, "stub")

    def train_zoo_model(name, dataset, **kwargs):
        seen.append(("zoo", name, kwargs["seed"], kwargs["device"]))
        return types.SimpleNamespace(name=name)

    def gradient_set(trained, name, data, **kwargs):
        seen.append(("gradients", name, kwargs["seed"], kwargs["device"]))
        return {}, Path(f"{name}.pt")

    def meta_attacker(method, dataset, sets, settings, **kwargs):
        seen.append(("meta-attacker", method, kwargs["seed"], kwargs["device"]))
        raise LazyAppsError("stub: stopped before the attack")

    for name, stub in [("load_target", load_target), ("train_zoo_model", train_zoo_model),
                       ("gradient_set", gradient_set), ("meta_attacker", meta_attacker)]:
        monkeypatch.setattr(pipeline, name, stub)
    result = invoke("--seed", "5", "--zoo", "lenet5,net3", "--preset", "smoke", "--data-dir", str(mini_root),
                    "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet")
    assert result.exit_code == 2 and result.output.strip() == "Error: stub: stopped before the attack"
    cpu = torch.device("cpu")
    assert seen == [("target", "net4", 5, cpu), ("zoo", "lenet5", 5, cpu), ("gradients", "lenet5", 5, cpu),
                    ("zoo", "net3", 5, cpu), ("gradients", "net3", 5, cpu), ("meta-attacker", "lazy-meta", 5, cpu)]
