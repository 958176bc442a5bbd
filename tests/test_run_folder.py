"""The run folder's one owner: its config.json schema, old runs still loading, damaged ones refused in one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.errors import MedclsError
from medcls.run_folder import SCHEMA, RunConfig, RunFolder
from tests.conftest import run_cli

# config.json (and metrics.json) files written by medcls before the schema number existed (schema 0):
# a refit AlexNet on BreastMNIST, a 2.5-D AlexNet on AdrenalMNIST3D, a classical run and an ensemble.
OLD = Path(__file__).parent / "fixtures" / "runs_v0"


def _old_run(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(OLD / name, root)
    return root


def _weights_for(folder: RunFolder, seed: int = 0) -> None:
    """Weights that fit the run's model (the old run's own are too big to keep in the repository)."""
    import torch

    from medcls.models import create_model
    from medcls.train.checkpoint import save_weights

    m = folder.read_config().model
    torch.manual_seed(seed)
    save_weights(create_model(m.name, num_classes=m.num_outputs, in_channels=m.in_channels,
                              input_size=m.input_size, **m.kwargs), folder.best)


def test_old_cnn_runs_load_predict_and_evaluate(medmnist_dir, tmp_path, capsys):
    root = _old_run("cnn_refit", tmp_path)
    folder = RunFolder(root)
    cfg = folder.read_config()
    old = json.loads((OLD / "cnn_refit" / "config.json").read_text())
    assert cfg.kind == "cnn" and cfg.refit.epoch == old["refit"]["epoch"] and cfg.refit.selection == "selection"
    # the schedule sat in train as *_resolved: it is read into its own section, train keeps TrainConfig's fields
    assert cfg.schedule.epochs == old["train"]["epochs_resolved"] and cfg.schedule.lr == old["train"]["lr_resolved"]
    assert not any(k.endswith("_resolved") for k in cfg.train)
    assert cfg.preparation.crop is False and cfg.preparation.modality == "us"
    _weights_for(folder)
    _weights_for(folder.selection, seed=1)
    z = np.load(medmnist_dir / "breastmnist.npz")
    Image.fromarray(z["test_images"][0]).save(tmp_path / "a.png")
    rc, out, err = run_cli(["predict", root, tmp_path / "a.png", "--json"], capsys)
    assert rc == 0, err
    assert set(json.loads(out)[0]["probabilities"]) == set(cfg.data.class_names)
    rc, _, err = run_cli(["evaluate", root, "--data-dir", medmnist_dir], capsys)
    assert rc == 0, err
    assert json.loads(folder.metrics.read_text())["test"]["n"] == 156
    rc, _, err = run_cli(["evaluate", root, "--split", "val", "--data-dir", medmnist_dir], capsys)
    assert rc == 2 and "val split is training data" in err
    # a config written again is schema 1 and reads back the same
    folder.write_config(cfg)
    assert json.loads(folder.config.read_text())["schema"] == SCHEMA
    assert folder.read_config() == cfg

    vol = _old_run("cnn_25d", tmp_path)
    _weights_for(RunFolder(vol))
    rc, _, err = run_cli(["evaluate", vol, "--data-dir", medmnist_dir], capsys)
    assert rc == 0, err
    assert json.loads(RunFolder(vol).metrics.read_text())["test"]["n"] == 298  # volumes, not slice stacks


def test_old_classical_and_ensemble_runs_load(medmnist_dir, tmp_path, capsys):
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from medcls.classical import save_pipeline
    from medcls.features import make_features

    root = _old_run("classical", tmp_path)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (40, 1, 28, 28), dtype=np.uint8), np.arange(40) % 2
    save_pipeline(Pipeline([("features", make_features("hog")), ("scale", StandardScaler()),
                            ("clf", GaussianNB())]).fit(x, y), RunFolder(root).pipeline)
    rc, _, err = run_cli(["evaluate", root, "--data-dir", medmnist_dir], capsys)
    assert rc == 0, err

    cnn = _old_run("cnn_refit", tmp_path)
    _weights_for(RunFolder(cnn))
    ens = _old_run("ensemble", tmp_path)
    cfg = json.loads((ens / "config.json").read_text())
    cfg["members"] = [str(cnn), str(root)]
    (ens / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run_cli(["evaluate", ens, "--data-dir", medmnist_dir], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["evaluate", ens, "--split", "val", "--data-dir", medmnist_dir], capsys)
    assert rc == 2 and "averages a run trained again on train + val" in err


@pytest.mark.parametrize("content,says", [
    (b"{}", "no 'data' section"),
    (b"[1, 2]", "not a JSON object"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"kind": "cnn", "data": {"name": "x"}}', "data lacks source, task, class_names"),
    (b'{"kind": "cnn", "data": {"name": "x", "source": "", "task": "binary", "class_names": ["a", "b"]}}',
     "a CNN run needs model and preprocess"),
    (b'{"kind": "robot", "data": {}}', "unknown run kind 'robot'"),
    (b'{"schema": 99, "kind": "cnn", "data": {}}', "written by a newer medcls"),
    (b'{"kind": "cnn", "data": ', "corrupt run configuration"),
])
def test_a_damaged_config_is_one_line_naming_the_file(content, says, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(content)
    with pytest.raises(MedclsError, match="config.json: ") as exc:
        RunFolder(run).read_config()
    assert says in str(exc.value) and "\n" not in str(exc.value)
    for cmd in (["predict", run, tmp_path / "x.png"], ["evaluate", run], ["train", "--resume", run]):
        rc, _, err = run_cli(cmd, capsys)
        assert rc == 2 and says in err and "internal error" not in err, cmd


def test_run_config_round_trips():
    from medcls.modalities import Preparation
    from medcls.run_folder import DataInfo, ModelInfo, Preprocess, Refit, Schedule

    cfg = RunConfig(kind="cnn", data=DataInfo("d", "src", "binary", ["a", "b"], modality="CT", is_volume=True,
                                              volume_mode="2.5d", volume_slices=8, volume_axis=1),
                    train={"data": "d", "seed": 3}, model=ModelInfo("alexnet", 2, 3, 28, {"init": "kaiming"}),
                    preprocess=Preprocess(Preparation(modality="ct", ct_windows=("lung", "bone"), channels=2),
                                          [0.1, 0.2], [0.3, 0.4], hflip=False, augment="light"),
                    schedule=Schedule(10, 8, 32, 2.5e-4, 0.9), refit=Refit(4, 10, 32, 0.8, 100, 20), device="cpu")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["schema"] == SCHEMA and RunConfig.from_dict(d) == cfg
