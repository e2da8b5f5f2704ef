"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_sharded_build.py.

``python build_memory_script.py OUT VARIANT`` builds the tiny DPO run on an fsdp=8 mesh, VARIANT
``frozen`` (random init, frozen reference copy) or ``lora`` (loaded from a HF checkpoint, LoRA
adapters over the base), and prints one ``RESULT {json}`` line: device 0's peak bytes while
building, its bytes of the built state, the largest single tensor, and the large state arrays
that are fully replicated.

Device 0's bytes are sampled from ``jax.live_arrays()`` at every return from a function of the
jalign package (``sys.setprofile``): each live array counts its shard on device 0 (all of it when
replicated or placed there). Every array that build keeps, or that lives across a jalign call, is
seen; a temporary created and freed within one call of jax or flax code is not (XLA's own
scratch memory during a jit is never visible this way).
"""

import dataclasses
import gc
import json
import math
import pathlib
import sys

import jax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_experiment import experiment  # noqa: E402
from jalign.models import Decoder, ModelConfig, save_hf  # noqa: E402
from jalign.sharding import MeshConfig  # noqa: E402
from jalign.train import loop  # noqa: E402

ARCH = ModelConfig("llama", vocab_size=300, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                   head_dim=16, mlp_dim=128)
DEVICE = jax.devices()[0]


def device0_bytes(array) -> int:
    """Bytes of ``array`` held on device 0: its shard there, or nothing."""
    if array.is_deleted() or DEVICE not in array.sharding.device_set:
        return 0
    shape = array.sharding.shard_shape(array.shape)
    itemsize = 8 if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key) else array.dtype.itemsize
    return math.prod(shape) * itemsize


def full_bytes(array) -> int:
    itemsize = 8 if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key) else array.dtype.itemsize
    return array.size * itemsize


def main(out: pathlib.Path, variant: str) -> None:
    exp = experiment(out, 2)
    exp = dataclasses.replace(exp, mesh=MeshConfig(data=1, fsdp=8))
    if variant == "lora":
        save_hf(Decoder(ARCH, rngs=nnx.Rngs(0)), str(out / "hf"))
        model = dataclasses.replace(exp.model, arch=None, hf_dir=str(out / "hf"), lora_rank=4, lora_alpha=8.0)
    else:
        model = dataclasses.replace(exp.model, arch=ARCH)
    exp = dataclasses.replace(exp, model=model)
    gc.collect()
    before = {id(a) for a in jax.live_arrays()}
    peak = 0

    def sample(frame, event, _):
        nonlocal peak
        if event == "return" and "/jalign/" in frame.f_code.co_filename:
            peak = max(peak, sum(device0_bytes(a) for a in jax.live_arrays() if id(a) not in before))

    sys.setprofile(sample)
    try:
        run = loop.build(exp)
    finally:
        sys.setprofile(None)
    built = [x for x in jax.tree.leaves((run.state, run.frozen)) if isinstance(x, jax.Array)]
    replicated = [list(x.shape) for x in built if x.sharding.is_fully_replicated and full_bytes(x) > 4096]
    result = {"peak": peak, "state": sum(device0_bytes(x) for x in built),
              "largest": max(full_bytes(x) for x in built), "whole": sum(full_bytes(x) for x in built),
              "replicated": replicated, "trained": sum(full_bytes(x) for x in jax.tree.leaves(run.state.params))}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    assert jax.device_count() == 8
    main(pathlib.Path(sys.argv[1]), sys.argv[2])
