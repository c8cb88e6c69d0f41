"""The shared look-ahead: ε-gradient vs finite differences, BatchNorm buffers, the lazy leap, augmentation."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lazyapps.errors import UnknownNameError
from lazyapps.functional import params_of
from longtail import losses as L
from longtail.augment import normalize, random_crop_flip
from longtail.methods import LazyTwoComponent, StepContext, TwoComponent
from longtail.reweighting import LookAhead, batch_statistics, chunks, plain_direction, validation_loss

from .._models import WithUnused, linear_problem


def _batch(n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("mode", ["difference", "jvp"])
def test_weight_gradient_matches_finite_differences_float64(tiny_net, mode):
    model = tiny_net().double().train()
    x, y = _batch(8, 0, torch.float64)
    vx, vy = _batch(6, 1, torch.float64)
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.7)
    w = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def val_loss(weights):
        return float(validation_loss(model, look.step(weights), vx, vy))

    v, _ = plain_direction(model, look.step(w), vx, vy)
    analytic = look.weight_gradient(v, mode=mode)
    h = 1e-6
    numeric = torch.tensor([(val_loss(w + h * e) - val_loss(w - h * e)) / (2 * h) for e in torch.eye(8, dtype=torch.float64)], dtype=torch.float64)
    assert analytic.abs().max() > 1e-4  # not trivially zero
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_virtual_steps_leave_batchnorm_buffers_alone(tiny_net):
    model = tiny_net().train()
    x, y = _batch(16, 3)
    vx, vy = _batch(10, 4)
    before = {k: v.clone() for k, v in model.named_buffers()}
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.1)
    theta_tilde = look.step(torch.ones(16))
    v, _ = plain_direction(model, theta_tilde, vx, vy)
    look.weight_gradient(v)
    assert all(torch.equal(before[k], v_) for k, v_ in model.named_buffers())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the virtual forward normalises with batch statistics, like the real training forward
    with batch_statistics(model):
        virtual = model(x)
    assert torch.allclose(virtual, model(x), atol=1e-6)


def test_step_from_the_real_forward_equals_the_functional_step(tiny_net):
    model = tiny_net().train()
    x, y = _batch(12, 5)
    w = torch.rand(12)
    params = params_of(model)
    shared = LookAhead(model, params, x, y, L.cross_entropy, lr=0.3, losses=L.cross_entropy(model(x), y)).step(w)
    separate = LookAhead(model, params, x, y, L.cross_entropy, lr=0.3).step(w)
    assert all(torch.allclose(shared[k], separate[k], atol=1e-6) for k in shared)
    # against the obvious SGD step
    loss = (w * F.cross_entropy(model(x), y, reduction="none")).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(torch.allclose(shared[k], p.detach() - 0.3 * g, atol=1e-6) for (k, p), g in zip(params.items(), grads))


def test_lazy_direction_is_gamma_times_validation_gradient_at_the_leap(tiny_net):
    torch.manual_seed(0)
    model = tiny_net().train()
    x, y = _batch(20, 6)
    vx, vy = _batch(30, 7)
    counts = [50, 30, 20, 12, 8, 5, 3, 2, 2, 1]
    method = LazyTwoComponent(counts, inner_steps=4, gammas=(0.6, 0.8, 0.95))
    base = method.base_weights(torch.zeros(20), y)
    params = params_of(model)
    theta_tilde = LookAhead(model, params, x, y, L.cross_entropy, lr=0.5).step(base)
    ctx = StepContext(model, 0.5, 0, vx, vy)
    v = method.direction(ctx, theta_tilde, x, y, base)

    # Slow reference: 4 plain SGD steps on the 4 slices, grid over γ by validation accuracy, γ̂·∇L_val(φ).
    phi = {k: t.clone() for k, t in theta_tilde.items()}
    for part in chunks(20, 4):
        with batch_statistics(model):
            leaf = {k: t.requires_grad_() for k, t in ((k, t.detach().clone()) for k, t in phi.items())}
            out = torch.func.functional_call(model, leaf, (x[part],))
            loss = (base[part] * F.cross_entropy(out, y[part], reduction="none")).sum()  # the virtual step's summed loss
            g = torch.autograd.grad(loss, list(leaf.values()))
        phi = {k: (t - 0.5 * gi).detach() for (k, t), gi in zip(leaf.items(), g)}
    best = None
    for gamma in (0.6, 0.8, 0.95):
        mix = {k: gamma * theta_tilde[k] + (1 - gamma) * phi[k] for k in phi}
        with torch.no_grad(), batch_statistics(model):
            acc = float((torch.func.functional_call(model, mix, (vx,)).argmax(1) == vy).float().mean())
        if best is None or acc > best[0]:
            best = (acc, gamma, mix)
    _, gamma, mix = best
    assert method.diagnostics["gamma"] == gamma
    ref, _ = plain_direction(model, mix, vx, vy)
    assert all(torch.allclose(v[k], gamma * ref[k], atol=1e-5) for k in ref)


@pytest.mark.parametrize("kind", [TwoComponent, LazyTwoComponent])
def test_two_component_step_weights_and_buffers(tiny_net, kind):
    model = tiny_net().train()
    x, y = _batch(16, 8)
    vx, vy = _batch(20, 9)
    counts = [40, 30, 20, 12, 8, 5, 3, 2, 2, 1]
    method = kind(counts, eps_rule="normalized")  # ε ≥ 0 under this rule: the mean weight cannot drop
    running = model[1].running_mean.clone()
    loss = method.loss(StepContext(model, 0.1, 0, vx, vy), x, y)
    loss.backward()
    assert not torch.equal(running, model[1].running_mean)  # the real forward updated BN once ...
    reference = tiny_net().train()
    reference(x)
    assert torch.allclose(reference[1].running_mean, model[1].running_mean, atol=1e-6)  # ... exactly once
    assert torch.allclose(reference[1].running_var, model[1].running_var, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 1  # the student's and the grid's forwards left no trace
    assert method.diagnostics["weight_mean"] >= float(method.class_weights[y].mean()) - 1e-6


@pytest.mark.parametrize("last, grid", [(1, 1.0), (2, 0.5)])
def test_lazy_direction_both_paths_equal_gamma_times_gradient_at_the_leap(tiny_net, last, grid):
    # b = 1 reuses the winning candidate's graph; b = 2 goes through the engine's meta-gradient
    from lazyapps.teacher import LazyTeacher
    from longtail.reweighting import lazy_direction

    model = tiny_net().train()
    x, y = _batch(12, 12)
    vx, vy = _batch(16, 13)
    theta = {k: t.detach() for k, t in params_of(model).items()}
    parts = iter(chunks(12, 3))

    def student_loss(predict):
        part = next(parts)
        return F.cross_entropy(predict(x[part]), y[part])

    teacher = LazyTeacher(gammas=(0.5, 0.9), last=last, weight_grid=grid, criterion="loss")
    v, leap, val_loss = lazy_direction(model, theta, student_loss, vx, vy, steps=3, lr=0.5, teacher=teacher)
    ref, ref_loss = plain_direction(model, {k: t.detach() for k, t in leap.params.items()}, vx, vy)
    assert abs(val_loss - ref_loss) < 1e-5 and leap.score == pytest.approx(min(sc for _, _, sc in leap.scores))
    assert all(torch.allclose(v[k], leap.gamma * ref[k], atol=1e-6) for k in ref)


def test_two_component_eps_rules():
    counts = [40, 30, 20, 1]
    grad_w = torch.tensor([0.5, -1.0, -3.0, 0.0])
    base = torch.tensor([0.2, 0.3, 0.5, 3.0])
    # Jamal et al.'s code: ε = −0.01 · ∂L/∂ε (of the summed virtual loss, as grad_w is), no clipping
    step = TwoComponent(counts).final_weights(grad_w, base, None, None)
    assert torch.allclose(step, base - 0.01 * grad_w)
    # L2RW-style: max(−g, 0) normalised to the batch's class-weight mass (4.0)
    normalized = TwoComponent(counts, eps_rule="normalized").final_weights(grad_w, base, None, None)
    assert torch.allclose(normalized, base + torch.tensor([0.0, 1.0, 3.0, 0.0]))
    # the mass is the batch's Σ w_y, not the batch size (equal above): here 2 · 4.0 over 4 examples
    doubled = TwoComponent(counts, eps_rule="normalized").final_weights(grad_w, 2 * base, None, None)
    assert torch.allclose(doubled, 2 * base + torch.tensor([0.0, 2.0, 6.0, 0.0]))
    with pytest.raises(UnknownNameError, match="unknown eps rule 'huge'"):
        TwoComponent(counts, eps_rule="huge")


def test_diagnostics_are_means_over_the_epoch():
    method = TwoComponent([5, 1])
    for value in (1.0, 2.0, 6.0):
        method.record(val_loss=value)
    assert method.diagnostics == {"val_loss": 3.0}
    method.reset_diagnostics()
    method.record(val_loss=7.0)
    assert method.diagnostics == {"val_loss": 7.0}


def test_normalize_maps_uint8_per_channel_and_takes_the_constants_as_lists_or_tensors():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1×2×1×2
    mean, std = [0.5, 0.2], [0.5, 0.1]
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])  # ((x / 255) − mean) / std per channel
    assert torch.allclose(normalize(images, mean, std), expected, atol=1e-6)
    assert torch.equal(normalize(images, torch.tensor(mean), torch.tensor(std)), normalize(images, mean, std))


def test_random_crop_flip_is_a_shifted_window():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, generator=g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images.float(), (2, 2, 2, 2))
    for i in range(64):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i].float(), c) for c in candidates)
    flipped = sum(not any(torch.equal(out[i].float(), w) for w in
                          [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]) for i in range(64))
    assert 10 < flipped < 54  # about half flipped (a symmetric window could count as unflipped)



@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_flip_defaults_to_the_4_pixel_zero_padding_and_shifts_each_axis_independently(dtype):
    # Every pixel distinct and non-zero: each output identifies its (dy, dx, flip) in the 4-pixel zero-padded image.
    base = torch.arange(1, 65, dtype=torch.float32).view(1, 1, 8, 8).expand(400, 3, 8, 8)
    out = random_crop_flip(base.to(dtype), generator=torch.Generator().manual_seed(0))
    assert out.shape == base.shape and out.dtype == dtype
    padded = F.pad(base[0], (4, 4, 4, 4))  # zeros, not the edge's values, around the image
    windows = {(dy, dx, f): (padded[:, dy:dy + 8, dx:dx + 8].flip(-1) if f else padded[:, dy:dy + 8, dx:dx + 8])
               for dy in range(9) for dx in range(9) for f in (False, True)}
    found = [next(key for key, w in windows.items() if torch.equal(out[i].float(), w)) for i in range(len(out))]
    assert {k[0] for k in found} == set(range(9)) and {k[1] for k in found} == set(range(9))
    assert len({(k[0], k[1]) for k in found}) > 60  # the two offsets are drawn independently (81 pairs)
    assert 150 < sum(k[2] for k in found) < 250


def test_normalize_takes_float_images_in_0_1_as_they_are():
    # (only uint8 images are divided by 255: the docstring's "[0, 1] float" input is already on that scale)
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    mean, std = [0.5, 0.2], [0.5, 0.1]
    assert torch.allclose(normalize(images.float() / 255, mean, std), normalize(images, mean, std), atol=1e-6)


def test_random_crop_flip_draws_every_number_from_the_generator_given():
    # the trainer's generator alone decides the crops and flips (reproducible and resumable whatever else draws)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    first = random_crop_flip(images, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    torch.rand(7)
    assert torch.equal(random_crop_flip(images, generator=torch.Generator().manual_seed(5)), first)


def test_directional_difference_agrees_with_jvp_in_float32(tiny_net):
    # The default pull-back is one graph-free forward; it must keep the exact JVP's signs and size.
    model = tiny_net().train()
    x, y = _batch(32, 10)
    vx, vy = _batch(20, 11)
    losses = L.cross_entropy(model(x), y)
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.1, losses=losses)
    v, _ = plain_direction(model, look.step(torch.ones(32)), vx, vy)
    exact, cheap = look.weight_gradient(v, mode="jvp"), look.weight_gradient(v, mode="difference")
    assert float((cheap - exact).norm() / exact.norm()) < 0.05
    big = exact.abs() > 0.05 * exact.abs().max()
    assert torch.equal(cheap[big] > 0, exact[big] > 0)
    with pytest.raises(ValueError, match="mode must be"):
        look.weight_gradient(v, mode="double-backward")
    assert torch.equal(look.weight_gradient({k: torch.zeros_like(t) for k, t in v.items()}), torch.zeros(32))


def test_fast_layout_changes_strides_not_values():
    from longtail.reweighting import fast_layout

    images = torch.randn(5, 3, 4, 4)
    fast = fast_layout(images)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not fast.is_contiguous()
    assert torch.equal(fast, images)
    assert fast_layout(fast) is fast  # already in the layout: no copy
    matrix = torch.randn(3, 4)
    assert fast_layout(matrix) is matrix  # only 4-D tensors have a channels-last layout


def test_pull_back_runs_in_the_parameters_layout_whatever_the_directions_layout():
    # v comes from the fast-layout passes; the difference quotient subtracts the real forward's losses, so
    # θ + h·v must run θ's kernels, or layout-dependent rounding (~1e-7 here) would be divided by a small h.
    from torch import nn

    from longtail.reweighting import fast_layout

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).train()
    g = torch.Generator().manual_seed(20)
    x, y, vx, vy = torch.randn(32, 3, 12, 12, generator=g), torch.randint(0, 10, (32,), generator=g), \
        torch.randn(20, 3, 12, 12, generator=g), torch.randint(0, 10, (20,), generator=g)
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.1, losses=L.cross_entropy(model(x), y))
    v, _ = plain_direction(model, look.step(torch.ones(32)), vx, vy)
    assert v["0.weight"].is_contiguous(memory_format=torch.channels_last) and not v["0.weight"].is_contiguous()
    standard = {k: t.contiguous() for k, t in v.items()}
    assert torch.equal(look.weight_gradient(v), look.weight_gradient(standard))
    with torch.no_grad():  # the layouts really round differently on this net: the check above can fail
        theta = {k: fast_layout(t.detach()) for k, t in params_of(model).items()}
        assert not torch.equal(look._per_example(theta), look.losses)


def _plain_layout(monkeypatch):
    import longtail.reweighting as R

    monkeypatch.setattr(R, "fast_layout", lambda t: t)
    monkeypatch.setattr(R, "_fast_params", lambda p: {k: t.detach() for k, t in p.items()})


@pytest.mark.parametrize("kind", [TwoComponent, LazyTwoComponent])
def test_meta_step_in_the_fast_layout_equals_the_plain_layout(tiny_net, monkeypatch, kind):
    # Reference: the same step with every look-ahead pass in the model's own (NCHW) layout.
    counts = [40, 30, 20, 12, 8, 5, 3, 2, 2, 1]
    x, y = _batch(40, 22)
    vx, vy = _batch(30, 23)
    options = {"gammas": (0.5, 0.7, 0.9), "inner_lr": 0.5} if kind is LazyTwoComponent else {}

    def step():
        model = tiny_net().train()
        method = kind(counts, **options)
        directions = []
        direction = method.direction
        method.direction = lambda *a: directions.append(direction(*a)) or directions[-1]
        # lr 0.03: the summed virtual loss's step is then the mean form's at 1.2. At 0.3 (12) this tiny net's
        # validation gradient at θ̃ differs between the layouts by float32 rounding beyond 1e-4 on one thread.
        loss = method.loss(StepContext(model, 0.03, 0, vx, vy), x, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return method, directions[0], grads

    fast, v_fast, grads_fast = step()
    assert v_fast["0.weight"].is_contiguous(memory_format=torch.channels_last)  # the fast path really ran
    _plain_layout(monkeypatch)
    plain, v_plain, grads_plain = step()
    assert v_plain["0.weight"].is_contiguous()
    if kind is LazyTwoComponent:
        assert fast.diagnostics["gamma"] == plain.diagnostics["gamma"]
        assert fast.diagnostics["leap_val_accuracy"] == plain.diagnostics["leap_val_accuracy"]
    assert all(torch.allclose(v_fast[k], v_plain[k], rtol=1e-4, atol=1e-6) for k in v_plain)
    eps_fast, eps_plain = fast.last_weights - fast.class_weights[y], plain.last_weights - plain.class_weights[y]
    assert eps_plain.abs().max() > 1e-5  # ε is not trivially zero (float32 rounding is far below)
    assert torch.allclose(eps_fast, eps_plain, rtol=1e-3, atol=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_fast, grads_plain))


def _linear_meta_problem():
    return linear_problem(24, 5, 3, 10, 7)


def _val_after_virtual_step(model, x, y, vx, vy, weights, lr, reduction="mean"):
    """L_val(θ − α ∇_θ (1/N) Σ w_i ℓ_i(θ)) (no 1/N for a sum) with a graph to ``weights`` (double backward, the obvious way)."""
    params = dict(model.named_parameters())
    inner = (weights * F.cross_entropy(torch.func.functional_call(model, params, (x,)), y, reduction="none"))
    inner = inner.sum() if reduction == "sum" else inner.mean()
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    moved = {k: p - lr * gr for (k, p), gr in zip(params.items(), grads)}
    return F.cross_entropy(torch.func.functional_call(model, moved, (vx,)), vy)


def test_l2rw_weights_are_the_clipped_normalised_negative_gradient_at_zero():
    from longtail.methods import L2RW

    model, x, y, vx, vy = _linear_meta_problem()
    eps = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(_val_after_virtual_step(model, x, y, vx, vy, eps, 0.4), eps)[0]
    expected = (-grad).clamp_min(0)
    assert 0 < int((expected > 0).sum()) < 10  # both signs occur: the clipping matters
    expected = expected / expected.sum()
    method = L2RW([5, 3, 2])
    loss = method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    assert torch.allclose(method.last_weights, expected, atol=1e-6)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y, reduction="none")
    assert float(loss.detach()) == pytest.approx(float((expected * ce).sum()), rel=1e-6)


def test_two_component_eps_is_jamal_et_al_s_step_through_the_summed_virtual_loss():
    # Their released code: θ̃ = θ − α ∇ Σ(w_y + ε_i)ℓ_i at ε = 0, ε = −0.01 ∂L_val(θ̃)/∂ε; the mean form's
    # virtual step is N times shorter, so its ε differs beyond a factor (checked below).
    model, x, y, vx, vy = _linear_meta_problem()
    method = TwoComponent([5, 3, 2])
    w = method.class_weights[y].double()
    eps = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    expected = -0.01 * torch.autograd.grad(_val_after_virtual_step(model, x, y, vx, vy, w + eps, 0.4, "sum"), eps)[0]
    method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    got = method.last_weights - w
    assert float(expected.abs().max()) > 1e-6
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-12)
    mean_form = -0.01 * 10 * torch.autograd.grad(_val_after_virtual_step(model, x, y, vx, vy, w + eps, 0.4), eps)[0]
    assert not torch.allclose(got, mean_form, rtol=1e-2)


def test_meta_weight_net_step_follows_the_meta_gradient_and_reduces_unnormalised():
    from longtail.methods import MetaWeightNet

    model, x, y, vx, vy = _linear_meta_problem()
    torch.manual_seed(5)
    method = MetaWeightNet([5, 3, 2], meta_lr=0.5, momentum=0.0, weight_decay=0.0)
    method.weight_net.double()
    reference = copy.deepcopy(method.weight_net)
    ce = F.cross_entropy(model(x), y, reduction="none").detach()
    meta_grads = torch.autograd.grad(_val_after_virtual_step(model, x, y, vx, vy, reference(ce), 0.4), list(reference.parameters()))
    loss = method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    for p, p0, g in zip(method.weight_net.parameters(), reference.parameters(), meta_grads):
        assert torch.allclose(p, p0 - 0.5 * g, atol=1e-7)  # one plain SGD step down the meta-gradient
    assert any(float(g.abs().max()) > 1e-4 for g in meta_grads)
    with torch.no_grad():
        fresh = method.weight_net(ce)
    assert torch.allclose(method.last_weights, fresh)
    assert float(loss.detach()) == pytest.approx(float((fresh * ce).mean()), rel=1e-6)  # Shu et al.: (1/N) Σ V(ℓ_i) ℓ_i


def test_chunks_cover_the_range_in_near_equal_contiguous_slices():
    for n, parts in [(10, 3), (12, 4), (7, 1), (2, 5), (5, 0), (1, 1)]:
        slices = chunks(n, parts)
        assert len(slices) == max(1, min(parts, n))
        assert [i for s in slices for i in range(n)[s]] == list(range(n))  # contiguous, in order, each index once
        sizes = [len(range(n)[s]) for s in slices]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_virtual_step_is_plain_sgd_for_uniform_one_hot_and_zero_weights_and_is_detached():
    model, x, y, _, _ = _linear_meta_problem()
    params = dict(model.named_parameters())  # live parameters, as the trainer passes them
    look = LookAhead(model, params, x, y, L.cross_entropy, lr=0.4)
    per_example = F.cross_entropy(model(x), y, reduction="none")
    ones, one_hot = torch.ones(10, dtype=torch.float64), torch.eye(10, dtype=torch.float64)[3]
    for w, objective in ((ones, per_example.mean()), (one_hot, per_example[3] / 10)):
        grads = torch.autograd.grad(objective, list(params.values()), retain_graph=True)
        moved = look.step(w)
        for (k, p), g in zip(params.items(), grads):
            torch.testing.assert_close(moved[k], p.detach() - 0.4 * g)
            assert not moved[k].requires_grad
    still = look.step(torch.zeros(10, dtype=torch.float64))
    assert all(torch.equal(still[k], p.detach()) and not still[k].requires_grad for k, p in params.items())


def test_virtual_step_recomputes_losses_given_without_a_graph():
    model, x, y, _, _ = _linear_meta_problem()
    w = torch.rand(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    detached = L.cross_entropy(model(x), y).detach()
    given = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=detached).step(w)
    computed = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4).step(w)
    torch.testing.assert_close(given, computed)


def test_two_ranks_with_identical_rows_step_as_one_process_on_the_doubled_batch():
    # Each rank's gradient is over its rows with N = the whole batch; summing over ranks must give the whole
    # batch's step, also for a parameter the loss ignores (its gradient is None before the sum).
    torch.manual_seed(3)
    model = WithUnused(5, 3).double()
    _, x, y, _, _ = _linear_meta_problem()
    w = torch.rand(10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    two = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, batch_size=20,
                    sum_over_ranks=lambda grads: [2 * g for g in grads]).step(w)
    one = LookAhead(model, params_of(model), torch.cat([x, x]), torch.cat([y, y]), L.cross_entropy, lr=0.4).step(torch.cat([w, w]))
    torch.testing.assert_close(two, one)
    torch.testing.assert_close(one["unused"], torch.ones(4, dtype=torch.float64), rtol=0, atol=0)
    assert not torch.allclose(one["lin.weight"], model.lin.weight.detach())


def test_pull_back_and_lazy_direction_with_a_parameter_the_loss_ignores():
    from lazyapps.teacher import LazyTeacher
    from longtail.reweighting import lazy_direction

    torch.manual_seed(3)
    model = WithUnused(5, 3).double()
    _, x, y, vx, vy = _linear_meta_problem()
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4)
    v, _ = plain_direction(model, look.step(torch.ones(10, dtype=torch.float64)), vx, vy)
    # a direction may omit the parameters it does not move
    without = {k: t for k, t in v.items() if k != "unused"}
    assert torch.equal(look.weight_gradient(without), look.weight_gradient({**without, "unused": torch.zeros(4, dtype=torch.float64)}))
    # the lazy direction (b = 1: the winning candidate's own graph) has a zero tensor for it
    theta = {k: t.detach() for k, t in params_of(model).items()}
    v, leap, _ = lazy_direction(model, theta, lambda predict: F.cross_entropy(predict(x), y), vx, vy, steps=2, lr=0.5,
                                teacher=LazyTeacher(gammas=(0.5, 0.9)))
    ref, _ = plain_direction(model, {k: t.detach() for k, t in leap.params.items()}, vx, vy)
    torch.testing.assert_close(v["unused"], torch.zeros(4, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(v["lin.weight"], leap.gamma * ref["lin.weight"])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-2)])
def test_difference_quotient_matches_the_jvp_whatever_the_scales_of_theta_and_v(dtype, tolerance):
    # h = √ε·max(‖θ‖, 1)/‖v‖ makes the probe θ + h·v the same relative move for any ‖v‖ and ‖θ‖ (zero θ included).
    g = torch.Generator().manual_seed(3)
    for theta_scale in (0.0, 1.0, 10.0):
        model = torch.nn.Linear(5, 3).to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(theta_scale * torch.randn(p.shape, generator=g, dtype=dtype))
        x, y = torch.randn(10, 5, generator=g, dtype=dtype), torch.randint(0, 3, (10,), generator=g)
        vx, vy = torch.randn(7, 5, generator=g, dtype=dtype), torch.randint(0, 3, (7,), generator=g)
        look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=L.cross_entropy(model(x), y))
        v, _ = plain_direction(model, look.step(torch.ones(10, dtype=dtype)), vx, vy)
        for c in (1e-6, 1.0, 1e6):
            scaled = {k: c * t for k, t in v.items()}
            exact, cheap = look.weight_gradient(scaled, mode="jvp"), look.weight_gradient(scaled)
            assert exact.abs().max() > 0
            assert float((cheap - exact).norm() / exact.norm()) < tolerance, (theta_scale, c)


def test_weight_gradient_is_a_graph_free_tensor_of_the_parameters_dtype():
    model, x, y, vx, vy = _linear_meta_problem()
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=L.cross_entropy(model(x), y))
    v, _ = plain_direction(model, look.step(torch.ones(10, dtype=torch.float64)), vx, vy)
    for direction in (v, {k: torch.zeros_like(t) for k, t in v.items()}):
        grad_w = look.weight_gradient(direction)
        assert grad_w.dtype == torch.float64 and grad_w.shape == (10,)
        assert not grad_w.requires_grad and grad_w.grad_fn is None  # no path back into the real forward's graph


def test_lazy_direction_with_the_loss_criterion_picks_the_lowest_validation_loss():
    from lazyapps.teacher import LazyTeacher
    from longtail.reweighting import lazy_direction

    model, x, y, vx, vy = _linear_meta_problem()
    theta = {k: t.detach() for k, t in params_of(model).items()}
    gammas = (0.2, 0.5, 0.8)
    v, leap, val_loss = lazy_direction(model, theta, lambda predict: F.cross_entropy(predict(x), y), vx, vy, steps=1,
                                       lr=0.5, teacher=LazyTeacher(gammas=gammas, criterion="loss"))
    # by hand: one full-batch SGD step, then the validation loss of every γθ + (1 − γ)φ
    leaf = {k: t.clone().requires_grad_() for k, t in theta.items()}
    grads = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(model, leaf, (x,)), y), list(leaf.values()))
    phi = {k: theta[k] - 0.5 * gr for k, gr in zip(theta, grads)}
    losses = [float(F.cross_entropy(torch.func.functional_call(model, {k: gm * theta[k] + (1 - gm) * phi[k] for k in theta}, (vx,)), vy))
              for gm in gammas]
    assert [s for _, _, s in leap.scores] == pytest.approx(losses, rel=1e-12)
    assert leap.gamma == gammas[losses.index(min(losses))] and val_loss == pytest.approx(min(losses), rel=1e-12)
    ref, _ = plain_direction(model, {k: t.detach() for k, t in leap.params.items()}, vx, vy)
    torch.testing.assert_close(v, {k: leap.gamma * r for k, r in ref.items()})


def test_a_summed_virtual_loss_is_the_mean_form_at_n_times_the_lr():
    model, x, y, vx, vy = _linear_meta_problem()
    w = torch.rand(10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    summed = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.04, reduction="sum")
    mean = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4)
    torch.testing.assert_close(summed.step(w), mean.step(w))
    v, _ = plain_direction(model, summed.step(w), vx, vy)
    torch.testing.assert_close(summed.weight_gradient(v), mean.weight_gradient(v))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'max'"):
        LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, reduction="max")


def test_pull_back_from_the_real_forward_costs_one_forward_and_reuses_its_losses():
    # The documented cost: with the real forward's losses given, the directional difference runs the model once
    # (at θ + h·v) and takes ℓ_i(θ) from those losses; without them it needs ℓ_i(θ) too.
    model, x, y, vx, vy = _linear_meta_problem()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    losses = L.cross_entropy(model(x), y)
    look = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=losses)
    v, _ = plain_direction(model, look.step(torch.ones(10, dtype=torch.float64)), vx, vy)
    calls.clear()
    shared = look.weight_gradient(v)
    assert len(calls) == 1
    # the losses given are the ones the difference starts from: offsetting them offsets the result by α/N·c/h
    offset = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=losses + 1e-9).weight_gradient(v)
    assert not torch.allclose(offset, shared, rtol=0, atol=1e-3 * float(shared.abs().max()))
    calls.clear()
    alone = LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4).weight_gradient(v)
    assert len(calls) == 2 and torch.allclose(alone, shared, rtol=1e-6, atol=1e-12)


def test_virtual_step_differentiates_the_real_forwards_losses_without_a_forward_of_its_own():
    # The documented reuse: given losses with a graph, the step is one backward through them; without one, a forward.
    model, x, y, _, _ = _linear_meta_problem()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    losses = L.cross_entropy(model(x), y)
    w = torch.rand(10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    calls.clear()
    LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=losses).step(w)
    assert calls == []
    LookAhead(model, params_of(model), x, y, L.cross_entropy, lr=0.4, losses=losses.detach()).step(w)
    assert len(calls) == 1


def test_lazy_direction_with_one_checkpoint_runs_only_the_students_and_the_grids_forwards():
    # b = 1: the winning candidate's scoring graph gives the meta-gradient, no extra validation forward (docs/longtail.md)
    from lazyapps.teacher import LazyTeacher
    from longtail.reweighting import lazy_direction

    model, x, y, vx, vy = _linear_meta_problem()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    theta = {k: t.detach() for k, t in params_of(model).items()}
    teacher = LazyTeacher(gammas=(0.2, 0.5, 0.8), criterion="loss")
    lazy_direction(model, theta, lambda predict: F.cross_entropy(predict(x), y), vx, vy, steps=3, lr=0.5, teacher=teacher)
    assert len(calls) == 3 + 3  # 3 student steps, 3 γ candidates


def test_clipped_normalized_gives_zero_weights_when_no_example_helps():
    # L2RW's rule when every −∂L/∂w_i ≤ 0: all weights 0 (the step does nothing), not 0·(1/0) = NaN weights
    from longtail.reweighting import clipped_normalized

    for total in (1.0, torch.tensor(4.0)):
        got = clipped_normalized(torch.tensor([-1.0, 0.0, -2.0]), total=total)
        assert torch.equal(got, torch.zeros(3))
    assert torch.allclose(clipped_normalized(torch.tensor([-1.0, 1.0, 3.0]), total=2.0), torch.tensor([0.0, 0.5, 1.5]))


def test_validation_accuracy_scores_with_batch_statistics_and_leaves_the_buffers_alone(tiny_net):
    from longtail.reweighting import validation_accuracy

    model = tiny_net().train()
    vx, vy = _batch(40, 11)
    before = {k: v.clone() for k, v in model.named_buffers()}
    got = validation_accuracy(model, {k: t.detach() for k, t in params_of(model).items()}, vx, vy)
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())
    with torch.no_grad():
        expected = float((copy.deepcopy(model)(vx).argmax(1) == vy).float().mean())  # train mode: the batch's statistics
    assert got == expected
