"""Flax decoders, Hugging Face checkpoint import/export, sampling, LoRA, tokenizers."""

from jalign.models.checkpoint import load_hf, save_hf, weight_table
from jalign.models.config import (FAMILIES, PRESETS, REMAT_POLICIES, ModelConfig, RematPolicy, config_from_hf,
                                  config_to_hf)
from jalign.models.decoder import Decoder, OutputProjection, PromptCache, default_positions

__all__ = [
    "FAMILIES", "PRESETS", "REMAT_POLICIES", "ModelConfig", "RematPolicy", "config_from_hf", "config_to_hf",
    "Decoder", "OutputProjection", "PromptCache", "default_positions",
    "load_hf", "save_hf", "weight_table",
]
