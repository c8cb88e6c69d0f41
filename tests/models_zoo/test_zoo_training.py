"""Training, caching, loading and evaluating zoo models on real data."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

import models_zoo
from lazyapps.data import load_dataset
from lazyapps.errors import CheckpointError, LazyAppsError
from models_zoo.training import crop_flip, random_crop_flip, training_settings

# A small real run: LeNet-5 on the first 2,000 MNIST training images, one epoch.
MNIST_RUN = dict(epochs=1, train_subset=2000, batch_size=64, device="cpu", quiet=True)
# Cheaper still for cache mechanics: an MLP on scikit-learn's 8x8 digits.
DIGITS_RUN = dict(epochs=2, device="cpu", quiet=True)


@pytest.fixture(scope="session")
def mnist_lenet(data_root, session_cache):
    return models_zoo.train("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache, **MNIST_RUN)


def test_training_on_real_mnist_beats_chance_clearly(mnist_lenet, data_root):
    assert not mnist_lenet.from_cache
    assert mnist_lenet.test_accuracy > 0.5  # chance is 0.1
    data = load_dataset("mnist", root=data_root)
    # The reported accuracy is the model's accuracy on the full test split, with images in [0, 1].
    assert models_zoo.evaluate(mnist_lenet.model, data.test) == pytest.approx(mnist_lenet.test_accuracy)
    torch.testing.assert_close(mnist_lenet.model.normalize.mean.flatten(), torch.tensor(data.mean, dtype=torch.float32))
    assert mnist_lenet.metadata["settings"]["train_subset"] == 2000
    assert not mnist_lenet.model.training


def test_second_call_loads_the_cached_model(mnist_lenet, data_root, session_cache):
    again = models_zoo.train("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache, **MNIST_RUN)
    assert again.from_cache and again.path == mnist_lenet.path
    assert again.metadata["train_time_s"] == mnist_lenet.metadata["train_time_s"]  # recorded once, at training
    for key, value in mnist_lenet.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value)
    loaded = models_zoo.load("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache,
                             **{k: v for k, v in MNIST_RUN.items() if k not in ("quiet",)})
    assert loaded.path == mnist_lenet.path and loaded.test_accuracy == mnist_lenet.test_accuracy


def test_every_setting_is_in_the_cache_key(data_root, session_cache):
    base = dict(epochs=1, train_subset=2000, batch_size=64)
    path = models_zoo.cache_path("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache, **base)
    assert path == models_zoo.cache_path("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache, **base)
    changes = [dict(epochs=2), dict(train_subset=1000), dict(batch_size=32), dict(lr=1e-2), dict(seed=1), dict(optimizer="sgd"),
               dict(weight_decay=1e-4), dict(augment=True), dict(schedule="cosine")]
    paths = {models_zoo.cache_path("lenet5", "mnist", data_dir=data_root, cache_dir=session_cache, **{**base, **change})
             for change in changes}
    paths.add(models_zoo.cache_path("net4", "mnist", data_dir=data_root, cache_dir=session_cache, **base))
    assert path not in paths and len(paths) == len(changes) + 1


def test_load_without_a_cached_model_says_how_to_train(data_root, cache_dir):
    with pytest.raises(CheckpointError, match="lazyapps zoo train --arch mlp --dataset digits"):
        models_zoo.load("mlp", "digits", cache_dir=cache_dir, epochs=2)


def test_corrupt_or_pickled_cache_file_is_rebuilt_with_a_warning(cache_dir):
    first = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
    first.path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
    assert not rebuilt.from_cache and rebuilt.path == first.path
    assert rebuilt.test_accuracy == pytest.approx(first.test_accuracy)  # same seed, same model
    # Loading is weights_only: a file holding pickled code (not just tensors) is refused, then rebuilt.
    torch.save({"model": torch.nn.Linear(2, 2)}, first.path)
    with pytest.warns(UserWarning, match="rebuilding"):
        again = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
    assert not again.from_cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN).from_cache


def test_a_cached_file_that_loads_but_holds_no_usable_model_is_rebuilt(cache_dir):
    first = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
    state = torch.load(first.path, weights_only=True)
    for broken in ({"x": torch.zeros(1)}, {**state, "model": {"w": torch.zeros(2)}},
                   {k: v for k, v in state.items() if k != "test_accuracy"}, {**state, "test_accuracy": "abc"}):
        torch.save(broken, first.path)
        with pytest.warns(UserWarning, match="rebuilding"):
            rebuilt = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
        assert not rebuilt.from_cache and rebuilt.test_accuracy == pytest.approx(first.test_accuracy)


def test_a_diverging_training_caches_nothing(cache_dir):
    from lazyapps.errors import DivergedError

    with pytest.raises(DivergedError, match="training diverged in epoch 1 .*nothing was cached"):
        models_zoo.train("mlp", "digits", cache_dir=cache_dir, **{**DIGITS_RUN, "lr": 1e30})
    assert not models_zoo.cache_path("mlp", "digits", cache_dir=cache_dir, epochs=2, lr=1e30).exists()


def test_a_network_that_does_not_fit_the_data_is_named_before_training():
    from models_zoo import check_outputs

    fixed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # like a fixed-size timm net
    with pytest.raises(LazyAppsError, match="net cannot take 1x28x28 images"):
        check_outputs(fixed, (1, 28, 28), 10, what="net")
    with pytest.raises(LazyAppsError, match="gives outputs of shape \\(2, 10\\) .* each of the dataset's 5 classes"):
        check_outputs(fixed, (3, 32, 32), 5, what="net")
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    bn.train()
    check_outputs(bn, (1, 8, 8), 4)
    assert bn.training and int(bn[1].num_batches_tracked) == 0  # the probe leaves the mode and statistics alone
    # A CIFAR network (3-channel statistics in front) given MNIST: broadcasting made 3 channels of the 1 and the
    # accuracy came out silently; a network with one statistic for every channel still takes any count.
    cifar_net = models_zoo.with_normalization(models_zoo.create("lenet5", num_classes=10, in_channels=3), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    with pytest.raises(LazyAppsError, match=r"cannot take 1x28x28 images .*normalised for 3 channels"):
        check_outputs(cifar_net, (1, 28, 28), 10, what="net")
    check_outputs(cifar_net, (3, 28, 28), 10)
    check_outputs(models_zoo.with_normalization(models_zoo.create("lenet5", num_classes=10, in_channels=3), (0.5,), (0.25,)), (3, 28, 28), 10)


def test_force_retrains(cache_dir):
    first = models_zoo.train("mlp", "digits", cache_dir=cache_dir, **DIGITS_RUN)
    forced = models_zoo.train("mlp", "digits", cache_dir=cache_dir, force=True, **DIGITS_RUN)
    assert not forced.from_cache and forced.path == first.path


def test_bad_training_settings_are_user_errors(cache_dir):
    with pytest.raises(LazyAppsError, match="optimizer"):
        training_settings("net4", optimizer="rmsprop")
    with pytest.raises(LazyAppsError, match="few-shot"):
        training_settings("sine_mlp")
    for name, value in (("lr", float("nan")), ("lr", float("inf")), ("weight_decay", -1.0), ("momentum", float("nan"))):
        with pytest.raises(LazyAppsError, match="learning rate a positive number" if name == "lr" else name.replace("_", " ")):
            training_settings("net4", **{name: value})
    with pytest.raises(LazyAppsError, match=r"the training subset \(--train-subset\) must be a positive number of images, got 0"):
        training_settings("net4", train_subset=0)
    with pytest.raises(LazyAppsError, match="only 1437"):
        models_zoo.train("mlp", "digits", cache_dir=cache_dir, train_subset=5000, **DIGITS_RUN)


def test_family_defaults_and_augmentation_default():
    mnist = training_settings("net4", "mnist")
    assert (mnist["optimizer"], mnist["lr"], mnist["augment"]) == ("adam", 1e-3, False)
    cifar = training_settings("resnet32", "cifar10")
    assert (cifar["optimizer"], cifar["lr"], cifar["weight_decay"], cifar["schedule"], cifar["augment"]) == ("sgd", 0.05, 5e-4, "cosine", True)
    # An architecture's own override (the VGGs' lr 0.01) sits between the family default and an explicit value.
    vgg = training_settings("vgg16", "cifar10")
    assert (vgg["lr"], vgg["optimizer"], vgg["schedule"]) == (0.01, "sgd", "cosine")
    assert training_settings("vgg16", "cifar10", lr=0.05)["lr"] == 0.05


def test_crop_flip_matches_a_per_image_reference():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 8, 8)
    top = torch.tensor([0, 4, 8, 2, 7, 4])
    left = torch.tensor([8, 4, 0, 5, 1, 4])
    flip = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(images, top, left, flip, padding=4)
    for i in range(6):
        padded = torch.zeros(3, 16, 16)
        padded[:, 4:12, 4:12] = images[i]
        expected = padded[:, top[i]:top[i] + 8, left[i]:left[i] + 8]
        if flip[i]:
            expected = expected.flip(-1)
        torch.testing.assert_close(out[i], expected)
    torch.testing.assert_close(out[5], images[5])  # centred offsets, no flip: unchanged
    random = random_crop_flip(images, generator=torch.Generator().manual_seed(1))
    assert random.shape == images.shape


def test_user_models_state_dict_torchscript_and_errors(mnist_lenet, tmp_path):
    x = torch.rand(4, 1, 28, 28)
    expected = mnist_lenet.model(x)
    # ARCH:STATE_DICT of the normalised model keeps its normalisation.
    state_path = tmp_path / "lenet.pt"
    torch.save(mnist_lenet.model.state_dict(), state_path)
    torch.testing.assert_close(models_zoo.load_user_model(f"lenet5:{state_path}")(x), expected)
    # A bare network's state dict plus the mean/std it was trained with.
    bare_path = tmp_path / "bare.pt"
    torch.save(mnist_lenet.model.net.state_dict(), bare_path)
    mean, std = mnist_lenet.model.normalize.mean.flatten().tolist(), mnist_lenet.model.normalize.std.flatten().tolist()
    torch.testing.assert_close(models_zoo.load_user_model(f"lenet5:{bare_path}", mean=mean, std=std)(x), expected)
    # TorchScript and torch.export programs carry their own code.
    script_path = tmp_path / "lenet.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export, still supported
        torch.jit.save(torch.jit.trace(mnist_lenet.model, x), str(script_path))
        torch.testing.assert_close(models_zoo.load_user_model(str(script_path))(x), expected)
    exported_path = tmp_path / "lenet.pt2"
    program = torch.export.export(mnist_lenet.model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(exported_path))
    exported = models_zoo.load_user_model(str(exported_path))
    torch.testing.assert_close(exported(x[:3]), expected[:3])
    assert exported.eval() is exported and exported.train() is exported  # callers may switch modes on any target
    images, labels = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
    assert models_zoo.evaluate(exported, (images, labels)) == models_zoo.evaluate(mnist_lenet.model, (images, labels))
    # The zoo checkpoint file itself.
    torch.testing.assert_close(models_zoo.load_user_model(str(mnist_lenet.path))(x), expected)
    # Mismatched architecture, corrupt file, missing file, plain state dict without an arch.
    with pytest.raises(CheckpointError, match="does not fit architecture 'net4'"):
        models_zoo.load_user_model(f"net4:{state_path}")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        models_zoo.load_user_model(f"lenet5:{corrupt}")
    with pytest.raises(CheckpointError, match="does not exist"):
        models_zoo.load_user_model(f"lenet5:{tmp_path / 'missing.pt'}")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        models_zoo.load_user_model(str(tmp_path))
    with pytest.raises(CheckpointError, match="ARCH:"):
        models_zoo.load_user_model(str(state_path))


def test_random_crop_flip_flips_about_half_and_crops_within_the_padding():
    images = torch.rand(400, 1, 5, 5)
    out = random_crop_flip(images, padding=0, generator=torch.Generator().manual_seed(3))
    flipped = [bool(torch.equal(o, x.flip(-1))) for o, x in zip(out, images)]
    assert all(f or torch.equal(o, x) for f, o, x in zip(flipped, out, images))  # padding 0: no shift
    assert 150 < sum(flipped) < 250  # p = 1/2
    shifted = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(4))
    assert sum(not torch.equal(o, x) and not torch.equal(o, x.flip(-1)) for o, x in zip(shifted, images)) > 300


def _record_fit(monkeypatch, settings, n):
    from torch import nn

    import models_zoo.training as T

    seen = {"lr": [], "rows": [], "opt": None}
    original = T._optimizer

    def recording(model, s):
        opt = original(model, s)
        opt.register_step_pre_hook(lambda o, args, kwargs: seen["lr"].append(o.param_groups[0]["lr"]))
        seen["opt"] = opt
        return opt

    monkeypatch.setattr(T, "_optimizer", recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model.register_forward_pre_hook(lambda m, args: seen["rows"].append(len(args[0])))
    images = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8)
    T.fit(model, images, torch.arange(n) % 3, settings, generator=torch.Generator().manual_seed(0))
    return seen


def test_fit_cosine_schedule_decays_per_step_to_zero_and_sgd_gets_the_weight_decay(monkeypatch):
    settings = {**training_settings("resnet32", "cifar10", epochs=2, batch_size=4, lr=0.2, weight_decay=1e-3), "augment": False}
    seen = _record_fit(monkeypatch, settings, 12)  # 3 steps per epoch, 6 in all
    total = 6
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    assert seen["lr"] == pytest.approx(expected)
    group = seen["opt"].param_groups[0]
    assert isinstance(seen["opt"], torch.optim.SGD) and group["weight_decay"] == 1e-3 and group["momentum"] == 0.9


def test_fit_uses_a_short_last_batch_but_skips_a_single_image(monkeypatch):
    settings = {**training_settings("net4", "mnist", epochs=1, batch_size=4), "augment": False}
    assert _record_fit(monkeypatch, settings, 10)["rows"] == [4, 4, 2]
    assert _record_fit(monkeypatch, settings, 9)["rows"] == [4, 4]
    assert _record_fit(monkeypatch, settings, 9)["lr"] == [1e-3, 1e-3]  # constant schedule


def test_check_outputs_leaves_an_eval_model_in_eval_mode():
    from models_zoo import check_outputs

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).eval()
    check_outputs(net, (1, 2, 2), 3)
    assert not any(m.training for m in net.modules())


def test_user_models_load_in_eval_mode_and_from_a_zoo_state_without_metadata(tmp_path):
    torch.manual_seed(0)
    net = models_zoo.create("conv4", track_running_stats=True)  # BatchNorm: train and eval outputs differ
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        net(x * 3)  # running statistics away from their initial values
        train_out = net(x)
        expected = net.eval()(x)
    assert not torch.allclose(train_out, expected)
    state_path = tmp_path / "state.pt"
    torch.save(net.state_dict(), state_path)
    loaded = models_zoo.load_user_model(f"conv4:{state_path}", track_running_stats=True)
    assert not any(m.training for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    # a zoo checkpoint's tensors file without its .json: the state dict under "model"
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, wrapped)
    with torch.no_grad():
        torch.testing.assert_close(models_zoo.load_user_model(f"conv4:{wrapped}", track_running_stats=True)(x), expected)
    script_path = tmp_path / "net.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net.train()), str(script_path))  # saved in training mode
        scripted = models_zoo.load_user_model(str(script_path))
    assert not scripted.training
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected)


def test_timm_specs_split_at_the_last_colon(tmp_path):
    from models_zoo.user_models import _split_spec

    assert models_zoo.user_model_arch("timm:resnet10t:/some/weights.pt") == "timm:resnet10t"
    assert _split_spec("timm:resnet10t:/some/weights.pt") == ("timm:resnet10t", Path("/some/weights.pt"))


def test_a_torch_export_program_for_a_fixed_batch_is_one_line(tmp_path):
    # torch.export.export without dynamic_shapes fixes the batch size; every batch of another size then failed
    # deep inside the program (an AssertionError traceback from `zoo eval`), so loading names the fix instead.
    net = models_zoo.create("mlp").eval()
    x = torch.rand(2, 1, 28, 28)
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(fixed))
    with pytest.raises(CheckpointError, match=r"fixed batch of 2 images.*dynamic batch dimension"):
        models_zoo.load_user_model(str(fixed))
    dynamic = tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)), str(dynamic))
    with torch.no_grad():
        torch.testing.assert_close(models_zoo.load_user_model(str(dynamic))(x[:1]), net(x[:1]))


def test_evaluate_scores_in_eval_mode_and_restores_the_mode():
    # The reported test accuracy is the eval-mode model's: BatchNorm with its running statistics, which scoring
    # must not update. Here eval mode predicts class 2 for every image (running mean -100 on its logit), while
    # batch statistics would spread the predictions over the three classes.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        model[2].running_mean.copy_(torch.tensor([0.0, 0.0, -100.0]))
    images = torch.randint(0, 256, (60, 1, 2, 2), dtype=torch.uint8)
    labels = torch.full((60,), 2)
    for training in (True, False):
        model.train(training)
        assert models_zoo.evaluate(model, (images, labels), batch_size=16) == 1.0
        assert model.training == training and all(m.training == training for m in model.modules())
    assert model[2].running_mean.tolist() == [0.0, 0.0, -100.0] and int(model[2].num_batches_tracked) == 0


def test_the_seed_decides_the_trained_model(cache_dir):
    run = dict(DIGITS_RUN, epochs=1, train_subset=256)
    first = models_zoo.train("mlp", "digits", cache_dir=cache_dir, seed=1, **run)
    again = models_zoo.train("mlp", "digits", cache_dir=cache_dir, seed=1, force=True, **run)
    other = models_zoo.train("mlp", "digits", cache_dir=cache_dir, seed=2, **run)
    weights = [m.model.state_dict()["net.layers.1.weight"] for m in (first, again, other)]  # the first layer's
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0)  # the same seed: the same model
    assert not torch.allclose(weights[2], weights[0])  # another seed: another initialisation and batch order


def test_user_model_arch_names_the_architecture_a_spec_holds(mnist_lenet, tmp_path):
    assert models_zoo.user_model_arch(str(mnist_lenet.path)) == "lenet5"  # recorded in the zoo checkpoint
    assert models_zoo.user_model_arch(f"net4:{tmp_path / 'w.pt'}") == "net4"
    script_path = tmp_path / "lenet.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(mnist_lenet.model, torch.rand(1, 1, 28, 28)), str(script_path))
    assert models_zoo.user_model_arch(str(script_path)) is None  # its own code, no zoo name


def test_a_normalised_rgb_state_dict_keeps_its_own_mean_and_std(tmp_path):
    """Saved normalisation wins over mean/std given for a bare network, for every channel."""
    from models_zoo.normalize import with_normalization

    torch.manual_seed(0)
    model = with_normalization(models_zoo.create("mlp", in_channels=3, image_size=8), [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]).eval()
    path = tmp_path / "rgb.pt"
    torch.save(model.state_dict(), path)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        for extra in ({}, {"mean": [0.9, 0.9, 0.9], "std": [5.0, 5.0, 5.0]}):
            loaded = models_zoo.load_user_model(f"mlp:{path}", in_channels=3, image_size=8, **extra)
            torch.testing.assert_close(loaded(x), expected)


def test_user_model_specs_and_files_that_are_refused_say_why(tmp_path):
    with pytest.raises(LazyAppsError, match="give both mean and std"):
        models_zoo.load_user_model(f"net4:{tmp_path / 'w.pt'}", mean=[0.5])
    with pytest.raises(CheckpointError, match="'net4:' names no file after 'net4:'"):
        models_zoo.load_user_model("net4:")
    not_weights = tmp_path / "run.pt"
    torch.save({"epoch": 3, "lr": 0.1}, not_weights)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        models_zoo.load_user_model(f"mlp:{not_weights}")
    net = models_zoo.create("mlp").eval()
    script_path = tmp_path / "mlp.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(script_path))
    with pytest.raises(CheckpointError, match="is a TorchScript file, not a state dict.*without 'mlp:'"):
        models_zoo.load_user_model(f"mlp:{script_path}")


def test_a_loaded_torch_export_program_reports_eval_mode(tmp_path):
    net = models_zoo.create("mlp").eval()
    path = tmp_path / "mlp.pt2"
    x = torch.rand(2, 1, 28, 28)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)), str(path))
    assert not models_zoo.load_user_model(str(path)).training


def test_zero_epochs_or_a_zero_batch_size_are_refused():
    # (zero epochs would cache an untrained model as trained; a zero batch size divides by zero in the loop)
    for name in ("epochs", "batch_size"):
        with pytest.raises(LazyAppsError, match="epochs and batch size must be at least 1"):
            training_settings("net4", **{name: 0})


def test_fit_history_is_the_mean_loss_and_accuracy_over_the_images_trained_on():
    from torch import nn

    from models_zoo.training import fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    # a learning rate so small the model stays put: the epoch's numbers are those of the fixed model on all 10 images
    settings = {**training_settings("net4", "mnist", epochs=1, batch_size=4, optimizer="sgd", lr=1e-12, momentum=0.0), "augment": False}
    with torch.no_grad():
        logits = model(images.float() / 255)
    (epoch,) = fit(model, images, labels, settings, generator=torch.Generator().manual_seed(0))
    assert epoch["train_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)  # batches 4, 4, 2
    assert epoch["train_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    # 9 images: the single leftover image is skipped, so the accuracy is over the 8 trained on
    (epoch,) = fit(model, images[:9], logits[:9].argmax(1), settings, generator=torch.Generator().manual_seed(0))
    assert epoch["train_accuracy"] == 1.0


def test_fit_visits_every_image_once_per_epoch_in_a_fresh_random_order():
    settings = {**training_settings("net4", "mnist", epochs=2, batch_size=4), "augment": False}
    from torch import nn

    import models_zoo.training as T

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    seen: list = []
    model.register_forward_pre_hook(lambda m, args: seen.extend(args[0].flatten(1).tolist()))
    images = torch.arange(12 * 4, dtype=torch.uint8).view(12, 1, 2, 2)  # image i holds 4i .. 4i + 3
    T.fit(model, images, torch.arange(12) % 3, settings, generator=torch.Generator().manual_seed(0))
    order = [round(row[0] * 255) // 4 for row in seen]
    first, second = order[:12], order[12:]
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != list(range(12)) and first != second


def test_evaluate_takes_float_images_in_0_1_as_it_takes_uint8():
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # class 0 where the pixels sum past 0.5 (in [0, 1] units), else class 1
        model[1].weight.copy_(torch.tensor([[1.0] * 4, [0.0] * 4]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5]))
    images = torch.randint(0, 80, (40, 1, 2, 2), dtype=torch.uint8)
    labels = (images.flatten(1).float().sum(1) / 255 <= 0.5).long()
    assert 0 < int(labels.sum()) < 40
    assert models_zoo.evaluate(model, (images, labels)) == 1.0
    assert models_zoo.evaluate(model, (images.float() / 255, labels)) == 1.0


def test_adam_gets_the_weight_decay_asked_for(monkeypatch):
    settings = {**training_settings("net4", "mnist", epochs=1, batch_size=4, weight_decay=1e-3), "augment": False}
    opt = _record_fit(monkeypatch, settings, 8)["opt"]
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 1e-3


def test_the_data_fingerprint_sees_the_labels_too():
    """A dataset relabelled (same pixels) must not reuse the model trained on the old labels."""
    from lazyapps.data.splits import DatasetSplits, Split
    from models_zoo.training import data_fingerprint

    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 2
    relabelled = labels.clone()
    relabelled[7] = 1 - relabelled[7]

    def fingerprint(y):
        return data_fingerprint(DatasetSplits("npz:b.npz", Split(images, y), Split(images[:4], labels[:4]), ["a", "b"]))

    assert fingerprint(labels) == fingerprint(labels.clone()) and fingerprint(relabelled) != fingerprint(labels)


def test_the_documented_epoch_defaults_are_the_ones_used():
    """`zoo train --epochs`'s help: "3 for MNIST-sized nets, 30 for CIFAR nets"."""
    from models_zoo.cli import train_command

    (help_text,) = [p.help for p in train_command.params if p.name == "epochs"]
    assert "3 for MNIST-sized nets, 30 for CIFAR nets" in help_text
    assert training_settings("net4", "mnist")["epochs"] == 3 and training_settings("resnet32", "cifar10")["epochs"] == 30


def test_train_subset_trains_on_the_first_images(monkeypatch, cache_dir):
    import models_zoo.training as T

    seen = {}

    def recording_fit(model, images, labels, settings, **kwargs):
        seen["images"], seen["labels"] = images, labels
        return []

    monkeypatch.setattr(T, "fit", recording_fit)
    models_zoo.train("mlp", "digits", cache_dir=cache_dir, train_subset=100, **DIGITS_RUN)
    data = load_dataset("digits")
    assert torch.equal(seen["images"], data.train.images[:100]) and torch.equal(seen["labels"], data.train.labels[:100])
