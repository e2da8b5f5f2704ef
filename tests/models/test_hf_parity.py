"""Per-token log-probs of jalign decoders loaded from HF checkpoints vs PyTorch."""

import numpy as np
import pytest

from hf_tiny import FAMILIES, jit_forward, next_token_logprobs, padded_batch, torch_logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_match_torch(family, hf_checkpoints, jalign_models):
    """Compares against the PyTorch `transformers` model (eager attention, fp32).

    The batch mixes a full row, a right-padded and a left-padded row; both
    models get the same position ids. Per-token log-probs of the next token
    at valid positions agree within 1e-4.
    """
    _, torch_model = hf_checkpoints(family)
    model = jalign_models(family)
    tokens, mask, positions = padded_batch()
    ref, valid = next_token_logprobs(torch_logits(torch_model, tokens, mask, positions),
                                     tokens, mask)
    got, _ = next_token_logprobs(jit_forward(model, tokens, mask), tokens, mask)
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-4, rtol=0)
