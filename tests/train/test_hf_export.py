"""`jalign export`: Hugging Face and PEFT directories from a run's checkpoint, checked in PyTorch.

Each export is loaded with transformers (and peft onto its base) and its
per-token log-probs are compared with jalign's own policy on the same tokens
(atol 1e-4, as in tests/models/test_hf_parity.py). The reference policy never
goes through a checkpoint: it is the trained policy in memory at the last
step (an ``evaluate`` hook), or the decoder whose parameters were saved.
"""

import dataclasses
import importlib.metadata
import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorstore as ts
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from jalign.cli import main
from jalign.models import Decoder
from jalign.models.tokenizer import CHAT_TEMPLATE
from jalign.train.checkpoint import CheckpointError, Checkpointer
from jalign.sharding import MeshConfig
from jalign.train.export import export, read_run
from jalign.train.loop import train
from jalign.train.run_config import check_and_save
from jalign.train.step import TrainState
from tiny_experiment import DATA, experiment

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "models"))
from hf_tiny import padded_batch  # noqa: E402

# q and v (heads in), o (heads out), down (plain linear) in every layer; up only in layer 1.
LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj", "layers.1.mlp.up_proj")


def _logprobs(logits, tokens, mask):
    """log p(tokens[t+1] | <= t) [B, T-1] at positions where t and t+1 are both valid (flattened)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)[:, :-1], axis=-1)
    target = np.asarray(jnp.take_along_axis(logp, jnp.asarray(tokens)[:, 1:, None], -1)[..., 0])
    return target[mask[:, 1:] & mask[:, :-1]]


def _jalign_logprobs(model):
    tokens, mask, _ = padded_batch(vocab=300)
    return _logprobs(model(jnp.asarray(tokens), jnp.asarray(mask)), tokens, mask)


def _torch_logprobs(model):
    tokens, mask, positions = padded_batch(vocab=300)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       position_ids=torch.tensor(positions, dtype=torch.long)).logits
    return _logprobs(logits.float().numpy(), tokens, mask)


def _load(directory, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager",
                                                             dtype=dtype).eval()


def _lora_experiment(tmp: pathlib.Path, data: pathlib.Path, steps: int, lora_rank: int):
    exp = experiment(tmp, steps, checkpoint_every=0)
    return dataclasses.replace(
        exp, data=dataclasses.replace(exp.data, train=str(data)),
        model=dataclasses.replace(exp.model, lora_rank=lora_rank, lora_alpha=8.0, lora_targets=LORA_TARGETS),
        train=dataclasses.replace(exp.train, eval_every=steps))


def _train(exp):
    """Trains ``exp``; returns the policy's log-probs on `_batch` at the last step, taken in memory by an
    ``evaluate`` hook (so independent of any checkpoint restore)."""
    seen = {}

    def keep_logprobs(step, policy, reference):
        seen[step] = _jalign_logprobs(policy)
        return {}

    train(exp, evaluate=keep_logprobs, progress=False)
    return seen[exp.train.steps]


def _train_moving_data_away(tmp: pathlib.Path, *, lora_rank: int):
    """Trains 2 steps on a copy of the data, then moves the copy away (export must not need it).

    Returns (run dir, the trained policy's log-probs (`_train`), the data path that no longer exists).
    """
    data = tmp / "data" / DATA.name
    data.parent.mkdir()
    shutil.copy(DATA, data)
    exp = _lora_experiment(tmp, data, 2, lora_rank)
    reference = _train(exp)
    data.rename(tmp / "moved.jsonl")
    return pathlib.Path(exp.train.out_dir), reference, str(data)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 2-step LoRA run (every adapter kind; see LORA_TARGETS) whose data was moved away after training."""
    return _train_moving_data_away(tmp_path_factory.mktemp("lora"), lora_rank=4)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A fully fine-tuned run's folder written directly: config.json and one checkpoint (step 5) of a
    random decoder, no training step compiled. Returns (run dir, that decoder, the experiment)."""
    tmp = tmp_path_factory.mktemp("full")
    exp = experiment(tmp, 5)
    # Saved as JSON null and a list: read back as None and a tuple.
    exp = dataclasses.replace(exp, mesh=MeshConfig(rules={"embed": None, "batch": ("data", "fsdp")}))
    check_and_save(exp, pathlib.Path(exp.train.out_dir), resuming=False)
    # Random N(0, 0.3) weights drawn on the host: no initialiser is compiled.
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(exp.model.arch, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), params)
    model = nnx.merge(graphdef, params)
    state = TrainState(jnp.asarray(5, jnp.int32), params, optax.adam(1e-3).init(params), jax.random.key(0))
    checkpointer = Checkpointer(pathlib.Path(exp.train.out_dir) / "checkpoints")
    checkpointer.save(5, state, {"position": 0})
    checkpointer.close()
    return pathlib.Path(exp.train.out_dir), model, exp


def test_saved_config_rebuilds_the_model_and_mesh_sections(full_run):
    """config.json alone gives back the run's ModelSection (with its ModelConfig and tuples) and mesh."""
    run, _, exp = full_run
    saved = read_run(run)
    assert (saved.model, saved.mesh) == (exp.model, exp.mesh)


def test_full_export_matches_jalign_in_transformers(full_run, tmp_path):
    """Log-probs of the exported weights in PyTorch equal the saved decoder's; tokenizer, chat template,
    generation config and model card are written."""
    run, model, _ = full_run
    assert export(run, tmp_path)["step"] == 5
    np.testing.assert_allclose(_torch_logprobs(_load(tmp_path)), _jalign_logprobs(model), atol=1e-4, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    card = (tmp_path / "README.md").read_text()
    for fact in ("`dpo+sft`", "dpo.beta=0.1", "sft.weight=0.1", str(DATA), "Steps trained: 5 of 5",
                 f"jalign {importlib.metadata.version('jalign')}"):
        assert fact in card, (fact, card)


def test_dtype_sets_the_saved_precision(full_run, tmp_path):
    """`jalign export --dtype bfloat16`: every tensor is bf16 and equals the float32 weight rounded to bf16
    (torch's cast)."""
    run, model, _ = full_run
    assert main(["export", str(run), str(tmp_path), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    embed = torch.tensor(np.asarray(model.embed[...])).to(torch.bfloat16)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), embed)


def test_a_flipped_parameter_bit_is_refused_by_the_digest(full_run, tmp_path):
    """The lowest mantissa bit of one parameter, rewritten through tensorstore (a file orbax reads without
    complaint): export restores only the parameters, and still checks them against the checkpoint's digest."""
    run, _, _ = full_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = {"driver": "ocdbt", "base": f"file://{copy / 'checkpoints' / '5' / 'state'}/"}
    keys = [k.decode() for k in ts.KvStore.open(state).result().list().result()]
    name = sorted(k.removesuffix("/.zarray") for k in keys if k.startswith("params.") and k.endswith("/.zarray"))[0]
    array = ts.open({"driver": "zarr", "kvstore": {**state, "path": name + "/"}}, open=True).result()
    values = array.read().result()
    values.reshape(-1).view(np.uint32)[0] ^= 1
    array.write(values).result()
    with pytest.raises(CheckpointError, match="checkpoint step 5 .* digest mismatch in 1 array"):
        export(copy, tmp_path / "out")


def test_merged_lora_export_matches_the_trained_policy(lora_run, tmp_path):
    """--merge-lora, with the training data gone: transformers' log-probs equal the unmerged policy's."""
    run, reference, data = lora_run
    assert not pathlib.Path(data).exists()
    export(run, tmp_path, merge_lora=True)
    assert not (tmp_path / "adapter_config.json").exists()
    np.testing.assert_allclose(_torch_logprobs(_load(tmp_path)), reference, atol=1e-4, rtol=0)
    assert "merged into the weights" in (tmp_path / "README.md").read_text()


def test_peft_adapter_loads_onto_the_base(lora_run, tmp_path):
    """--peft: PeftModel over the exported base reproduces the policy; the base alone does not."""
    import peft

    run, reference, _ = lora_run
    base_dir = export(run, tmp_path, peft=True)["base"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8.0, base_dir)
    assert config["target_modules"] == ["down_proj", "model.layers.1.mlp.up_proj", "o_proj", "q_proj", "v_proj"]
    model = peft.PeftModel.from_pretrained(_load(base_dir), str(tmp_path)).eval()
    np.testing.assert_allclose(_torch_logprobs(model), reference, atol=1e-4, rtol=0)
    with model.disable_adapter():
        assert np.abs(_torch_logprobs(model) - reference).max() > 1e-3


def test_cli_errors_are_one_line(lora_run, tmp_path, capsys):
    """No run, no checkpoint, a LoRA run with neither --merge-lora nor --peft, a bad --dtype: exit 2, one line
    naming the cause, and nothing created in the run folder."""
    run, _, _ = lora_run
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "config.json", empty / "config.json")
    cases = [([str(tmp_path / "missing"), "out"], "config.json not found"),
             ([str(empty), "out", "--merge-lora"], "no checkpoint in"),
             ([str(run), "out"], "model.lora_rank=4): pass --merge-lora"),
             ([str(run), "out", "--peft", "--dtype", "int8"], "--dtype must be one of")]
    for args, cause in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and cause in err, err
    assert not (empty / "checkpoints").exists()


@pytest.mark.slow
def test_trained_full_finetune_export_matches_the_trained_policy(tmp_path):
    """A real 2-step full fine-tune (the default test saves its checkpoint directly), data moved away."""
    run, reference, data = _train_moving_data_away(tmp_path, lora_rank=0)
    assert not pathlib.Path(data).exists()
    export(run, tmp_path / "out")
    np.testing.assert_allclose(_torch_logprobs(_load(tmp_path / "out")), reference, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_lora_on_a_hugging_face_base_loads_onto_that_base(tmp_path):
    """A 2-step LoRA run on a random Qwen2 checkpoint (q/k/v biases): the PEFT adapter names that directory as
    its base and, loaded onto it, reproduces the trained policy; the merged export does too."""
    import peft

    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    hf_dir = tmp_path / "qwen2"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(hf_dir))
    data = tmp_path / "data.jsonl"
    shutil.copy(DATA, data)
    exp = _lora_experiment(tmp_path, data, 2, lora_rank=4)
    exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, arch=None, hf_dir=str(hf_dir)))
    reference = _train(exp)
    export(exp.train.out_dir, tmp_path / "adapter", peft=True)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(hf_dir.absolute())
    model = peft.PeftModel.from_pretrained(_load(hf_dir), str(tmp_path / "adapter")).eval()
    np.testing.assert_allclose(_torch_logprobs(model), reference, atol=1e-4, rtol=0)
    export(exp.train.out_dir, tmp_path / "merged", merge_lora=True)
    np.testing.assert_allclose(_torch_logprobs(_load(tmp_path / "merged")), reference, atol=1e-4, rtol=0)
