"""servesim-predict prints the documented JSON and rejects bad arguments."""
import json

import pytest
import yaml
from synthetic import TEST_GPU, TINY_MODEL

from simulator.runtime.cli import main, parse_args
from simulator.runtime.predictor import BREAKDOWN_KEYS


@pytest.fixture()
def config_files(tmp_path, profiles_dir, cache_dir, make_predictor):
    make_predictor()  # fitted once per session
    model, gpu = tmp_path / "tiny.yaml", tmp_path / "testgpu.yaml"
    model.write_text(yaml.safe_dump(TINY_MODEL.__dict__))
    gpu.write_text(yaml.safe_dump(TEST_GPU.__dict__))
    return [f"model={model}", f"hardware={gpu}", f"profiles_dir={profiles_dir}", f"cache_dir={cache_dir}"]


def test_json_output_shape(config_files, capsys):
    assert main([*config_files, "batch=[[2048,0],[1,1024]]", "cpu_overhead_ms=0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"total_ms", "breakdown_ms", "stage_ms", "engine", "transferred_from"}
    assert out["engine"] == "vllm_v1" and out["transferred_from"] == ""  # measured tables
    assert set(out["breakdown_ms"]) == set(BREAKDOWN_KEYS)
    assert out["breakdown_ms"]["cpu_overhead"] == pytest.approx(0.5)
    assert len(out["stage_ms"]) == 1 and out["stage_ms"][0] == pytest.approx(out["total_ms"])
    assert sum(out["breakdown_ms"].values()) == pytest.approx(out["total_ms"], rel=1e-9)
    assert out["breakdown_ms"]["attention_prefill"] > out["breakdown_ms"]["attention_decode"] > 0

    assert main([*config_files, "batch=[[1,100]]", "pp=2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["stage_ms"]) == 2

    assert main([*config_files, "batch=[[2048,0],[1,1024]]"]) == 0
    table = capsys.readouterr().out
    assert "total" in table and "attention_prefill" in table and " ms" in table and "engine           vllm_v1" in table
    # The synthetic GPU has no measured forwards: nothing to calibrate with, and the table says so.
    assert "kernel times calibrated x1.0000 + 0.0 us per layer (none;" in table


def test_bad_arguments_exit_2_with_a_message(capsys):
    assert main(["model=llama-2-7b", "hardware=h100"]) == 2
    assert "missing argument(s): batch" in capsys.readouterr().err
    assert main(["model=llama-2-7b", "hardware=h100", "batch=[[1,2]", "--json"]) == 2
    assert "batch" in capsys.readouterr().err
    assert main(["model=llama-2-7b", "hardware=h100", "batch=[[0,2]]"]) == 2
    assert "q_tokens >= 1" in capsys.readouterr().err
    assert main(["model=llama-2-7b", "hardware=v100", "batch=[[1,2]]"]) == 2
    assert "unknown hardware 'v100'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown argument"):
        parse_args(["modle=x"])


@pytest.mark.parametrize("batch, message", [
    ("[[1.5,100]]", "batch[0]=[1.5, 100]: expected whole numbers q_tokens >= 1 and kv_tokens >= 0"),
    ("[[1,100],[true,100]]", "batch[1]=[true, 100]: expected whole numbers q_tokens >= 1 and kv_tokens >= 0"),
    ("[[1,-1]]", "batch[0]=[1, -1]: expected whole numbers"),
    ("[[1,4096]]", "batch[0]=[1, 4096]: q_tokens + kv_tokens = 4097 exceeds the model's max_model_len=4096"),
    ("[[1,9223372036854775808]]", "q_tokens + kv_tokens = 9223372036854775809 exceeds the model's"),
    ("[[1,2,3]]", "batch[0]=[1, 2, 3]: expected a pair [q_tokens, kv_tokens]"),
    ("[]", "batch must be a non-empty list"),
])
def test_token_counts_that_are_not_whole_or_beyond_the_context_exit_2(batch, message, capsys, monkeypatch):
    from simulator.runtime import cli

    monkeypatch.setattr(cli, "predict_batch", lambda *a, **k: pytest.fail("a bad batch was predicted"))
    assert main(["model=llama-2-7b", "hardware=h100", f"batch={batch}"]) == 2
    first_line = capsys.readouterr().err.splitlines()[0]  # the usage line follows
    assert first_line.startswith("servesim-predict: batch") and message in first_line
