"""`parse`: objective expressions from text equal the same objectives built in Python."""

import re

import pytest

from jalign.objectives import dataset_reset, dpo, fdpo, ipo, kto, parse, ppo, sft


@pytest.mark.parametrize("text, built", [
    ("dpo", dpo()),
    ("ipo(tau=0.05)", ipo(tau=0.05)),
    ("dpo(beta=0.05) + 0.2*sft", dpo(beta=0.05) + 0.2 * sft()),
    ("0.5*kto(beta=0.1) + sft", 0.5 * kto(beta=0.1) + sft()),
    ("sft * -1.5", -1.5 * sft()),
    ("fdpo(divergence='js')", fdpo(divergence="js")),
    ("dataset_reset(inner=ppo(beta=0.1))", dataset_reset(inner=ppo(beta=0.1))),
    ("dataset_reset(inner=ppo)", dataset_reset(inner=ppo())),
])
def test_text_builds_the_objective_python_would(text, built):
    assert repr(parse(text)) == repr(built)  # objectives compare by identity; repr shows every field


@pytest.mark.parametrize("text, message", [
    ("dpo - sft", "cannot parse objective 'dpo - sft' at 'dpo - sft'"),
    ("dpo(0.1)", "cannot parse objective"),
    ("__import__('os').system('true')", "cannot parse objective"),
    ("dpo(beta=x)", "takes name=number or name=objective arguments only"),
    ("dpo +", "cannot parse objective 'dpo +'"),
    ("dpoo", "unknown objective 'dpoo'"),
    ("dpo(betta=1)", "unknown hyperparameter"),
])
def test_anything_else_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(text)
