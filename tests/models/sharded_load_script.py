"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_checkpoint_sharded.py.

Saves a random tiny Llama (split into several files), loads it with and without a mesh and checks
every parameter's sharding and every device's shard against the unsharded load.
"""

import tempfile

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jalign.models import Decoder, ModelConfig, load_hf, save_hf
from jalign.models.layers import logical_to_spec
from jalign.sharding import DEFAULT_RULES, MeshConfig, make_mesh

assert jax.device_count() == 8
cfg = ModelConfig("llama", vocab_size=256, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)
mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
with tempfile.TemporaryDirectory() as directory:
    save_hf(Decoder(cfg, rngs=nnx.Rngs(3)), directory, max_shard_bytes=30_000)
    whole = dict(nnx.to_flat_state(nnx.state(load_hf(directory), nnx.Param)))
    sharded = dict(nnx.to_flat_state(nnx.state(load_hf(directory, mesh=mesh, rules=DEFAULT_RULES), nnx.Param)))
assert whole.keys() == sharded.keys()
split = 0
for path, var in sharded.items():
    value = var.get_value()
    names = var.get_metadata()["out_sharding"]
    want = NamedSharding(mesh, logical_to_spec(tuple(names), value.shape, mesh, DEFAULT_RULES))
    assert value.sharding.is_equivalent_to(want, value.ndim), (path, value.sharding, want)
    expected = np.asarray(whole[path].get_value())
    for shard in value.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index], err_msg=str(path))
    split += value.addressable_shards[0].data.size < value.size
assert split >= 5, split  # embeddings, attention and MLP kernels are split (norms are not)
print("OK")
