"""train_text: the stdlib corpus split is deterministic, the four models have about the same
parameter count at the default config, and a tiny run writes its manifest and a finite
bits per byte through the task's own code path."""

import json
import math

import pytest

from experiments.config import ConfigError
from experiments.tasks import train_text


def test_the_split_is_deterministic_and_by_path():
    paths = train_text.corpus_files(train_text.stdlib_root())
    assert paths == sorted(paths) and len(paths) > 100
    assert not any(p.startswith(("site-packages/", "test/")) or "/tests/" in p for p in paths)
    split = train_text.split_files(paths, 0.1)
    assert split == train_text.split_files(list(reversed(paths)), 0.1)  # order does not matter
    assert sorted(split["train"] + split["heldout"]) == paths
    assert 0.03 < len(split["heldout"]) / len(paths) < 0.2
    # a file's side depends on its path alone, not on which other files exist
    subset = paths[::3]
    assert train_text.split_files(subset, 0.1)["heldout"] == [
        p for p in split["heldout"] if p in set(subset)
    ]
    assert train_text.split_files(paths, 0.1, max_files=2)["train"] == split["train"][:2]


def test_default_models_have_equal_parameter_counts():
    cfg = train_text.Config()
    dims = train_text.head_dims(cfg)
    counts = {name: train_text.abstract_count(name, dims[name], cfg) for name in cfg.models}
    assert set(counts) == set(train_text.MODELS)
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


def test_tiny_run_writes_the_manifest_and_a_finite_bits_per_byte(tiny_run):
    run_dir, results = tiny_run(
        "train_text",
        "models=[softmax] lengths=[32] steps=3 warmup_steps=1 eval_every=2 d_model=8",
        "num_layers=1 conv_width=0 batch_tokens=64 eval_tokens=64 max_files=2 checkpoint_every=0",
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [f["split"] for f in manifest["files"]] == ["train"] * 2 + ["heldout"] * 2
    assert all(f["bytes"] > 0 for f in manifest["files"]) and manifest["python_version"]
    assert manifest["bytes"]["train"] == sum(f["bytes"] for f in manifest["files"][:2])
    (row,) = results["table"]
    assert row["model"] == "softmax" and row["length"] == 32
    assert math.isfinite(row["bits_per_byte"]) and 0 < row["bits_per_byte"] < 16
    assert row["tokens_per_s"] > 0
    assert (run_dir / "units" / "softmax-L32.json").is_file()
    assert (run_dir / "plots" / "bits_per_byte.png").is_file()


@pytest.mark.parametrize(
    "params,match",
    [
        ({"lengths": [8192]}, "batch_tokens"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"warmup_steps": 500}, "warmup_steps"),
        ({"d_model": 63}, "d_model"),
        ({"lengths": [1]}, "lengths"),
    ],
)
def test_bad_config_values_name_the_key(params, match):
    with pytest.raises(ConfigError, match=match):
        train_text.Config(**params)
