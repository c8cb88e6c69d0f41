"""``lazyapps zoo list|train|eval`` through click's CliRunner."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lazyapps.cli import cli

import models_zoo


def invoke(*args: str):
    return CliRunner().invoke(cli, ["zoo", *args], catch_exceptions=False)


def test_list_shows_every_architecture_and_writes_json(tmp_path):
    out = tmp_path / "list.json"
    result = invoke("list", "--json", str(out))
    assert result.exit_code == 0
    for name in models_zoo.available():
        assert name in result.output
    assert "timm:<name>" in result.output
    rows = {row["name"]: row for row in json.loads(out.read_text())["metrics"]["models"]}
    assert rows["resnet32"]["params"] == "0.464M" and rows["net4"]["input"] == "1x28x28"
    assert rows["net4"]["params"] == f"{models_zoo.num_parameters(models_zoo.create('net4')) / 1e6:.3f}M"


def test_train_then_cached_then_eval(tmp_path, cache_dir):
    common = ["--arch", "mlp", "--dataset", "digits", "--epochs", "2", "--cache-dir", str(cache_dir), "--device", "cpu", "--quiet"]
    first_json = tmp_path / "first.json"
    first = invoke("train", *common, "--json", str(first_json))
    assert first.exit_code == 0, first.output
    assert "from_cache" in first.output and " no" in first.output
    result = json.loads(first_json.read_text())
    assert result["metrics"]["from_cache"] is False and result["config"]["arch"] == "mlp"
    accuracy = result["metrics"]["test_accuracy"]
    assert accuracy > 0.5

    second_json = tmp_path / "second.json"
    second = invoke("train", *common, "--json", str(second_json))
    assert second.exit_code == 0 and " yes" in second.output
    again = json.loads(second_json.read_text())
    assert again["metrics"]["from_cache"] is True and again["path"] == result["path"]

    eval_json = tmp_path / "eval.json"
    evaluated = invoke("eval", *common, "--json", str(eval_json))
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(eval_json.read_text())["metrics"]["accuracy"] == accuracy

    # The same model through --checkpoint: the zoo file, and its state dict given with --arch.
    by_file = invoke("eval", "--dataset", "digits", "--checkpoint", result["path"], "--quiet", "--json", str(eval_json))
    assert by_file.exit_code == 0 and json.loads(eval_json.read_text())["metrics"]["accuracy"] == accuracy
    state_path = tmp_path / "state.pt"
    torch.save(models_zoo.load_trained(result["path"]).model.state_dict(), state_path)
    by_state = invoke("eval", "--arch", "mlp", "--dataset", "digits", "--checkpoint", str(state_path), "--quiet", "--json", str(eval_json))
    assert by_state.exit_code == 0 and json.loads(eval_json.read_text())["metrics"]["accuracy"] == accuracy
    wrong = invoke("eval", "--arch", "net4", "--dataset", "digits", "--checkpoint", result["path"])
    assert wrong.exit_code != 0 and "holds a mlp model" in wrong.output
    # the state dict as ARCH:PATH, with the same --arch too, is the same model; another --arch, or --arch with a
    # file that carries its own network, is refused naming --arch (not a spec the user never typed)
    spelled = invoke("eval", "--arch", "mlp", "--dataset", "digits", "--checkpoint", f"mlp:{state_path}", "--quiet", "--json", str(eval_json))
    assert spelled.exit_code == 0 and json.loads(eval_json.read_text())["metrics"]["accuracy"] == accuracy
    clash = invoke("eval", "--arch", "net4", "--dataset", "digits", "--checkpoint", f"mlp:{state_path}")
    assert clash.exit_code == 2 and clash.output.strip() == f"Error: --checkpoint mlp:{state_path} names architecture mlp, --arch net4; drop --arch"
    scripted = tmp_path / "mlp.ts"
    with warnings.catch_warnings():  # (torch deprecates TorchScript; users' files are still TorchScript)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(models_zoo.load_trained(result["path"]).model), str(scripted))
    own = invoke("eval", "--arch", "mlp", "--dataset", "digits", "--checkpoint", str(scripted))
    assert own.exit_code == 2 and own.output.strip() == f"Error: --checkpoint {scripted} is a TorchScript file, which carries its own network; drop --arch"
    other_data = tmp_path / "other.npz"  # 3-channel 8x8 images: the digits MLP cannot take them
    rng = np.random.default_rng(0)
    np.savez(other_data, x_train=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y_train=np.arange(20) % 10,
             x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), y_test=np.arange(10))
    mismatch = invoke("eval", "--dataset", f"npz:{other_data}", "--checkpoint", result["path"])
    assert mismatch.exit_code == 2 and "cannot take 3x8x8 images" in mismatch.output and "Traceback" not in mismatch.output
    three = tmp_path / "three.npz"  # the digits' 1x8x8 images, 3 classes: the 10-class model would score a meaningless accuracy
    np.savez(three, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), y_test=np.arange(10) % 3)
    classes = invoke("eval", "--dataset", f"npz:{three}", "--checkpoint", result["path"])
    assert classes.exit_code == 2 and "gives outputs of shape (2, 10) for two 1x8x8 images, not one score for each of the dataset's 3 classes" in classes.output


def test_unknown_arch_is_one_line_without_traceback(cache_dir):
    for command in ("train", "eval"):
        result = invoke(command, "--arch", "nosuchnet", "--cache-dir", str(cache_dir))
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "unknown model 'nosuchnet'" in lines[0] and "net4" in lines[0]
        assert "Traceback" not in result.output


def test_eval_of_an_untrained_setting_says_how_to_train(cache_dir):
    result = invoke("eval", "--arch", "mlp", "--dataset", "digits", "--epochs", "7", "--cache-dir", str(cache_dir))
    assert result.exit_code == 2 and "lazyapps zoo train --arch mlp" in result.output and "Traceback" not in result.output


def test_missing_arch_and_corrupt_checkpoint_are_user_errors(tmp_path):
    missing = invoke("train", "--dataset", "digits")
    assert missing.exit_code == 2 and "--arch is required" in missing.output
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"garbage")
    result = invoke("eval", "--arch", "mlp", "--dataset", "digits", "--checkpoint", str(corrupt))
    assert result.exit_code == 2 and "cannot be read" in result.output and "Traceback" not in result.output


def test_list_family_train_epochs_force_and_eval_split_reach_the_run(tmp_path, cache_dir):
    listed = invoke("list", "--family", "mnist", "--json", str(tmp_path / "l.json"))
    assert listed.exit_code == 0, listed.output
    families = {row["family"] for row in json.loads((tmp_path / "l.json").read_text())["metrics"]["models"]}
    assert families == {"mnist"} and "resnet32" not in listed.output
    common = ["--arch", "mlp", "--dataset", "digits", "--epochs", "1", "--cache-dir", str(cache_dir), "--device", "cpu", "--quiet"]
    assert invoke("train", *common, "--json", str(tmp_path / "t.json")).exit_code == 0
    trained = json.loads((tmp_path / "t.json").read_text())
    assert trained["config"]["epochs"] == 1 and len(trained["metrics"]["history"]) == 1
    forced = invoke("train", *common, "--force", "--json", str(tmp_path / "f.json"))
    assert forced.exit_code == 0 and json.loads((tmp_path / "f.json").read_text())["metrics"]["from_cache"] is False
    from lazyapps.data import load_dataset

    data = load_dataset("digits")
    for split in ("train", "test"):
        result = invoke("eval", *common, "--split", split, "--json", str(tmp_path / f"{split}.json"))
        assert result.exit_code == 0, result.output
        row = next(line.split() for line in result.output.splitlines() if line.startswith("mlp"))
        assert row[2:4] == [split, str(len(getattr(data, split)))]
    # the model's accuracy on the images it was trained on is not its test accuracy
    accuracy = {split: json.loads((tmp_path / f"{split}.json").read_text())["metrics"]["accuracy"] for split in ("train", "test")}
    assert accuracy["train"] != accuracy["test"] and accuracy["test"] == json.loads((tmp_path / "f.json").read_text())["metrics"]["test_accuracy"]


def test_omniglot_is_refused_its_test_classes_are_not_its_training_classes(cache_dir, tmp_path):
    """Its test split is the evaluation alphabets: a zoo classifier's test accuracy there is chance by construction."""
    for command in ("train", "eval"):
        result = invoke(command, "--arch", "mlp", "--dataset", "omniglot", "--cache-dir", str(cache_dir),
                        "--data-dir", str(tmp_path / "empty"))  # (refused before any data is looked for)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert "omniglot cannot train a zoo classifier: its test split holds other classes" in result.output


def test_the_cache_key_sees_every_pixel_of_the_data():
    """A dataset changed in one image that a strided sample would skip must not reuse the other's cached model."""
    from lazyapps.data.splits import DatasetSplits, Split
    from models_zoo.training import data_fingerprint

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2000, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(2000) % 10

    def fingerprint(x):
        return data_fingerprint(DatasetSplits("npz:b.npz", Split(x, labels), Split(x[:10], labels[:10]),
                                              [str(c) for c in range(10)]))

    changed = images.clone()
    changed[1, 0, 3, 3] ^= 1  # one bit of one pixel of image 1
    assert fingerprint(images) == fingerprint(images.clone())
    assert fingerprint(changed) != fingerprint(images)


def test_every_training_flag_and_the_seed_reach_train_and_eval_finds_that_model(tmp_path, cache_dir):
    """Each flag of `zoo train` is the setting the model was trained (and cached) with, and `zoo eval` with the same
    flags finds that model; another --seed names another model, which was never trained."""
    flags = ["--arch", "mlp", "--dataset", "digits", "--epochs", "1", "--lr", "0.003", "--batch-size", "32",
             "--optimizer", "sgd", "--weight-decay", "0.0001", "--schedule", "cosine", "--augment", "--train-subset", "300",
             "--cache-dir", str(cache_dir), "--device", "cpu", "--quiet"]
    trained = invoke("train", *flags, "--seed", "3", "--json", str(tmp_path / "t.json"))
    assert trained.exit_code == 0, trained.output
    saved = json.loads((tmp_path / "t.json").read_text())
    config = saved["config"]
    assert {k: config[k] for k in ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", "augment",
                                   "train_subset", "seed")} == {
        "epochs": 1, "lr": 0.003, "batch_size": 32, "optimizer": "sgd", "weight_decay": 0.0001, "schedule": "cosine",
        "augment": True, "train_subset": 300, "seed": 3}
    found = invoke("eval", *flags, "--seed", "3", "--json", str(tmp_path / "e.json"))
    assert found.exit_code == 0, found.output
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["metrics"]["accuracy"] == saved["metrics"]["test_accuracy"] and evaluated["config"]["checkpoint"] == saved["path"]
    row = next(line.split() for line in trained.output.splitlines() if line.startswith("mlp"))
    assert row[:4] == ["mlp", "digits", "1", "300"]  # the table names the subset trained on, not "all"
    other_seed = invoke("eval", *flags)  # (--seed 0)
    assert other_seed.exit_code == 2 and "train it first (lazyapps zoo train --arch mlp --dataset digits" in other_seed.output


def test_eval_builds_a_state_dict_for_the_datasets_channels_and_classes(tmp_path):
    """--arch with a state dict: the network is built for the data (3 channels, 3 classes, 8x8), scored as by hand."""
    rng = np.random.default_rng(1)
    x_test, y_test = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), np.arange(12) % 3
    bundle = tmp_path / "rgb3.npz"
    np.savez(bundle, x_train=x_test, y_train=y_test, x_test=x_test, y_test=y_test)
    torch.manual_seed(0)
    net = models_zoo.create("mlp", num_classes=3, in_channels=3, image_size=8).eval()
    torch.save(net.state_dict(), tmp_path / "state.pt")
    out = tmp_path / "e.json"
    result = invoke("eval", "--arch", "mlp", "--dataset", f"npz:{bundle}", "--checkpoint", str(tmp_path / "state.pt"),
                    "--quiet", "--json", str(out))
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        logits = net(torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255)
    expected = float((logits.argmax(1) == torch.from_numpy(y_test)).double().mean())
    assert json.loads(out.read_text())["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12)
