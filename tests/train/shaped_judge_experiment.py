"""The tiny online experiment judged by shaped rewards: LSC-combined rewards, or DPA's directional reward.

``jalign train tests/train/shaped_judge_experiment.py`` trains ``online_dpo``
on the preference ``sigma(u_a - u_b)`` of ``u = log sigma(vowels - ref) +
log sigma(-length - ref)`` (Wang et al. 2024's combination of two reward
models, each centred on the 0.85 quantile of its rewards on the prompt's
reference responses: the shipped pairs' two answers and " I do not know.").
:func:`dpa_experiment` (``dpa_judge_experiment.py``) trains DPA's
rejection-sampling step, ``rsf``, on the shipped prompts conditioned on
directions over (helpfulness, verbosity) in DPA's system prompt, judged by
``v . r`` with each prompt's own ``v``.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from online_experiment import DATA, experiment as online_experiment, vowel_reward  # noqa: E402

from jalign.data.directions import conditioned, direction_at  # noqa: E402
from jalign.train.reward_judges import ShapedRewardJudge  # noqa: E402

OUT = pathlib.Path("runs/shaped_judge")
DIRECTIONS = (0, -15, -30, 15)  # degrees of (helpfulness, verbosity), within the authors' suggested range


def vowels(prompts, responses):
    return [vowel_reward(p, r) for p, r in zip(prompts, responses)]


def brevity(prompts, responses):
    return [-len(r) / 10 for r in responses]


def _lsc_judge() -> ShapedRewardJudge:
    table = {}
    for line in (DATA / "tiny_pref.jsonl").read_text().splitlines():
        record = json.loads(line)
        references = [record["chosen"], record["rejected"], " I do not know."]
        prompts = [record["prompt"]] * len(references)
        table[record["prompt"]] = [list(row) for row in zip(vowels(prompts, references), brevity(prompts, references))]
    return ShapedRewardJudge([vowels, brevity], "lsc", reference_rewards=table)


def _dpa_prompts(out: pathlib.Path) -> pathlib.Path:
    path = out / "dpa_prompts.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts = [json.loads(line)["prompt"] for line in (DATA / "tiny_prompts.jsonl").read_text().splitlines()]
        path.write_text("".join(json.dumps({"prompt": conditioned(p, direction_at(DIRECTIONS[i % len(DIRECTIONS)]))})
                                + "\n" for i, p in enumerate(prompts)))
    return path


def experiment(out: pathlib.Path = OUT):
    return online_experiment(out, 2, "online_dpo", judge=_lsc_judge(), checkpoint_every=0)


def dpa_experiment(out: pathlib.Path = OUT):
    """DPA: a directional judge reading each conditioned prompt's direction."""
    return online_experiment(out, 2, "rsf", judge=ShapedRewardJudge([vowels, brevity], "directional"),
                             prompts=str(_dpa_prompts(out)), checkpoint_every=0)
