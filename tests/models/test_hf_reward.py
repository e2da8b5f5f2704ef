"""Reward models: `*ForSequenceClassification` checkpoints in and out, scores vs PyTorch.

The independent reference is transformers' PyTorch sequence classifier on
random weights (hf_tiny.py): it pools the rightmost token that is not
``pad_token_id`` of prompt+response; jalign scores the same rows split into a
left-padded prompt and a right-padded response (`preference_scores`).
"""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from hf_tiny import FAMILIES, jit_forward, reward_batch, torch_scores
from jalign.models import load_hf, save_hf
from jalign.models.preference_heads import add_score_head, preference_scores


@nnx.jit
def jit_scores(model, batch):
    return preference_scores(model, batch)


def _from_pretrained(directory):
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        directory, attn_implementation="eager", dtype=torch.float32).eval()


def _params(model) -> dict:
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("family", FAMILIES)
def test_rewards_match_torch(family, hf_reward_checkpoints):
    """A transformers reward model loads as a tied `Decoder` + reward head; rewards agree within 1e-4."""
    directory, torch_model = hf_reward_checkpoints(family)
    model = load_hf(directory)
    assert model.score_head.kind == "reward" and model.cfg.tie_embeddings and model.lm_head is None
    batch, tokens, mask = reward_batch()
    want = torch_scores(torch_model, tokens, mask)                       # [B, 1]
    got = jit_scores(model, batch)                                       # [B, G=1]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.ptp(want) > 1e-2                                           # rows differ: pooling matters
    assert jit_forward(model, tokens, mask).shape == (*tokens.shape, model.cfg.vocab_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_export_reloads_in_transformers(family, hf_checkpoints, tmp_path):
    """A causal checkpoint plus a new reward head, saved, scores the same in transformers.

    The export holds ``score.weight`` and no ``lm_head``; re-importing it gives
    back every exported parameter bit for bit (an untied LM head is dropped,
    so the re-imported decoder is tied).
    """
    model = load_hf(hf_checkpoints(family)[0])                # fresh: the session model stays headless
    add_score_head(model, "reward", rngs=nnx.Rngs(1))
    save_hf(model, str(tmp_path))
    with safe_open(os.path.join(tmp_path, "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "score.weight" in keys and "lm_head.weight" not in keys
    with open(tmp_path / "config.json") as f:
        hf = json.load(f)
    assert hf["architectures"][0].endswith("ForSequenceClassification")
    assert hf["id2label"] == {"0": "LABEL_0"} and hf["pad_token_id"] == 0

    batch, tokens, mask = reward_batch(seed=1)
    want = torch_scores(_from_pretrained(str(tmp_path)), tokens, mask)
    np.testing.assert_allclose(jit_scores(model, batch), want, atol=1e-4, rtol=0)

    again = load_hf(str(tmp_path))
    assert again.score_head.kind == "reward"
    assert again.cfg == model.cfg.replace(tie_embeddings=True)
    original = {k: v for k, v in _params(model).items() if k[0] != "lm_head"}
    jax.tree.map(np.testing.assert_array_equal, _params(again), original)


def test_export_needs_a_pad_token(hf_checkpoints, tmp_path):
    """transformers pools by pad id: export refuses without one, and the argument wins over the config."""
    model = load_hf(hf_checkpoints("qwen2")[0], pad_token_id=None)
    add_score_head(model, "reward", rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="pad_token_id"):
        save_hf(model, str(tmp_path / "none"))
    save_hf(model, str(tmp_path / "given"), pad_token_id=7)
    assert load_hf(str(tmp_path / "given")).cfg.pad_token_id == 7


def test_pairwise_and_embedding_heads_round_trip(hf_checkpoints, tmp_path):
    """The head kind survives export (config key), and a K-dim embedding head is num_labels=K in transformers."""
    model = load_hf(hf_checkpoints("llama")[0])
    add_score_head(model, "pairwise", rngs=nnx.Rngs(1))
    save_hf(model, str(tmp_path / "pairwise"))
    assert load_hf(str(tmp_path / "pairwise")).score_head.kind == "pairwise"
    assert load_hf(str(tmp_path / "pairwise"), score_kind="reward").score_head.kind == "reward"

    add_score_head(model, "embedding", outputs=4, rngs=nnx.Rngs(2))
    save_hf(model, str(tmp_path / "embedding"))
    batch, tokens, mask = reward_batch(seed=2)
    want = torch_scores(_from_pretrained(str(tmp_path / "embedding")), tokens, mask)   # [B, 4]
    np.testing.assert_allclose(jit_scores(model, batch)[:, 0], want, atol=1e-4, rtol=0)
    assert load_hf(str(tmp_path / "embedding")).score_head.kernel.shape == (32, 4)
    with pytest.raises(ValueError, match="num_labels=4"):
        load_hf(str(tmp_path / "embedding"), score_kind="reward")


def test_score_shape_error_names_file_and_key(hf_reward_checkpoints, tmp_path):
    """A score.weight of the wrong shape raises naming the file and the tensor."""
    src, _ = hf_reward_checkpoints("qwen2")
    tensors = load_file(os.path.join(src, "model.safetensors"))
    tensors["score.weight"] = tensors["score.weight"][:, :-1]
    os.makedirs(tmp_path / "bad")
    save_file(tensors, os.path.join(tmp_path, "bad", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f, open(tmp_path / "bad" / "config.json", "w") as g:
        g.write(f.read())
    with pytest.raises(ValueError, match=r"model\.safetensors.*score\.weight"):
        load_hf(str(tmp_path / "bad"))
