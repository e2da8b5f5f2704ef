"""PoFT's precomputed scores (``experiments/poft_scores.py``) against a PyTorch forward of the same checkpoint.

The recipe scores each response by its mean per-token log-likelihood under an
aligned Hugging Face checkpoint (Fan et al. 2024, Eq. 6). The expected numbers
come from ``transformers``' own model on the same token ids (prompt, response,
EOS), not from jalign's decoder or kernels. Slow: it builds and runs models.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
import torch

from jalign.models.tokenizer import train_tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
sys.path.insert(0, str(REPO / "tests" / "models"))

import poft_scores  # noqa: E402
from hf_tiny import build_torch_model  # noqa: E402


def _torch_mean_logp(model, tokenizer, prompt: str, response: str) -> float:
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    targets = ids[0, len(prompt_ids):]
    return float(logp[len(prompt_ids) - 1:].gather(1, targets[:, None]).mean())


@pytest.mark.slow
def test_scores_are_each_aligned_models_mean_token_loglikelihood(tmp_path):
    pairs = [json.loads(line) for line in (REPO / "experiments" / "data" / "tiny_pref.jsonl").read_text().splitlines()]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs[:6]))
    tokenizer = train_tiny_tokenizer([json.dumps(p) for p in pairs], 300, tmp_path / "tokenizer")
    models = []
    for seed in (0, 1):
        model = build_torch_model("llama", vocab_size=300)
        torch.manual_seed(seed)  # two different aligned models: the second's weights perturbed
        with torch.no_grad():
            for param in model.parameters():
                param.add_(seed * 0.1 * torch.randn_like(param))
        model.save_pretrained(tmp_path / f"aligned{seed}")
        tokenizer.save_pretrained(tmp_path / f"aligned{seed}")
        models.append(model)
    out = tmp_path / "scored.jsonl"
    poft_scores.main([str(data), "--aligned", str(tmp_path / "aligned0"), str(tmp_path / "aligned1"),
                      "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        for field, response in (("aligned_logps_chosen", record["chosen"]),
                                ("aligned_logps_rejected", record["rejected"])):
            expected = [_torch_mean_logp(m, tokenizer, record["prompt"], response) for m in models]
            np.testing.assert_allclose(record[field], expected, rtol=2e-4)
            assert abs(expected[0] - expected[1]) > 1e-3
