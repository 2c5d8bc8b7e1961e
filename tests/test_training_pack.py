"""Training packs (training.pack, training.datasets.packed): a recipe's samples and cloud layers in one file, served
exactly as the readers return them, to a training run on a machine without the data or GDAL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from tests.helpers_rasters import write_tiny_sen12
from training import pack
from training.datasets import build_reader, cloud_bank, packed

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
ROOT = Path(__file__).resolve().parents[1]
TINY_LITE = ('{ num_feat = 8, num_blocks = 1, rdb_layers = 2, growth = 4, fe_blocks = 1, fe_expand = 2, '
             'pyramid_channels = [8, 8], deformable_groups = 2, num_heads = 2, window_size = 4, up_feat = 8, '
             'prior = true }')  # fmt: skip


@pytest.fixture(autouse=True)
def _closed():
    yield
    packed.use(None)


def _recipe(tmp_path: Path, data: Path, real_clouds: bool = False) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[model]
name = "aligncr-res"
overrides = {TINY_LITE}

[data]
crop = 16
batch_size = 2
samples_per_epoch = 4
real_clouds = {str(real_clouds).lower()}

[[data.train]]
kind = "sen12mscr"
root = "{data}"
exclude = ["2"]

[[data.train]]
kind = "sen12mscr"
root = "{data}"
include = ["0", "1"]
as_clear = true

[[data.val]]
kind = "sen12mscr"
root = "{data}"
include = ["2"]

[run]
device = "cpu"
threads = 1
val_every = 2
ckpt_every_steps = 0
ckpt_every_minutes = 0
progress = false

[card]
training_data = "synthetic test triplets"
""")
    return recipe


def _specs(recipe: Path) -> list[dict]:
    from training.config import load_config

    cfg = load_config(recipe)
    return [*cfg.data.train, *cfg.data.val]


def test_every_sample_comes_back_exactly_as_its_reader_returns_it(tmp_path: Path) -> None:
    data = write_tiny_sen12(tmp_path / "sen12")
    recipe = _recipe(tmp_path, data)
    index = pack.build(recipe, tmp_path / "p.npz")
    assert [len(r["ids"]) for r in index["readers"]] == [2, 2, 1] and index["bank"] == {}
    specs = _specs(recipe)
    from_files = [build_reader(s, cache=False) for s in specs]
    packed.use(tmp_path / "p.npz")
    for spec, files in zip(specs, from_files):
        reader = build_reader(spec)
        assert isinstance(reader, packed.PackedReader) and len(reader) == len(files)
        assert getattr(reader, "kind", "real") == getattr(files, "kind", "real")
        assert getattr(reader, "synthetic", None) == getattr(files, "synthetic", None)
        assert cloud_bank.source_of(reader) == cloud_bank.source_of(files) == "sen12mscr"
        for i in range(len(files)):
            want, got = files.read(i), reader.read(i)
            assert reader.sample_id(i) == files.sample_id(i) and set(got) == set(want)
            for key, value in want.items():
                if key == "id":
                    assert got[key] == value
                    continue
                assert got[key].dtype == np.asarray(value).dtype and np.array_equal(got[key], value), key
    # a clear pair's optical image is its target, stored once
    with np.load(tmp_path / "p.npz") as z:
        assert "r1/0/target" in z.files and "r1/0/optical" not in z.files and "r0/0/optical" in z.files


def test_a_dataset_the_pack_does_not_hold_is_refused_in_one_line(tmp_path: Path) -> None:
    data = write_tiny_sen12(tmp_path / "sen12")
    recipe = _recipe(tmp_path, data)
    pack.build(recipe, tmp_path / "p.npz")
    packed.use(tmp_path / "p.npz")
    with pytest.raises(InputError, match="has no dataset .*rebuild it for this recipe"):
        build_reader({"kind": "sen12mscr", "root": str(data), "include": ["1"]})
    with pytest.raises(InputError, match="no cloud bank 'train' split"):
        cloud_bank.bank("train")
    with pytest.raises(InputError, match="training pack not found"):
        packed.use(tmp_path / "missing.npz")


def test_cloud_layers_come_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_tiny_sen12(tmp_path / "sen12")
    rng = np.random.default_rng(0)
    cloud = np.zeros((32, 32), bool)
    cloud[8:20, 4:30] = True
    clear = rng.uniform(0.02, 0.3, (4, 32, 32)).astype(np.float32)  # not DN / 10⁴: stored as float32, exactly
    cloudy = np.where(cloud[None], 0.8, clear * 0.6).astype(np.float32)  # a cloud and its shadow beside it
    layers = {split: (cloud_bank.layer_from(f"{split}-a", "scene-a", cloudy, cloud, clear, "ssl4eo"),)
              for split in ("train", "select")}  # fmt: skip
    monkeypatch.setattr(cloud_bank, "_bank_from_files", lambda split, data: layers[split])
    pack.build(_recipe(tmp_path, data, real_clouds=True), tmp_path / "p.npz")
    packed.use(tmp_path / "p.npz")
    for split in ("train", "select"):
        (got,) = cloud_bank.bank(split)
        want = layers[split][0]
        assert (got.id, got.scene, got.source) == (want.id, want.scene, want.source)
        for field in packed.LAYER_FIELDS:
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert float(layers["train"][0].shadow.max()) > 0  # the shadow travelled too


def test_training_runs_from_the_pack_alone_without_gdal(tmp_path: Path) -> None:
    """The device tool's GPU machine has neither ../shared/data nor rasterio: a run from the pack needs neither."""
    data = write_tiny_sen12(tmp_path / "sen12")
    recipe = _recipe(tmp_path, data)
    pack.build(recipe, tmp_path / "p.npz")
    shutil.rmtree(data)  # nothing of the data's own files is left
    script = ("import sys; sys.modules['rasterio'] = None\n"  # any import of rasterio now fails
              "from training.train import main\n"
              "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script, "--config", str(recipe), "--pack", str(tmp_path / "p.npz"),
                          "--max-steps", "2", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and np.isfinite(summary["last_loss"])
    assert (tmp_path / "run" / "val_log.csv").is_file() and (tmp_path / "run" / "best.safetensors").is_file()


def test_the_pack_command_reports_and_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_sen12(tmp_path / "sen12")
    recipe = _recipe(tmp_path, data)
    assert pack.main(["--config", str(recipe), "--out", str(tmp_path / "nope" / "p.npz")]) == 2
    assert "folder of --out does not exist" in capsys.readouterr().err
    assert pack.main(["--config", str(recipe), "--out", str(tmp_path / "p.npz")]) == 0
    assert "5 samples, 0 cloud layers" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
