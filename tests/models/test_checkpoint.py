"""HF export/re-import, loader errors, and config conversion."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_tiny import FAMILIES, padded_batch, torch_logits
from jalign.models import PRESETS, config_from_hf, config_to_hf, load_hf, save_hf


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_in_transformers(family, hf_checkpoints, jalign_models, tmp_path):
    """Exported directory, loaded by `transformers`, gives the original torch logits.

    The independent reference is the PyTorch model the checkpoint came from;
    re-importing the export into jalign gives back bit-identical parameters.
    """
    _, original = hf_checkpoints(family)
    model = jalign_models(family)
    save_hf(model, str(tmp_path))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), attn_implementation="eager", dtype=torch.float32).eval()
    tokens, mask, positions = padded_batch(seed=1)
    want = torch_logits(original, tokens, mask, positions)
    got = torch_logits(reloaded, tokens, mask, positions)
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5, rtol=0)
    again = load_hf(str(tmp_path))
    assert again.cfg == model.cfg
    np.testing.assert_array_equal(again.embed[...], model.embed[...])
    np.testing.assert_array_equal(again.layers.attn.o_proj.kernel[...],
                                  model.layers.attn.o_proj.kernel[...])


def _copy_checkpoint(src, dst, edit):
    tensors = load_file(os.path.join(src, "model.safetensors"))
    edit(tensors)
    os.makedirs(dst, exist_ok=True)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def test_loader_errors_name_file_and_key(hf_checkpoints, tmp_path):
    """Wrong shapes, missing and unknown tensors raise with the file and key named."""
    src, _ = hf_checkpoints("qwen2")
    key = "model.layers.1.self_attn.k_proj.weight"

    def shrink(t):
        t[key] = t[key][:8]
    _copy_checkpoint(src, tmp_path / "shape", shrink)
    with pytest.raises(ValueError, match=r"model\.safetensors.*k_proj\.weight"):
        load_hf(str(tmp_path / "shape"))
    _copy_checkpoint(src, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(KeyError, match="k_proj.weight"):
        load_hf(str(tmp_path / "missing"))

    def extra(t):
        t["model.layers.0.surprise.weight"] = np.zeros(3, np.float32)
    _copy_checkpoint(src, tmp_path / "extra", extra)
    with pytest.raises(ValueError, match="surprise"):
        load_hf(str(tmp_path / "extra"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_round_trip(name):
    """config_from_hf(config_to_hf(c)) == c, and transformers accepts the dict."""
    cfg = PRESETS[name]()
    hf = config_to_hf(cfg)
    assert config_from_hf(hf) == cfg
    hf_cfg = transformers.AutoConfig.for_model(**hf)
    assert hf_cfg.vocab_size == cfg.vocab_size


def test_config_from_directory(hf_checkpoints):
    """Reading config.json from a directory equals reading the dict."""
    directory, _ = hf_checkpoints("gemma2")
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    cfg = config_from_hf(directory, dtype="bfloat16")
    assert cfg == config_from_hf(hf).replace(dtype="bfloat16")
    assert cfg.window(0) == 4 and cfg.window(1) is None
    assert cfg.attn_softcap == 2.0 and cfg.final_softcap == 5.0


def test_layer_types_default_for_old_configs():
    """Configs without ``layer_types`` get transformers' own defaults (computed there)."""
    for hf_cfg in (transformers.Gemma2Config(num_hidden_layers=3),
                   transformers.Qwen2Config(num_hidden_layers=4, use_sliding_window=True,
                                            sliding_window=8, max_window_layers=2)):
        hf = hf_cfg.to_dict()
        want = tuple(hf.pop("layer_types"))
        assert config_from_hf(hf).layer_types == want


# The presets whose checkpoints transformers' config classes take as their defaults, and the fields where the
# published config.json differs from those defaults (transformers keeps older values there).
CLASS_DEFAULTS = {"gemma2_2b": {}, "gpt2_small": {},
                  "mistral_7b": {"norm_eps": 1e-6, "max_positions": 131072},
                  "llama2_7b": {"norm_eps": 1e-6, "max_positions": 2048}}


@pytest.mark.parametrize("name", sorted(CLASS_DEFAULTS))
def test_presets_match_transformers_class_defaults(name):
    """A preset equals transformers' own defaults for that checkpoint (``Gemma2Config()`` is gemma-2-2b,
    ``GPT2Config()`` gpt2, ``MistralConfig()`` Mistral-7B, ``LlamaConfig()`` Llama-2-7B), read by config_from_hf."""
    from jalign.models.config import HF_PRESETS

    defaults = transformers.AutoConfig.for_model(HF_PRESETS[name]["model_type"]).to_dict()
    assert PRESETS[name]().replace(**CLASS_DEFAULTS[name]) == config_from_hf(defaults)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_keys_are_transformers_keys(name):
    """Every key of a preset is one its transformers config class defines (a misspelt key would be kept as an
    unknown attribute and ignored), and transformers' reading of the dict converts back to the same preset."""
    from jalign.models.config import HF_PRESETS

    hf = HF_PRESETS[name]
    known = transformers.AutoConfig.for_model(hf["model_type"]).to_dict()
    assert set(hf) <= set(known), sorted(set(hf) - set(known))
    assert config_from_hf(transformers.AutoConfig.for_model(**hf).to_dict()) == PRESETS[name]()
