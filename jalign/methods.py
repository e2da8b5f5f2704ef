"""Methods from the literature that are not objectives: reference options, data options, judges, recipes.

An objective is a registered loss (``jalign.objectives.registered()``). Some
alignment papers contribute something else: a reference model (SALSA's soup),
a data transformation (reward-augmented data), a reward transformation that a
judge applies (LSC, PAR), an EM procedure (MaxMin-RLHF), or a multi-stage
recipe (MPO). ``jalign objectives`` lists these beside the objectives, each
with its paper and where it lives, so a researcher looking for a method finds
it whatever form it takes. ``tests/test_methods.py`` checks that every name
under ``where`` exists: an importable attribute, a config field or a file.
"""

from __future__ import annotations

import dataclasses

REFERENCE, DATA, JUDGE, RECIPE = "reference option", "data option", "judge option", "recipe"


@dataclasses.dataclass(frozen=True)
class Method:
    """One method that is not a registered objective.

    Attributes:
      name: the method's name as papers use it.
      citation: the paper, and where the formula was taken from.
      kind: ``"reference option"``, ``"data option"``, ``"judge option"`` or ``"recipe"``.
      usage: how to use it, in one line.
      where: what implements it: dotted attributes (``jalign.train.soup.load_soup``),
        config fields (``model.reference_soup``) or repository files
        (``experiments/mpo.py``).
    """

    name: str
    citation: str
    kind: str
    usage: str
    where: tuple[str, ...]


METHODS: tuple[Method, ...] = (
    Method("salsa", "Chegini et al. 2024, SALSA: Soup-based Alignment Learning for Stronger Adaptation in RLHF: "
           "the reference is a weight average of independently fine-tuned SFT models (uniform by default)",
           REFERENCE, "--set model.reference_soup=[DIR1,DIR2] (model.reference_soup_weights optional); any objective "
           "that reads a reference",
           ("model.reference_soup", "model.reference_soup_weights", "jalign.train.soup.load_soup")),
    Method("mpo", "Gou & Nguyen 2024, Mixed Preference Optimization: Reinforcement Learning with Data Selection and "
           "Better Reference Model: DPO on the easy pairs (reward gap above a threshold), then online RLHF on the "
           "difficult prompts (ppo by default) with the DPO model as reference",
           RECIPE, "python experiments/mpo.py --data D --reward-model RM --threshold T --model M --out OUT",
           ("experiments/mpo.py", "jalign.train.mpo.run_mpo", "jalign.train.mpo.split_by_reward_gap")),
    Method("reward_augmented", "Zhang et al. 2024, Reward-Augmented Data Enhances Direct Preference Alignment of "
           "LLMs: each scored pair twice, conditioned on its chosen score and, reversed, on its rejected score "
           "(the authors' scripts/reward_augmentation.py)",
           DATA, "--set data.reward_augmented=system (or prompt) on paired data with score_chosen/score_rejected",
           ("data.reward_augmented", "jalign.data.reward_augmented.augment")),
    Method("lsc", "Wang et al. 2024, Transforming and Combining Rewards for Aligning Large Language Models: "
           "u = log sigmoid(r - r_ref(x)), summed over reward models for their logical AND",
           JUDGE, "ShapedRewardJudge(..., transform='lsc') as online.judge; several reward functions are combined",
           ("jalign.objectives.reward_transforms.lsc", "jalign.objectives.reward_transforms.lsc_combined",
            "jalign.train.reward_judges.ShapedRewardJudge")),
    Method("par", "Fu et al. 2025, Reward Shaping to Mitigate Reward Hacking in RLHF: Preference As Reward, the mean "
           "sigmoid of the reward centred on M reference rewards (the authors' calculate_relative_sigmoid)",
           JUDGE, "ShapedRewardJudge(..., transform='par') as online.judge",
           ("jalign.objectives.reward_transforms.par", "jalign.train.reward_judges.ShapedRewardJudge")),
    Method("maxmin_rlhf", "Chakraborty et al. 2024, MaxMin-RLHF: Alignment with Diverse Human Preferences: hard EM "
           "over a mixture of Bradley-Terry reward models by annotator, then the policy against the worst group's "
           "reward",
           RECIPE, "jalign.train.reward_mixture.em_reward_models (reward heads by EM), then "
           "ShapedRewardJudge(..., transform='maxmin') with a reward objective (rloo, grpo, ppo_clip); "
           "jalign.tabular.maxmin for the exact tabular counterpart",
           ("jalign.train.reward_mixture.em_reward_models", "jalign.tabular.maxmin.em_reward_mixture",
            "jalign.tabular.maxmin.maxmin_policy", "jalign.objectives.reward_transforms.maxmin_reward")),
    Method("dpa", "Wang et al. 2024, Arithmetic Control of LLMs for Diverse User Preferences: Directional Preference "
           "Alignment with Multi-Objective Rewards: a K-output reward model, a user direction v with reward v.r, "
           "direction-conditioned system prompts, rejection-sampling fine-tuning",
           RECIPE, "train the multi_reward objective, then rsf online with ShapedRewardJudge(..., "
           "transform='directional') on prompts from jalign.data.directions.conditioned",
           ("jalign.data.directions.conditioned", "jalign.objectives.reward_transforms.directional_reward",
            "experiments/multi_reward_model.py")),
    Method("d2o_anchors", "Duan et al. 2024, Negating Negatives (D2O): the K anchors sampled from the initial model "
           "before training, beside each human negative",
           RECIPE, "python experiments/d2o_anchors.py negatives.jsonl --model SFT_DIR --out d2o.jsonl, then train d2o",
           ("experiments/d2o_anchors.py",)),
    Method("poft_scores", "Fan et al. 2024, Preference-Oriented Supervised Fine-Tuning (PoFT): aligned models' "
           "per-token mean log-likelihoods of the SFT responses, computed once",
           RECIPE, "python experiments/poft_scores.py sft.jsonl --aligned DIR... --out scored.jsonl, then train poft",
           ("experiments/poft_scores.py",)),
)


def methods() -> dict[str, Method]:
    """Name -> method, sorted by name."""
    return {m.name: m for m in sorted(METHODS, key=lambda m: m.name)}
