"""The benchmarks take their model shapes from `jalign.models.PRESETS` (nothing downloaded or compiled)."""

import argparse
import pathlib
import sys

from jalign.models import PRESETS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import scale  # noqa: E402
import train_step  # noqa: E402


def test_train_step_preset_is_the_named_configuration_with_the_flags_precision():
    """``--preset NAME --dtype bfloat16 --remat full`` builds ``PRESETS[NAME]`` with that precision."""
    args = argparse.Namespace(preset="qwen3_0_6b", dtype="bfloat16", param_dtype=None, remat="full")
    assert train_step.model_config(args) == PRESETS["qwen3_0_6b"](dtype="bfloat16", param_dtype="bfloat16",
                                                                   remat="full")


def test_scale_shapes_are_the_llama_presets():
    """Every scale configuration is Llama-3.2-1B or Llama-3.1-8B, at most with its layer count changed."""
    presets = (PRESETS["llama3_2_1b"](), PRESETS["llama3_1_8b"]())
    for config in scale.CONFIGS:
        assert config.shape.replace(num_layers=16 if config.name.startswith("1b") else 32) in presets, config.name
