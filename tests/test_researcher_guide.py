"""The README's "Researcher guide", run as written: its experiment file and every command in its bash blocks.

The commands are read from README.md, so a changed command is the one
tested. Stand-ins for the user's assets: a random tiny Llama saved with
``save_hf`` beside a tiny tokenizer with a chat template
(``checkpoints/my-sft``), and the shipped preference files as chat JSONL,
a JSON array, and a saved ``DatasetDict`` with train and test splits.
The default test resolves every command (arguments, overrides, data
sources, sweep points, what export reads); the slow one runs them, shortened
to 2 steps, and checks what each wrote against what the guide promises.
"""

import csv
import json
import pathlib
import re
import shlex
import shutil

import datasets
import pytest

from jalign.cli import build_parser, load_experiment, main
from jalign.train import sweep
from jalign.train.loop import plan_for

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "experiments" / "data"
SHORT = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.eval_every=1",
         "--set", "train.eval_max_new_tokens=4"]


def _guide() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Researcher guide\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _experiment_file() -> tuple[str, str]:
    """The guide's experiment file: ``(name from its first-line comment, source)``."""
    (source,) = re.findall(r"```python\n(.*?)```", _guide(), re.S)
    name = re.match(r"# (\S+\.py)\n", source).group(1)
    return name, source


def _commands() -> list[list[str]]:
    """argv (without ``jalign``) of every command line in the guide's bash blocks, in order."""
    lines = [line for block in re.findall(r"```bash\n(.*?)```", _guide(), re.S) for line in block.splitlines()]
    argvs = [shlex.split(line, comments=True) for line in lines]
    assert all(argv[0] == "jalign" for argv in argvs if argv), lines
    return [argv[1:] for argv in argvs if argv]


def _write_data(root: pathlib.Path) -> None:
    """data/prefs.jsonl (chat), data/prefs.json (a JSON array), data/test.jsonl, data/prefs_dict (train/test)."""
    (root / "data").mkdir()
    chat = [json.loads(line) for line in (DATA / "tiny_pref_chat.jsonl").read_text().splitlines()]
    text = [json.loads(line) for line in (DATA / "tiny_pref.jsonl").read_text().splitlines()]
    shutil.copy(DATA / "tiny_pref_chat.jsonl", root / "data" / "prefs.jsonl")
    (root / "data" / "prefs.json").write_text(json.dumps(text[3:]))
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text[:3]))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(chat[3:]),
                          "test": datasets.Dataset.from_list(chat[:3])}).save_to_disk(root / "data" / "prefs_dict")


def _write_checkpoint(root: pathlib.Path) -> None:
    """checkpoints/my-sft: a random tiny Llama as a Hugging Face directory, with a tokenizer of the data."""
    from flax import nnx

    from jalign.models import Decoder, ModelConfig, save_hf
    from jalign.models.tokenizer import load_tokenizer, tiny_tokenizer_for

    corpus = root / "corpus.jsonl"
    corpus.write_text((DATA / "tiny_pref_chat.jsonl").read_text() + (DATA / "tiny_pref.jsonl").read_text())
    directory = root / "checkpoints" / "my-sft"
    tokenizer = load_tokenizer(tiny_tokenizer_for(corpus, 300, root / "tokenizer"))
    arch = ModelConfig("llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
    save_hf(Decoder(arch, rngs=nnx.Rngs(0)), str(directory), pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(str(directory))


@pytest.fixture
def guide_dir(tmp_path, monkeypatch):
    """A working directory holding the guide's data and experiment file (the commands' relative paths)."""
    _write_data(tmp_path)
    name, source = _experiment_file()
    (tmp_path / name).write_text(source)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _out_dir(argv: list[str]) -> str:
    _, config = load_experiment(argv[1], [v for flag, v in zip(argv, argv[1:]) if flag == "--set"])
    return config.train.out_dir


def test_every_guide_command_resolves(guide_dir):
    """Train: the overrides apply and the data (and held-out data) open with the columns the objective needs;
    sweep: every point checks; export: it reads a run that a train command of the guide writes."""
    commands = _commands()
    assert {argv[0] for argv in commands} == {"train", "export", "sweep"}
    trained = set()
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        if argv[0] == "train":
            _, config = load_experiment(args.file, args.set)
            plan_for(config)
            assert config.data.eval_fraction or config.data.open_eval() is not None, argv
            trained.add(config.train.out_dir)
        elif argv[0] == "sweep":
            _, config = load_experiment(args.file, args.set)
            assert len(sweep.check_points(config, sweep.parse_grid(args.grid), args.set)) > 1
        else:
            assert args.run_dir in trained, f"{args.run_dir} is not written by a train command of the guide"


@pytest.mark.slow
def test_the_guide_runs_as_written(guide_dir):
    """Each command, 2 steps: held-out rows and generations at both steps; the export loads in transformers;
    the sweep's table has a row with eval metrics per point, and its plots exist."""
    import transformers

    _write_checkpoint(guide_dir)
    for argv in _commands():
        extra = SHORT if argv[0] in ("train", "sweep") else []
        assert main(argv + extra) == 0, argv
        if argv[0] == "train":
            out = guide_dir / _out_dir(argv + extra)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if "eval/loss" in r] == [1, 2]
            steps = [json.loads(line)["step"] for line in (out / "generations.jsonl").read_text().splitlines()]
            assert steps and steps.count(1) == steps.count(2) == len(steps) // 2
        elif argv[0] == "export":
            model = transformers.AutoModelForCausalLM.from_pretrained(argv[2])
            assert model.config.vocab_size == 300
            assert (guide_dir / argv[2] / "tokenizer_config.json").exists()
        else:
            out = guide_dir / build_parser().parse_args(argv).out
            with (out / "sweep.csv").open() as f:
                table = list(csv.DictReader(f))
            grid = sweep.parse_grid(build_parser().parse_args(argv).grid)
            assert len(table) == len(sweep.points(grid))
            assert all(r.get("eval/rewards/accuracy") or r.get("eval/dpo/rewards/accuracy") for r in table)
            assert (out / "curves.png").exists() and (out / "strength.png").exists()
