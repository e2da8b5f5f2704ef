"""Declarations live on objective values and compose: requirements, sampling, strength, terms.

The expected values are written from the papers' definitions (which inputs
each objective's formula reads), not read back from the code under test.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from jalign.objectives import (
    Requirements, Sampling, dpo, ipo, ipo_md, kto, lcpo, make, nash_md, online_dpo, online_ipo, registered, sft,
    sparsepo, tdpo1, wpo,
)


def test_sum_needs_the_union_of_its_terms():
    composed = dpo() + 0.2 * sft()
    assert composed.requires.reference  # DPO's log-ratios need the reference; SFT's NLL does not
    assert composed.requires.responses == "pair"
    assert (sft() + 0.5 * sft()).requires.reference is False
    mixed = wpo() + 0.1 * tdpo1()
    assert mixed.requires.extras == ("log_prob_sq_sum", "ref_kl")


def test_incompatible_response_shapes_are_refused_by_name():
    with pytest.raises(ValueError, match="incompatible.*'pair'.*'single'"):
        (dpo() + kto()).requires


def test_union_is_the_set_union_in_every_field():
    a = Requirements(responses="list", reference=False, labels=("score",), extras=("entropy",))
    b = Requirements(responses="pair", reference=True, labels=("preference", "score"))
    joined = a.union(b)
    assert joined == Requirements(responses="pair", reference=True, labels=("preference", "score"),
                                  extras=("entropy",))


def test_wrapper_passes_its_inner_needs_through():
    wrapped = lcpo(inner=wpo())
    assert wrapped.requires.extras == ("log_prob_sq_sum",)
    assert wrapped.requires.reference
    assert lcpo(inner=online_dpo()).sampling == online_dpo().sampling


def test_hyperparameter_dependent_needs_are_exact():
    assert sparsepo(mask="reference").requires.extras == ("ref_kl", "reference_token_mask")
    assert sparsepo(mask="learned").requires.extras == ("ref_kl", "token_mask_logits")
    with pytest.raises(ValueError, match="mask must be one of"):
        sparsepo(mask="bogus")


def test_sampling_survives_weighting_and_sums():
    declared = online_dpo().sampling
    assert declared.responses == ("policy", "policy") and declared.labels == ("preference",)
    assert (online_dpo() + 0.1 * sft()).sampling == declared
    assert (0.5 * online_dpo()).sampling == declared
    assert (dpo() + sft()).sampling is None
    # Online IPO and online DPO sample the same way, so their sum is one sampled batch.
    assert (online_dpo() + online_ipo()).sampling == declared


def test_different_samplings_cannot_share_a_batch():
    with pytest.raises(ValueError, match="different sampling"):
        (online_dpo() + nash_md()).sampling


def test_mixture_coefficient_resolves_to_the_instances_value():
    assert ipo_md(mixture=0.3).sampling.mixture == 0.3
    assert online_dpo().sampling.mixture is None  # no mixture source


def test_mixture_coefficient_may_be_traced():
    objective = ipo_md(mixture=0.3) + 0.1 * sft()
    doubled = jax.jit(lambda o: o.sampling.mixture * 2)(objective)
    assert float(doubled) == pytest.approx(0.6)


def test_named_terms_number_repeated_names():
    composed = dpo() + 0.2 * sft() + dpo(beta=0.3)
    assert [name for name, _ in composed.named_terms()] == ["dpo", "sft", "dpo_1"]
    single = dpo()
    assert single.named_terms() == (("dpo", single),)


def test_strength_uses_each_papers_name():
    assert dpo(beta=0.3).strength == 0.3 and dpo().strength_path == "beta"
    assert ipo(tau=0.2).strength == 0.2 and ipo().strength_path == "tau"  # Azar et al.'s tau
    assert sft().strength_path is None
    assert (dpo() + 0.2 * sft()).strength_path == "dpo.beta"
    assert (dpo() + ipo()).strength_path is None  # two strengths: ambiguous
    assert lcpo(inner=ipo(tau=0.4)).strength_path == "inner.tau"
    assert lcpo(inner=ipo(tau=0.4)).strength == 0.4


@pytest.mark.parametrize("name", list(registered()))
def test_every_registered_objective_declares_a_real_strength_field(name):
    objective = make(name)
    path = objective.strength_path
    if path is None:
        return
    value = objective
    for part in path.split("."):
        value = getattr(value, part)
    assert isinstance(value, float) and jnp.isfinite(value)
    assert value == objective.strength


def test_every_online_objective_declares_sampling_and_offline_ones_none():
    online = {"online_ipo", "ipo_md", "nash_md", "nash_md_pg", "sppo", "inpo", "egpo", "online_dpo",
              "reinforce", "rloo", "grpo", "ppo_clip", "online_copg", "rso", "grao",
              "spin", "selm", "xpo", "cream", "dataset_reset", "rsf", "ppo"}
    for name in registered():
        sampling = make(name).sampling
        assert (sampling is not None) == (name in online), name
        if sampling is not None:
            assert isinstance(sampling, Sampling) and sampling.model_sources(), name


def test_declarations_are_not_pytree_leaves():
    leaves = jax.tree.leaves(dpo(beta=0.2) + 0.5 * sft())
    assert len(leaves) == 3  # beta, label_smoothing, weight: nothing else is traced
    assert all(not dataclasses.is_dataclass(leaf) for leaf in leaves)


def test_exported_names_are_exactly_the_registry():
    import jalign.objectives as package

    assert set(package.OBJECTIVES) == set(registered())
    assert all(getattr(package, name) is cls for name, cls in registered().items())


def test_group_size_and_candidates_resolve_on_the_instance():
    """RLOO's k and GRPO's group size become that many policy slots; RSO's candidates and beta their values."""
    from jalign.objectives import grpo, rloo, rso

    assert rloo(k=4).sampling.responses == ("policy",) * 4 and rloo(k=4).sampling.group == 4
    assert grpo(group_size=3).sampling.responses == ("policy",) * 3
    assert (rloo(k=3) + 0.1 * sft()).sampling == rloo(k=3).sampling
    with pytest.raises(ValueError, match="different sampling"):
        (rloo(k=2) + rloo(k=3)).sampling
    declared = rso(candidates=8, rejection_beta=0.25).sampling
    assert (declared.candidates, declared.rejection, declared.responses) == (8, 0.25, ("reference", "reference"))
