"""Sharded safetensors: `save_hf` splits above a size limit, `load_hf` reads the index and loads
onto a mesh.

The independent references are transformers (it must load the split export and give the original
PyTorch model's logits) and `load_hf` without a mesh (the sharded load must hold the same values,
each device only its slice).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from hf_tiny import padded_batch, torch_logits
from jalign.models import load_hf, save_hf

HERE = pathlib.Path(__file__).parent


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_split_export_loads_in_transformers(family, hf_checkpoints, jalign_models, tmp_path):
    """A 20 kB limit splits the tiny model into several files; transformers reads them through the
    index and reproduces the original logits, and each file keeps under the limit (one tensor
    larger than the limit would get a file of its own; none is here)."""
    _, original = hf_checkpoints(family)
    limit = 20_000
    save_hf(jalign_models(family), str(tmp_path), max_shard_bytes=limit)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and set(index["weight_map"].values()) == set(files)
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert all((tmp_path / f).stat().st_size <= limit + 4096 for f in files)  # + the JSON header
    assert index["metadata"]["total_size"] == sum(sum(
        v.nbytes for v in _tensors(tmp_path / f).values()) for f in files)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), attn_implementation="eager", dtype=torch.float32).eval()
    tokens, mask, positions = padded_batch(seed=1)
    np.testing.assert_allclose(torch_logits(reloaded, tokens, mask, positions)[mask],
                               torch_logits(original, tokens, mask, positions)[mask], atol=1e-5, rtol=0)


def _tensors(path):
    from safetensors.numpy import load_file
    return load_file(str(path))


def test_loader_follows_the_index(hf_checkpoints, jalign_models, tmp_path):
    """With an index, only the files it names are read: a stray file beside them, holding a tensor
    the table does not know, is ignored (without an index every file is listed and it is refused);
    the values equal the single-file export's."""
    model = jalign_models("qwen2")
    save_hf(model, str(tmp_path), max_shard_bytes=20_000)
    save_file({"stray.weight": np.zeros(3, np.float32)}, str(tmp_path / "stray.safetensors"))
    again = load_hf(str(tmp_path))
    np.testing.assert_array_equal(again.embed[...], model.embed[...])
    np.testing.assert_array_equal(again.lm_head.kernel[...], model.lm_head.kernel[...])
    os.remove(tmp_path / "model.safetensors.index.json")
    with pytest.raises(ValueError, match="stray.weight"):
        load_hf(str(tmp_path))


def test_export_over_a_split_one_replaces_it(jalign_models, tmp_path):
    """Saving a single file where a split export was leaves no index or shard behind (transformers
    would otherwise follow the stale index)."""
    model = jalign_models("qwen2")
    save_hf(model, str(tmp_path), max_shard_bytes=20_000)
    save_hf(model, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_load_onto_eight_devices():
    """`load_hf(mesh=...)` on 8 simulated devices (fsdp=4 x tensor=2): every parameter has the
    sharding its logical names give, each device's shard equals that slice of the unsharded load,
    and a sharded parameter's shard on device 0 is smaller than the whole (see the script)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "sharded_load_script.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-4000:]
