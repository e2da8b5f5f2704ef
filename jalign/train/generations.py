"""Sampled generations at held-out evaluation: what the policy says, beside what the data says.

With ``train.eval_generations = N``, every held-out evaluation also
generates a response from the current policy for the first ``N`` held-out
prompts (in record order, the same prompts every time, so one prompt's rows
show how the policy's answer moves over training). Each becomes a row
``{"step", "record", "prompt", "response", "chosen"}``: the prompt as the
model read it (its tokens decoded, chat template included), the policy's
response (special tokens and the stop token left out), and the data's first
response (the chosen one of a pair, the best of a ranked list, the single
response of unpaired data). `jalign.train.metrics_log.MetricsWriter` writes
the rows to ``out_dir/generations.jsonl`` and to TensorBoard's text tab.

Decoding is greedy by default (``train.eval_temperature = 0``): the rows of
two evaluations then differ only because the policy changed, not because of
sampling noise, and a resumed run writes the same text. A temperature > 0
samples with a key derived from ``train.seed`` and the step, so that is
reproducible too. Responses end at the tokenizer's EOS or after
``train.eval_max_new_tokens`` tokens.

Generation runs the KV-cache sampler (`jalign.models.sampling.sample`) in
one jit on the mesh, as the online loop does; every process runs it (the
parameters are sharded over all of them) and only process 0 writes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.data import PreferenceData
from jalign.models.sampling import SamplingConfig, sample
from jalign.sharding import activate
from jalign.train.hosts import gathered


class EvalGenerations:
    """The policy's responses to a fixed set of held-out prompts, as table rows.

    Args:
      exp: the experiment (``train.eval_generations``, ``eval_max_new_tokens``,
        ``eval_temperature``, ``seed``).
      graphdef: the policy's graphdef; ``FrozenModels.rest`` completes it.
      tokenizer: the policy's tokenizer (decodes prompts and responses).
      eval_data: the held-out data (every process holds all of it), or None.
      mesh, rules: where generation runs and how activations are sharded.

    Raises:
      ValueError: no held-out data, or a run that trains a score head.
    """

    def __init__(self, exp, graphdef, tokenizer, eval_data: PreferenceData | None, mesh, rules, *,
                 scores: str | None = None):
        if eval_data is None:
            raise ValueError("train.eval_generations needs held-out data: set data.eval, data.eval_split or "
                             "data.eval_fraction (an online run has none)")
        if scores is not None:
            raise ValueError(f"train.eval_generations: this run trains a {scores} head, which does not generate; "
                             "set train.eval_generations=0")
        self.tokenizer, self.seed = tokenizer, exp.train.seed
        examples = eval_data.examples[:exp.train.eval_generations]
        self.records = [e.index for e in examples]
        self.prompts = [tokenizer.decode(e.prompt.tolist()) for e in examples]
        self.chosen = [tokenizer.decode(e.responses[0].tolist(), skip_special_tokens=True) for e in examples]
        self.tokens, self.mask = _right_padded([e.prompt for e in examples], rows=_multiple(len(examples), mesh.size),
                                               pad=eval_data.pad_id)
        eos = tokenizer.eos_token_id
        self.stops = np.asarray([-1 if eos is None else eos], np.int32)
        cfg = SamplingConfig(max_new_tokens=exp.train.eval_max_new_tokens, temperature=exp.train.eval_temperature,
                             pad_token=eval_data.pad_id)
        stops = self.stops

        def draw(params, rest, tokens, mask, key):
            with activate(mesh, rules):
                return sample(nnx.merge(graphdef, params, rest), tokens, mask, key, cfg, jnp.asarray(stops))

        self._draw = jax.jit(draw)

    def __call__(self, params: Any, rest: Any, step: int) -> list[dict]:
        """The rows of ``step``: the policy ``(params, rest)``'s response to each prompt."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        generation = self._draw(params, rest, self.tokens, self.mask, key)
        tokens, mask = (np.asarray(x) for x in gathered((generation.tokens, generation.mask)))
        rows = []
        for i, (record, prompt, chosen) in enumerate(zip(self.records, self.prompts, self.chosen)):
            response = tokens[i, :mask[i].sum()]
            if len(response) and response[-1] in self.stops:
                response = response[:-1]
            rows.append({"record": record, "prompt": prompt,
                         "response": self.tokenizer.decode(response.tolist(), skip_special_tokens=True),
                         "chosen": chosen})
        return rows


def _multiple(count: int, of: int) -> int:
    """The least multiple of ``of`` >= ``count`` (rows divide over the mesh's batch axes)."""
    return -(-count // of) * of


def _right_padded(prompts: list[np.ndarray], *, rows: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 tokens and bool mask ``[rows, longest prompt]``; rows past the prompts repeat the first."""
    length = max(len(p) for p in prompts)
    tokens = np.full((rows, length), pad, np.int32)
    mask = np.zeros((rows, length), bool)
    for i in range(rows):
        prompt = prompts[i] if i < len(prompts) else prompts[0]
        tokens[i, :len(prompt)], mask[i, :len(prompt)] = prompt, True
    return tokens, mask
