"""Config validation: every numeric field is range-checked when an experiment is built (issue 13).

The invalid values are the ones issue 13 found accepted (or failing later
with an error naming no field); each must now fail at once, naming the field
and its allowed range, as a ``ValueError`` a command line can print as one line.
"""

import dataclasses
import math
import typing

import pytest

from jalign.objectives import dpo, sft
from jalign.objectives.registry import registered
from jalign.train.config import RANGES, SECTIONS, ConfigError, Experiment, TrainSection, validate
from jalign.train.overrides import apply_overrides

NAN = float("nan")

ISSUE_13 = [
    ("train.keep_checkpoints", 0),  # exited 0 with no checkpoint left
    ("train.log_every", 0),  # ZeroDivisionError
    ("optimizer.accumulation_steps", 0),  # ZeroDivisionError
    ("train.steps", -5),  # exited 0, nothing trained
    ("train.batch_size", 0),  # grain's message, naming no field
    ("optimizer.learning_rate", -1e-3),
    ("optimizer.learning_rate", NAN),  # later "state not updated, last good checkpoint: step None"
    ("objective.beta", -0.1),
    ("objective.beta", NAN),
]


@pytest.mark.parametrize("field,value", ISSUE_13, ids=[f"{f}={v}" for f, v in ISSUE_13])
def test_invalid_value_from_the_command_line_names_the_field_and_range(field, value):
    with pytest.raises(ConfigError) as error:
        apply_overrides(Experiment(), [f"{field}={value}"])
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert message.startswith(field) and " must be " in message and f"got {value!r}" in message


@pytest.mark.parametrize("field,value", ISSUE_13[:7], ids=[f"{f}={v}" for f, v in ISSUE_13[:7]])
def test_invalid_value_in_an_experiment_file_is_rejected_when_the_experiment_is_built(field, value):
    section, name = field.split(".")
    default = Experiment()
    with pytest.raises(ConfigError, match=f"^{field} must be "):
        Experiment(**{section: dataclasses.replace(getattr(default, section), **{name: value})})


def test_error_names_the_allowed_range():
    cases = {"train.steps=0": "train.steps must be an integer >= 1; got 0",
             "data.eval_fraction=1.0": "data.eval_fraction must be a finite number in [0, 1); got 1.0",
             "optimizer.max_grad_norm=0": "optimizer.max_grad_norm must be None or a finite number > 0; got 0.0",
             "objective.beta=nan": "objective.beta (the objective's strength) must be a finite number > 0; got nan"}
    for assignment, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            apply_overrides(Experiment(), [assignment])
        assert str(error.value) == expected


def _numeric(annotation) -> bool:
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return any(a in (int, float) for a in options)


def test_every_numeric_field_has_a_range():
    exp = Experiment()
    for section in SECTIONS:
        values = getattr(exp, section)
        hints = typing.get_type_hints(type(values))
        numeric = {f"{section}.{f.name}" for f in dataclasses.fields(values) if _numeric(hints[f.name])}
        assert numeric <= set(RANGES), sorted(numeric - set(RANGES))


def test_ranges_accept_their_edges_and_documented_zeros():
    exp = apply_overrides(Experiment(), ["train.checkpoint_every=0", "train.eval_every=0", "data.eval_fraction=0",
                                         "optimizer.warmup_steps=0", "optimizer.max_grad_norm=None",
                                         "optimizer.final_fraction=1", "train.steps=1", "data.max_length=2"])
    validate(exp)
    with pytest.raises(ConfigError, match="^train.steps must be an integer"):
        Experiment(train=TrainSection(steps=2.5))


def test_every_registered_objective_with_default_hyperparameters_is_valid():
    for cls in registered().values():
        Experiment(objective=cls())  # wpo's max_weight=inf default means "no cap" and stays allowed


def test_every_strength_must_be_finite_and_positive():
    for name, cls in registered().items():
        default = cls()
        if default.strength_path is None or "." in default.strength_path:
            continue
        for bad in (0.0, -1.0, NAN, math.inf):
            with pytest.raises(ConfigError, match=rf"^objective\.{default.strength_path} \(the objective's strength\)"):
                Experiment(objective=dataclasses.replace(default, **{default.strength_path: bad}))


def test_hyperparameters_of_composed_objectives_are_named_as_set_names_them():
    composed = Experiment(objective=dpo(beta=0.1) + 0.1 * sft())
    for assignment, field in [("objective.dpo.beta=0", "objective.dpo.beta"),
                              ("objective.sft.weight=nan", "objective.sft.weight"),
                              ("objective.dpo.label_smoothing=inf", "objective.dpo.label_smoothing")]:
        with pytest.raises(ConfigError, match=rf"^{field} "):
            apply_overrides(composed, [assignment])


def test_huge_but_finite_values_pass_the_config_and_are_left_to_the_guard():
    """beta=1e38 and lr=1e39 have no principled upper bound here; the train step's finite guard stops
    them (test_faults_checkpoints: an infinite gradient norm, a non-finite updated state)."""
    apply_overrides(Experiment(), ["objective.beta=1e38", "optimizer.learning_rate=1e39"])


def test_typed_choices_name_their_owners_choices():
    """``logprob_impl``, ``remat`` and ``truncation`` accept exactly the choices their owners define
    (the kernels' ``IMPLS``, the models' ``REMAT_POLICIES``, the data layer's ``TRUNCATIONS``)."""
    from jalign.data import TRUNCATIONS
    from jalign.kernels import IMPLS
    from jalign.models import REMAT_POLICIES

    owners = {"train.logprob_impl": IMPLS, "model.remat": REMAT_POLICIES + (None,), "data.truncation": TRUNCATIONS}
    default = Experiment()
    for field, choices in owners.items():
        section, name = field.split(".")
        with pytest.raises(ConfigError) as error:  # an experiment file
            Experiment(**{section: dataclasses.replace(getattr(default, section), **{name: "fast"})})
        assert str(error.value) == f"{field} must be one of {list(choices)}; got 'fast'"
        with pytest.raises(ValueError, match=rf"^--set {field}=fast: .*expected one of"):  # the command line
            apply_overrides(default, [f"{field}=fast"])
        for choice in choices:
            assert getattr(getattr(apply_overrides(default, [f"{field}={choice}"]), section), name) == choice


def test_the_length_defaults_are_the_data_layers():
    """``DataSection`` takes ``max_length`` and ``truncation`` from `jalign.data.Tokenization`, which owns them."""
    from jalign.data import Tokenization

    data, owner = Experiment().data, Tokenization()
    assert (data.max_length, data.max_prompt_length, data.truncation) == (
        owner.max_length, owner.max_prompt_length, owner.truncation)
