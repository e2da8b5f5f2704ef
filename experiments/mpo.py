"""MPO (Gou & Nguyen 2024) as one command: reward-gap selection, DPO on the easy pairs, online RLHF on the
difficult prompts with the stage-1 model as policy start and reference (``jalign.train.mpo``).

    python experiments/mpo.py --data pairs.jsonl --reward-model RM_DIR --threshold 1.0 \\
        --model SFT_DIR --out runs/mpo

``RM_DIR`` is a reward-model checkpoint (e.g. one `jalign train experiments/reward_model.py` trained and
`jalign export` wrote); ``SFT_DIR`` the SFT model. ``--threshold`` has no default: the paper's value was
not found (see ``jalign.train.mpo``). The same recipe as `jalign` commands:

    python -c "from jalign.train.mpo import select; select('pairs.jsonl', 'RM_DIR', 1.0, 'runs/mpo')"
    jalign train experiments/mpo.py --set model.hf_dir=SFT_DIR --set data.train=runs/mpo/easy.jsonl \
        --set train.out_dir=runs/mpo/stage1
    jalign export runs/mpo/stage1 runs/mpo/stage1_model
    jalign train experiments/mpo.py --set objective=ppo --set model.hf_dir=runs/mpo/stage1_model \\
        --set online.prompts=runs/mpo/difficult_prompts.jsonl --set online.judge=RM_DIR \\
        --set train.out_dir=runs/mpo/stage2

``experiment()`` is stage 1's configuration (and, with the overrides above, stage 2's): DPO with
``beta=0.1`` (the paper's stage 1 is DPO; 0.1 is DPO's customary strength, not a value MPO states).
"""

import argparse
import dataclasses
import pathlib

from jalign.objectives import dpo
from jalign.objectives.registry import parse
from jalign.train.config import DataSection, Experiment, ModelSection, OnlineSection, TrainSection
from jalign.train.optim import OptimizerConfig


def experiment(model_dir: str | None = None) -> Experiment:
    return Experiment(
        model=ModelSection(hf_dir=model_dir),
        data=DataSection(max_length=512),
        objective=dpo(beta=0.1),
        optimizer=OptimizerConfig(learning_rate=5e-7, warmup_steps=10),
        train=TrainSection(steps=1000, batch_size=32, out_dir="runs/mpo/stage1", log_every=10, extras=()))


def stages(base: Experiment, *, stage2_objective: str = "ppo", max_new_tokens: int = 128,
           stage2_steps: int | None = None) -> tuple[Experiment, Experiment]:
    """Stage 1 (offline, ``base``) and stage 2 (the online loop, ``stage2_objective``, no data file)."""
    second = dataclasses.replace(
        base, objective=parse(stage2_objective), data=DataSection(),
        online=OnlineSection(max_new_tokens=max_new_tokens),
        train=dataclasses.replace(base.train, steps=stage2_steps or base.train.steps))
    return base, second


def main(argv=None) -> dict:
    from jalign.train.mpo import run_mpo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="JSONL prompt/chosen/rejected pairs")
    parser.add_argument("--reward-model", required=True, help="reward-model checkpoint directory (the judge)")
    parser.add_argument("--threshold", type=float, required=True, help="reward gap above which a pair is easy")
    parser.add_argument("--model", required=True, help="the SFT model's Hugging Face directory")
    parser.add_argument("--out", default="runs/mpo")
    parser.add_argument("--stage2-objective", default="ppo",
                        help="a sampled objective of the online loop (the paper's PPO by default)")
    args = parser.parse_args(argv)
    first, second = stages(experiment(args.model), stage2_objective=args.stage2_objective)
    result = run_mpo(first, second, data=args.data, judge=args.reward_model, threshold=args.threshold,
                     out=pathlib.Path(args.out), progress=True)
    print(f"MPO: {result['selection']}; stage-1 model {result['stage1_model']}; stage 2 in {args.out}/stage2")
    return result


if __name__ == "__main__":
    main()
