"""Session fixtures: tiny HF checkpoints per family and their jalign twins."""

import pytest

from jalign.models import load_hf


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """family -> (checkpoint dir, torch model), built lazily once per session."""
    cache = {}

    def get(family):
        if family not in cache:
            from hf_tiny import build_torch_model
            model = build_torch_model(family)
            directory = str(tmp_path_factory.mktemp(family))
            model.save_pretrained(directory)
            cache[family] = (directory, model)
        return cache[family]
    return get


@pytest.fixture(scope="session")
def jalign_models(hf_checkpoints):
    """family -> jalign Decoder loaded from the saved checkpoint (fp32)."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_hf(hf_checkpoints(family)[0])
        return cache[family]
    return get


@pytest.fixture(scope="session")
def hf_reward_checkpoints(tmp_path_factory):
    """family -> (checkpoint dir, torch ``*ForSequenceClassification`` with num_labels=1), built once."""
    cache = {}

    def get(family):
        if family not in cache:
            import transformers
            from hf_tiny import build_torch_model
            model = build_torch_model(family, transformers.AutoModelForSequenceClassification,
                                      num_labels=1)
            directory = str(tmp_path_factory.mktemp(f"{family}-reward"))
            model.save_pretrained(directory)
            cache[family] = (directory, model)
        return cache[family]
    return get
