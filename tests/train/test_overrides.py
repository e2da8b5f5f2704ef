"""`--set path=value` overrides: typed parsing, objective hyperparameters, clear errors."""

import dataclasses
from typing import Literal

import pytest

from jalign.objectives import dpo, ipo, sft
from jalign.train.overrides import apply_overrides


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["constant", "cosine"] = "constant"
    clip: float | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    optim: Optim = Optim()
    objective: object = dpo()
    tags: tuple[str, ...] = ()
    verbose: bool = False


def test_typed_fields_are_parsed_to_their_annotation():
    cfg = apply_overrides(Config(), ["optim.lr=3e-4", "optim.steps=7", "optim.schedule=cosine",
                                     "optim.clip=1.5", "tags=a,b", "verbose=true"])
    assert cfg.optim == Optim(lr=3e-4, steps=7, schedule="cosine", clip=1.5)
    assert cfg.tags == ("a", "b") and cfg.verbose is True
    assert apply_overrides(cfg, ["optim.clip=none"]).optim.clip is None


def test_objective_hyperparameters_single_composed_and_replaced():
    cfg = apply_overrides(Config(), ["objective.beta=0.05"])
    assert cfg.objective.beta == 0.05
    composed = Config(objective=dpo() + dpo() + 0.2 * sft())
    cfg = apply_overrides(composed, ["objective.dpo_1.beta=0.5", "objective.sft.weight=0.7"])
    assert [t.name for t in cfg.objective.terms] == ["dpo", "dpo", "sft"]
    assert cfg.objective.terms[0].beta == 0.1 and cfg.objective.terms[1].beta == 0.5
    assert cfg.objective.terms[2].weight == 0.7
    assert isinstance(apply_overrides(Config(), ["objective=ipo"]).objective, type(ipo()))


@pytest.mark.parametrize("assignment, message", [
    ("optim.lr2=1", r"Optim has no field 'lr2'; valid fields: \['lr', 'steps', 'schedule', 'clip'\]"),
    ("optim.steps=1.5", r"cannot parse '1.5' as <class 'int'>"),
    ("optim.schedule=linear", r"expected one of \['constant', 'cosine'\]"),
    ("objective.betta=1", r"DPO has no field 'betta'; valid fields: \['beta', 'label_smoothing', 'average'\]"),
    ("objective=dpoo", r"unknown objective 'dpoo'"),
    ("optim", r"must look like path.to.field=value"),
])
def test_typos_and_bad_values_name_the_valid_choices(assignment, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(Config(), [assignment])


def test_sweep_strength_key_follows_each_objectives_declaration():
    """`beta` in a grid is the declared strength: IPO's tau, a sum's one strengthened term, LCPO's inner."""
    from jalign.objectives import lcpo, sppo
    from jalign.train.sweep import point_overrides

    assert point_overrides(Config(objective=ipo()), {"beta": "0.3"}) == ["objective.tau=0.3"]
    assert point_overrides(Config(objective=sppo()), {"beta": "5"}) == ["objective.eta=5"]
    composed = Config(objective=dpo() + 0.2 * sft())
    (assignment,) = point_overrides(composed, {"beta": "0.05"})
    assert assignment == "objective.dpo.beta=0.05"
    assert apply_overrides(composed, [assignment]).objective.terms[0].beta == 0.05
    wrapped = Config(objective=lcpo(inner=ipo()))
    (assignment,) = point_overrides(wrapped, {"beta": "0.4"})
    assert apply_overrides(wrapped, [assignment]).objective.inner.tau == 0.4


@pytest.mark.parametrize("objective, why", [(sft(), "it has none"),
                                            (dpo() + ipo(), r"its terms \['dpo', 'ipo'\] each have one")])
def test_sweep_strength_key_is_refused_where_no_single_strength_exists(objective, why):
    from jalign.train.sweep import point_overrides

    with pytest.raises(ValueError, match=why):
        point_overrides(Config(objective=objective), {"beta": "0.1"})


def test_rule_table_entries_are_set_one_logical_name_at_a_time():
    """`mesh.rules.NAME=...` adds or replaces one entry of the mesh section's rule table."""
    from jalign.sharding import DEFAULT_RULES, MeshConfig

    @dataclasses.dataclass(frozen=True)
    class WithMesh:
        mesh: MeshConfig = MeshConfig()

    cfg = apply_overrides(WithMesh(), ["mesh.rules.embed=none", "mesh.rules.batch=data,fsdp,tensor"])
    table = cfg.mesh.rule_table()
    assert table["embed"] is None and table["batch"] == ("data", "fsdp", "tensor")
    assert table["mlp"] == DEFAULT_RULES["mlp"]
