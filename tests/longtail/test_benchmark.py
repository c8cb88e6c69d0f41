"""The CIFAR-LT benchmark script keeps working: its --smoke size runs, prints the table and writes JSON."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lazyapps.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]


def _load_benchmark():
    if str(REPO / "benchmarks") not in sys.path:  # its _script helpers sit beside it, as when run as a script
        sys.path.insert(0, str(REPO / "benchmarks"))
    # Under its own name, so --jobs's spawned workers can import it by that name to run its functions.
    spec = importlib.util.spec_from_file_location("longtail_cifar10", REPO / "benchmarks" / "longtail_cifar10.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["longtail_cifar10"] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(data_root, tmp_path, capsys):
    bench = _load_benchmark()
    out = bench.main(["--smoke", "--data-dir", str(data_root), "--out", str(tmp_path), "--n-max", "30", "--imbalance", "10",
                      "--methods", "ce,cb-ce,ldam-drw,logit-adjust,two-component,lazy-two-component", "--agreement", "1"])
    printed = capsys.readouterr().out
    assert "REDUCED BUDGET" in printed and "58.67/53.46/48.24/43.68" in printed and "budget 4x" in printed
    # the weights' agreement starts from the CE phase this run wrote, at the meta phase's lr
    agreement = out["agreement"]
    assert agreement["from"] == str(tmp_path / "ce_phase.pt") and agreement["lr"] == out["results"]["ce"]["history"][-1]["lr"]
    assert all(agreement[rule]["batches"] == 1 and -1 <= agreement[rule]["eps_cosine_min"] <= 1 for rule in ("step", "normalized"))
    assert f"cosine of eps median {agreement['normalized']['eps_cosine_median']:.4f}" in printed
    share = agreement["normalized"]["eps_share"]["lazy-two-component"]
    assert sum(share.values()) == pytest.approx(1.0) and ("/".join(f"{100 * v:.1f}" for v in share.values()) + "%") in printed
    # the first-order test-loss descent of each weighting, by shot group of the test images (counts 30..3: no many-shot)
    descent = agreement["normalized"]["test_descent"]
    assert list(descent["lazy_minus_two_component"]) == ["all", "medium", "few"] == list(descent["ce"])
    two = descent["two-component"]
    assert "(all/medium/few test images)" in printed
    assert "lazy-two-component " + "/".join(f"{descent['lazy-two-component'][g]:.3f}" for g in ("all", "medium", "few")) in printed
    assert f"two-component {two['all']:.3f}/" in printed and "of 1 positive" in printed
    assert set(out["results"]) == {"ce", "cb-ce", "ldam-drw", "logit-adjust", "two-component", "lazy-two-component"}
    # the meta methods continue the CE run: their first epoch is the CE run's first epoch
    assert out["results"]["lazy-two-component"]["history"][0] == out["results"]["ce"]["history"][0]
    assert out["results"]["lazy-two-component"]["history"][-1]["meta"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cost"]["lazy_over_ce"] > 0 and saved["paper_cifar100_lt"]["ce"][1] == 61.68
    _check_table_against_results(printed, out)


def _check_table_against_results(printed: str, out: dict) -> None:
    """Each method's table row holds its own best and last epoch's numbers, and the epochs it ran itself."""
    def cell(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    meta = ("l2rw", "meta-weight-net", "two-component", "lazy-two-component")
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()[:1] and line.split()[0] in out["results"]}
    assert list(rows) == [m for m in ("ce", "cb-ce", "cb-focal", "ldam-drw", "logit-adjust", *meta) if m in out["results"]]
    for m, r in out["results"].items():
        history = r["history"]
        assert r["best"]["top1_error"] == min(h["top1_error"] for h in history) and r["last"]["epoch"] == history[-1]["epoch"]
        own = [h for h in history if h["meta"]] if m in meta else history  # a meta method ran its meta epochs only
        assert r["own_epochs"] == len(own) and r["own_epoch_s"] == pytest.approx(sum(h["train_s"] for h in own) / len(own))
        expected = [cell(r[which][k], d) for which in ("best", "last") for k, d in
                    (("top1_error", 2), ("many_accuracy", 1), ("medium_accuracy", 1), ("few_accuracy", 1))]
        assert rows[m][1:5] + rows[m][6:10] == expected and rows[m][11:13] == [cell(r["own_epoch_s"], 1), str(r["own_epochs"])]
        paper = out["paper_cifar100_lt"].get(m)
        assert rows[m][13] == ("/".join(f"{v:.2f}" for v in paper) if paper else "-")  # the paper's numbers of this method
        if m in meta:  # the budget line names the epoch the meta phase really started
            assert f"meta/DRW from epoch {own[0]['epoch']})" in out["budget"]
    # ... and the epochs the learning rate really dropped at: first below its peak, then to x(second decay) of it
    (f1, f2), lrs = out["config"]["lr_decay"], [h["lr"] for h in out["results"]["ce"]["history"]]
    first = next(e for e in range(lrs.index(max(lrs)), len(lrs)) if lrs[e] < max(lrs)) + 1
    second = next(e for e, lr in enumerate(lrs) if lr == pytest.approx(max(lrs) * f2)) + 1
    assert f"x{f1:g} from epoch {first}, x{f2:g} from {second}," in out["budget"]


def _args(**changed):
    import argparse

    args = dict(dataset="cifar10", imbalance=10.0, data_dir=None, n_max=30, test_per_class=10, seed=0, epochs=2, batch_size=8,
                inner_steps=3, lr_decay=(0.01, 0.0001), inner_lr=None, gammas=None, eps_rule="step", model="lenet5", smoke=True, device="cpu")
    return argparse.Namespace(**{**args, **changed})


def test_zero_sizes_are_the_datasets_standard_ones():
    """--n-max 0 and --test-per-class 0 (their help: the standard sizes) make a valid training config."""
    bench = _load_benchmark()
    config = bench._config(_args(n_max=0, test_per_class=0, inner_lr=0.05, eps_rule="normalized"), "lazy-two-component")
    config.check()
    assert (config.n_max, config.test_per_class, config.inner_lr, config.eps_rule) == (None, None, 0.05, "normalized")


def test_benchmark_meta_runs_from_a_saved_ce_phase_in_parallel_jobs(data_root, tmp_path, capsys):
    # --ce-phase without "ce" among the methods: the worker pool must start the meta runs at once
    bench = _load_benchmark()
    common = ["--smoke", "--data-dir", str(data_root), "--n-max", "30", "--imbalance", "10"]
    first = bench.main(common + ["--out", str(tmp_path / "ce"), "--methods", "ce"])
    assert "this command's runs one at a time" in capsys.readouterr().out
    again = bench.main(common + ["--out", str(tmp_path / "meta"), "--methods", "two-component,l2rw", "--jobs", "2",
                                 "--ce-phase", str(tmp_path / "ce" / "ce_phase.pt")])
    assert "2 runs shared the CPU, so these are perturbed" in capsys.readouterr().out
    assert set(again["results"]) == {"two-component", "l2rw"}
    for run in again["results"].values():
        assert run["history"][0] == first["results"]["ce"]["history"][0] and run["history"][-1]["meta"]
    # measured from it without training: no table of runs, only the budget, the cost and the agreement
    measured = bench.main(common + ["--out", str(tmp_path / "cost"), "--cost-only", "--agreement", "1",
                                    "--ce-phase", str(tmp_path / "ce" / "ce_phase.pt")])
    printed = capsys.readouterr().out
    assert measured["results"] == {} and measured["agreement"]["normalized"]["batches"] == 1
    assert "best err%" not in printed and "s/epoch" not in printed
    assert "REDUCED BUDGET" in printed and "budget 4x" in printed and "cosine of eps median" in printed
    # another seed's run does not continue this CE run (its data draw and random stream are not this one's)
    with pytest.raises(CheckpointError, match="was made with seed=0, but seed=1 is needed here"):
        bench.main(common + ["--out", str(tmp_path / "seed1"), "--methods", "l2rw", "--seed", "1",
                             "--ce-phase", str(tmp_path / "ce" / "ce_phase.pt")])
    with pytest.raises(CheckpointError, match="was made with seed=0, but seed=1 is needed here"):  # nor is it compared from
        bench.main(common + ["--out", str(tmp_path / "seed1"), "--cost-only", "--agreement", "1", "--seed", "1",
                             "--ce-phase", str(tmp_path / "ce" / "ce_phase.pt")])


def test_meta_seed_redraws_only_the_meta_phase_and_alike_for_every_method(data_root, tmp_path, capsys):
    bench = _load_benchmark()
    common = ["--smoke", "--data-dir", str(data_root), "--n-max", "30", "--imbalance", "10", "--epochs", "3"]
    plain = bench.main(common + ["--out", str(tmp_path / "plain"), "--methods", "ce,two-component"])
    capsys.readouterr()
    both = bench.main(common + ["--out", str(tmp_path / "both"), "--methods", "ce,two-component", "--meta-seed", "7"])
    assert "seed 0 (meta phase reseeded with 7)" in capsys.readouterr().out and both["config"]["meta_seed"] == 7
    start = sum(not row["meta"] for row in both["results"]["two-component"]["history"])
    assert 0 < start < 3

    def untimed(run):
        return [{k: v for k, v in row.items() if k != "train_s"} for row in run["history"]]
    for method in ("ce", "two-component"):
        before, after = untimed(plain["results"][method]), untimed(both["results"][method])
        assert before[:start] == after[:start]  # the CE phase is the same run
        assert all(a["train_loss"] != b["train_loss"] for a, b in zip(before[start:], after[start:]))
    # a meta run from the saved CE phase with the same meta seed is that command's run again, step for step
    again = bench.main(common + ["--out", str(tmp_path / "again"), "--methods", "two-component", "--meta-seed", "7",
                                 "--ce-phase", str(tmp_path / "both" / "ce_phase.pt")])
    assert untimed(again["results"]["two-component"]) == untimed(both["results"]["two-component"])


def test_gammas_set_the_lazy_teachers_grid_and_are_named_in_the_budget(data_root, tmp_path, capsys):
    bench = _load_benchmark()
    common = ["--smoke", "--data-dir", str(data_root), "--n-max", "30", "--imbalance", "10", "--epochs", "3"]
    out = bench.main(common + ["--out", str(tmp_path), "--methods", "lazy-two-component", "--gammas", "0.6"])
    assert ", gamma grid 0.6, two-component eps rule" in capsys.readouterr().out and out["config"]["gammas"] == (0.6,)
    meta = [row for row in out["results"]["lazy-two-component"]["history"] if row["meta"]]
    assert meta and all(row["meta_gamma"] == 0.6 for row in meta)  # a one-value grid: the leap at 0.6 every step
    default = bench.main(common + ["--out", str(tmp_path / "default"), "--methods", "lazy-two-component",
                                   "--ce-phase", str(tmp_path / "ce_phase.pt")])
    assert "gamma grid" not in capsys.readouterr().out and default["config"]["gammas"] is None
    assert all(0.75 <= row["meta_gamma"] <= 0.95 for row in default["results"]["lazy-two-component"]["history"] if row["meta"])


def test_cost_ratio_is_of_medians_after_the_warm_up_step(data_root, monkeypatch):
    """measure_cost: every method on the same batch from the same weights; the warm-up dropped; medians; ratios to CE."""
    import longtail.methods

    bench = _load_benchmark()
    args = _args(data_dir=str(data_root), inner_lr=0.05, eps_rule="normalized", gammas=(0.9, 0.6))
    # seconds each method's step takes, per round (round 0 is the warm-up): medians 2, 4, 6 (means 4, 4, 24)
    seconds = {"ce": [100, 1, 2, 9], "two-component": [100, 3, 4, 5], "lazy-two-component": [100, 6, 6, 60]}
    now, created, seen = [0.0], {}, []

    class Timed:
        def __init__(self, name, method):
            self.name, self.round, self.method = name, 0, method

        def __getattr__(self, attr):  # (the benchmark's Trainer builds its own "ce" through create_method too)
            return getattr(self.method, attr)

        def loss(self, ctx, x, y):
            now[0] += seconds[self.name][self.round]
            self.round += 1
            seen.append((self.name, x.sum().item(), y.tolist(), sum(p.sum().item() for p in ctx.model.parameters())))
            return ctx.model(x).logsumexp(1).mean()

    real = longtail.methods.create_method

    def create_method(name, counts, device, **kwargs):
        created[name] = kwargs
        return Timed(name, real(name, counts, device=device, **kwargs))

    monkeypatch.setattr(longtail.methods, "create_method", create_method)
    monkeypatch.setattr(bench, "clock", lambda device: now[0])
    cost = bench.measure_cost(args, bench._data(args), 3)
    assert cost["steps"] == 3 and cost["step_s"] == {"ce": 2, "two-component": 4, "lazy-two-component": 6}
    assert cost["two_component_over_ce"] == 2.0 and cost["lazy_over_ce"] == 3.0
    # each method timed with the run's own settings (the lazy student's k and lr, its γ grid, the ε rule)
    assert created == {"ce": {}, "two-component": {"eps_rule": "normalized"},
                       "lazy-two-component": {"inner_steps": 3, "gammas": (0.9, 0.6), "inner_lr": 0.05, "eps_rule": "normalized"}}
    assert len(seen) == 12
    assert [name for name, *_ in seen] == ["ce", "two-component", "lazy-two-component"] * 4
    for r in range(4):  # one batch and one set of starting weights per round, shared by the three methods
        assert len({tuple(map(str, s[1:])) for s in seen[3 * r: 3 * r + 3]}) == 1
    assert seen[0][1:3] != seen[3][1:3] and seen[0][3] == seen[3][3]  # a new batch each round, the same initial weights


def test_table_rows_hold_each_methods_best_and_last_epoch(data_root, tmp_path, monkeypatch, capsys):
    """The runs and the cost measurement replaced by results whose best and last epochs differ: each cell is its own."""
    bench = _load_benchmark()

    def run_method(args, method, threads):
        e = 10.0 if method == "ce" else 20.0
        epoch = {"many_accuracy": None, "medium_accuracy": 50.0 + e, "few_accuracy": 1.0 + e}
        return {"method": method, "best": {"top1_error": e, **epoch}, "last": {"top1_error": e + 5, **epoch, "few_accuracy": 3.0},
                "own_epoch_s": e / 4, "own_epochs": int(e), "wall_s": 99.0, "history": []}

    monkeypatch.setattr(bench, "run_method", run_method)
    monkeypatch.setattr(bench, "measure_cost", lambda args, data, steps: {
        "step_s": {"ce": 1.0, "two-component": 2.0, "lazy-two-component": 3.0}, "two_component_over_ce": 2.0,
        "lazy_over_ce": 3.0, "steps": steps})
    bench.main(["--smoke", "--data-dir", str(data_root), "--out", str(tmp_path), "--n-max", "30", "--imbalance", "10",
                "--methods", "two-component,ce"])
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["ce"], ["two-component"])}
    assert rows["ce"][:12] == ["10.00", "-", "60.0", "11.0", "|", "15.00", "-", "60.0", "3.0", "|", "2.5", "10"]
    assert rows["two-component"][:12] == ["20.00", "-", "70.0", "21.0", "|", "25.00", "-", "70.0", "3.0", "|", "5.0", "20"]


@pytest.mark.parametrize("rule", ["step", "normalized"])
def test_weight_agreement_is_exact_when_the_leap_is_the_virtual_step_and_falls_as_the_student_walks(rule):
    """γ = 1 puts the leap at θ̃, so lazy's ε must be two-component's; the further the student walks, the less alike."""
    from longtail.methods import LazyTwoComponent, StepContext, TwoComponent
    from .._models import linear_problem

    bench = _load_benchmark()
    model, x, y, vx, vy = linear_problem(5, 4, 3, 24, 9)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    counts = [20, 6, 2]

    def agreement(**lazy_options):
        plain, lazy = TwoComponent(counts, eps_rule=rule), LazyTwoComponent(counts, eps_rule=rule, inner_steps=3, **lazy_options)
        for method in (plain, lazy):
            method.class_weights = method.class_weights.double()
        before = [p.clone() for p in model.parameters()]
        out = bench.weight_agreement(model, plain, lazy, batches, lr=0.3, epoch=plain.meta_start, val=(vx, vy))
        assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # each step ran on a copy
        return out

    same = agreement(gammas=(1.0,))
    assert same["batches"] == 2 and same["eps_cosine_min"] == pytest.approx(1.0, abs=1e-12)
    assert same["weight_distance_max"] < 1e-12 and same["positive_eps_overlap_median"] == 1.0
    near, far = agreement(gammas=(0.5,), inner_lr=1.0), agreement(gammas=(0.5,), inner_lr=5.0)  # halfway to φ_k
    assert 0.95 < near["eps_cosine_median"] < 0.999 and far["eps_cosine_median"] < 0.95  # the further, the less alike
    assert 1e-4 < near["weight_distance_median"] < far["weight_distance_median"]
    assert far["eps_cosine_min"] <= far["eps_cosine_median"] and far["weight_distance_max"] >= far["weight_distance_median"]
    # where the extra weight goes, against a count by hand from two-component's ε (class 0: 20 images, medium; 1, 2: few)
    plain = TwoComponent(counts, eps_rule=rule)
    plain.class_weights = plain.class_weights.double()
    by_hand = []
    for bx, by in batches:
        plain.loss(StepContext(copy.deepcopy(model), 0.3, plain.meta_start, vx, vy), bx, by)
        mass = (plain.last_weights - plain.class_weights[by]).abs()
        by_hand.append([0.0, float(mass[by == 0].sum() / mass.sum()), float(mass[by > 0].sum() / mass.sum())])
    expected = [sum(column) / len(batches) for column in zip(*by_hand)]
    assert 0 < expected[1] < 1 and list(same["eps_share"]["two-component"].values()) == pytest.approx(expected, abs=1e-12)
    assert list(same["eps_share"]["lazy-two-component"].values()) == pytest.approx(expected, abs=1e-12)
    assert sum(far["eps_share"]["lazy-two-component"].values()) == pytest.approx(1.0)


def _batchnorm_net(seed: int) -> torch.nn.Module:
    """A float64 conv net with BatchNorm (so a batch's examples are coupled) and non-trivial running statistics."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def test_per_example_alignment_is_each_examples_gradient_along_u():
    """c_i against a slow obvious reference: autograd of each ℓ_i alone through the whole batch's forward."""
    bench = _load_benchmark()
    net = _batchnorm_net(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 5, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    u = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in net.named_parameters()}
    buffers = [b.clone() for b in net.buffers()]
    c = bench.per_example_alignment(net, x, y, {"u": u, "-2u": {k: -2 * v for k, v in u.items()}})
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))  # batch statistics, buffers untouched
    losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none")  # train mode: the batch's statistics
    slow = []
    for i in range(len(y)):
        grads = torch.autograd.grad(losses[i], list(net.parameters()), retain_graph=True)
        slow.append(sum(float((gi * u[k]).sum()) for (k, _), gi in zip(net.named_parameters(), grads)))
    assert c["u"].tolist() == pytest.approx(slow, rel=1e-6, abs=1e-9) and max(map(abs, slow)) > 1e-3
    assert c["-2u"].tolist() == pytest.approx([-2 * v for v in slow], rel=1e-6, abs=1e-9)


def test_gradients_of_test_loss_are_the_evaluations_mean_loss_by_group():
    """Eval-mode gradients, summed over chunks, equal one whole-set backward; 'all' is the size-weighted mix."""
    bench = _load_benchmark()
    net = _batchnorm_net(2)
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (7, 3, 5, 5), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 2, 1, 2, 0, 2, 1])
    counts = [500, 50, 5]  # many, medium, few

    def prepare(batch):
        return batch.double() / 255

    buffers = [b.clone() for b in net.buffers()]
    out = bench.gradients_of_test_loss(net, images, labels, counts, prepare=prepare, chunk=3)
    assert net.training and all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))
    assert set(out) == {"all", "many", "medium", "few"}
    net.eval()
    for group, members in (("all", labels >= 0), ("many", labels == 0), ("few", labels == 2)):
        loss = torch.nn.functional.cross_entropy(net(prepare(images[members])), labels[members])
        expected = torch.autograd.grad(loss, list(net.parameters()))
        for (k, _), e in zip(net.named_parameters(), expected):
            assert torch.allclose(out[group][k], e, rtol=1e-10, atol=1e-12), (group, k)
    # a group without test images is left out
    assert set(bench.gradients_of_test_loss(net, images[labels > 0], labels[labels > 0], counts, prepare=prepare)) == {
        "all", "medium", "few"}


def test_weight_agreement_reports_each_weightings_first_order_test_descent():
    """test_descent is Σ w_i c_i / Σ w_i per batch, averaged, for CE, the class weights and both methods' weights."""
    from longtail.methods import LazyTwoComponent, StepContext, TwoComponent
    from .._models import linear_problem

    bench = _load_benchmark()
    model, x, y, vx, vy = linear_problem(5, 4, 3, 24, 9)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    counts = [20, 6, 2]
    g = torch.Generator().manual_seed(4)
    u = {"all": {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.named_parameters()}}
    plain, lazy = TwoComponent(counts, eps_rule="normalized"), LazyTwoComponent(counts, eps_rule="normalized", inner_steps=3,
                                                                                 gammas=(0.5,), inner_lr=5.0)
    for method in (plain, lazy):
        method.class_weights = method.class_weights.double()
    out = bench.weight_agreement(model, plain, lazy, batches, lr=0.3, epoch=plain.meta_start, val=(vx, vy),
                                 test_gradients=u)["test_descent"]
    by_hand: dict[str, list[float]] = {}
    for bx, by in batches:
        # c_i by hand: the linear model's per-example gradient is exact in closed form, (softmax − onehot) ⊗ [x, 1]
        with torch.no_grad():
            p = torch.softmax(model(bx), 1) - torch.nn.functional.one_hot(by, 3)
            c = (p @ u["all"]["weight"] * bx).sum(1) + p @ u["all"]["bias"]
        for name, method in (("two-component", plain), ("lazy-two-component", lazy), ("ce", None), ("class weights", None)):
            if method is not None:
                method.loss(StepContext(copy.deepcopy(model), 0.3, method.meta_start, vx, vy), bx, by)
                w = method.last_weights
            else:
                w = torch.ones(len(by), dtype=torch.float64) if name == "ce" else plain.class_weights[by]
            by_hand.setdefault(name, []).append(float((w * c).sum() / w.sum()))
    for name, values in by_hand.items():
        assert out[name]["all"] == pytest.approx(sum(values) / 2, rel=1e-6), name
    differences = [a - b for a, b in zip(by_hand["lazy-two-component"], by_hand["two-component"])]
    assert max(map(abs, differences)) > 1e-6  # the far leap moves the weights, so the two differ
    d = out["lazy_minus_two_component"]["all"]
    assert d["mean"] == pytest.approx(sum(differences) / 2, rel=1e-5) and d["batches"] == 2
    assert d["positive"] == sum(v > 0 for v in differences)
    assert bench.weight_agreement(model, plain, lazy, batches, lr=0.3, epoch=plain.meta_start, val=(vx, vy))["test_descent"] is None
