"""Tiny Llama-shaped models for the profiler's CPU tests."""
import pytest
import yaml

from simulator.config import ModelConfig

TINY = {"name": "tiny-llama", "num_layers": 2, "hidden_size": 64, "num_q_heads": 4, "num_kv_heads": 2, "head_dim": 16,
            "intermediate_size": 96, "vocab_size": 200, "max_model_len": 128}


@pytest.fixture
def tiny_model() -> ModelConfig:
    return ModelConfig(**TINY)


@pytest.fixture
def tiny_yaml(tmp_path):
    """The tiny model as a conf/model-style YAML file, plus a second model sharing all but its vocab."""
    path = tmp_path / "tiny-llama.yaml"
    path.write_text(yaml.safe_dump(TINY))
    other = tmp_path / "tiny-other-vocab.yaml"
    other.write_text(yaml.safe_dump({**TINY, "name": "tiny-other-vocab", "vocab_size": 300}))
    return path, other
