"""One of two processes (2 CPU devices each) run by test_sharded_build.py: ``python
build_two_processes_script.py OUT``.

Builds the LoRA run from the HF checkpoint ``OUT/hf`` with the reference precomputed (so the
checkpoint is loaded across processes and the reference scored by the sharded model), on an
fsdp=4 mesh spanning both processes, then exports the merged policy as split safetensors to
``OUT/export`` (every process gathers, process 0 writes).
"""

import dataclasses
import pathlib
import sys

import jax
from jax.experimental import multihost_utils

from jalign.models import lora, save_hf
from jalign.sharding import MeshConfig, initialize

sys.path.insert(0, str(pathlib.Path(__file__).parent))
assert initialize()
from tiny_experiment import experiment  # noqa: E402
from jalign.train import loop  # noqa: E402

out = pathlib.Path(sys.argv[1])
exp = experiment(out, 2)
exp = dataclasses.replace(
    exp, mesh=MeshConfig(data=1, fsdp=4),
    model=dataclasses.replace(exp.model, arch=None, hf_dir=str(out / "hf"), lora_rank=4),
    train=dataclasses.replace(exp.train, reference="precomputed", out_dir=str(out / f"run{jax.process_index()}")))
run = loop.build(exp)
assert run.frozen.rest is not None and not all(x.is_fully_addressable for x in jax.tree.leaves(run.frozen.rest))
save_hf(lora.merge(loop.policy_and_reference(run)[0]), str(out / "export"), max_shard_bytes=20_000)
multihost_utils.sync_global_devices("exported")
print("RESULT ok")
