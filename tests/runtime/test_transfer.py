"""The GPU transfer (simulator/runtime/transfer.py): exact hardware ratios at the roofline's ends, the
roofline between them, the facts it needs named when missing, and a transferred predictor that says so."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from synthetic import TEST_GPU, TINY_MODEL

import simulator.runtime.build as build_module  # where the predictor is built (profile_source)
from simulator.config import ConfigError, load_hardware_config, load_model_config
from simulator.runtime.predictor import build_predictor, predict_batch
from simulator.runtime.transfer import (
    Ceilings,
    ceilings,
    check_facts,
    transfer_attention,
    transfer_comm_ms,
    transfer_ms,
    transfer_ops,
)

SOURCE = Ceilings(name="src", matmul_flops_per_s=800e12, attention_flops_per_s=350e12, bytes_per_s=3e12,
                  attention_bytes_per_s=3e12, num_sms=132, link_bytes_per_s=900e9, sm_cycles_per_s=132 * 1.98e9)
TARGET = Ceilings(name="tgt", matmul_flops_per_s=250e12, attention_flops_per_s=230e12, bytes_per_s=1.8e12,
                  attention_bytes_per_s=1.8e12, num_sms=108, link_bytes_per_s=600e9, sm_cycles_per_s=108 * 1.41e9)
FACTS = {"num_sms": 100, "boost_clock_mhz": 1500.0, "l2_cache_mib": 40.0, "pcie_bandwidth_gbps": 64.0, "attention_kernel": "FA2",
         "attention_efficiency": 0.5}


def test_a_purely_compute_bound_op_scales_by_the_flops_ratio_exactly():
    flops = np.array([1e12, 5e13])
    at_source_ceiling_ms = flops / SOURCE.matmul_flops_per_s * 1e3
    got = transfer_ms(at_source_ceiling_ms, flops, np.zeros(2), SOURCE, TARGET)
    np.testing.assert_allclose(got, at_source_ceiling_ms * 800 / 250, rtol=1e-12)
    frame = pd.DataFrame({"time_ms": at_source_ceiling_ms, "p10_ms": at_source_ceiling_ms,
                          "p90_ms": at_source_ceiling_ms, "flops": flops, "bytes": [0.0, 0.0],
                          "tflops": 0.0, "tbps": 0.0})
    out = transfer_ops(frame, SOURCE, TARGET)
    np.testing.assert_allclose(out["time_ms"], at_source_ceiling_ms * 3.2, rtol=1e-12)
    np.testing.assert_allclose(out["tflops"], 250.0, rtol=1e-9)  # the target's ceiling, exactly


def test_a_purely_memory_bound_op_scales_by_the_bandwidth_ratio_exactly():
    bytes_ = np.array([1e6, 4e9])
    at_source_ceiling_ms = bytes_ / SOURCE.bytes_per_s * 1e3
    got = transfer_ms(at_source_ceiling_ms, np.zeros(2), bytes_, SOURCE, TARGET)
    np.testing.assert_allclose(got, at_source_ceiling_ms * 3.0 / 1.8, rtol=1e-12)


SM_RATIO = (132 * 1.98) / (108 * 1.41)  # SM cycles per second, source over target


def test_the_transition_follows_each_rows_roofline_and_the_rest_scales_with_sm_cycles():
    # 1e12 FLOPs and 3e9 bytes: 1.25 ms of compute and 1 ms of memory on the source (compute-bound);
    # on the target 4 ms of compute and 1.667 ms of memory (compute-bound). Measured 1.5 ms: 0.25 ms no
    # ceiling explains, which takes SM_RATIO as long on the target's fewer, slower-clocked SMs.
    got = transfer_ms([1.5], [1e12], [3e9], SOURCE, TARGET)
    assert got[0] == pytest.approx(4.0 + 0.25 * SM_RATIO)
    # An op memory-bound on the source and compute-bound on the target: 4e11 FLOPs, 3e9 bytes.
    got = transfer_ms([1.0], [4e11], [3e9], SOURCE, TARGET)
    assert got[0] == pytest.approx(max(4e11 / 250e12, 3e9 / 1.8e12) * 1e3)
    # No work counted (a launch, index arithmetic): only the SM ratio applies.
    assert transfer_ms([0.004], [0.0], [0.0], SOURCE, TARGET)[0] == pytest.approx(0.004 * SM_RATIO)


def test_attention_uses_the_attention_kernels_ceiling_not_the_gemms():
    flops = 3.5e12  # 10 ms at the source's attention ceiling of 350 TFLOP/s
    frame = pd.DataFrame({"time_ms": [10.0], "p10_ms": [9.0], "p90_ms": [11.0], "flops": [flops], "bytes": [0.0],
                          "tflops": 0.0, "tbps": 0.0})
    out = transfer_attention(frame, SOURCE, TARGET)
    assert out["time_ms"][0] == pytest.approx(flops / 230e12 * 1e3)
    assert out["p90_ms"][0] == pytest.approx(11.0 * out["time_ms"][0] / 10.0)


def test_collectives_scale_their_link_bound_share_with_the_link():
    # At the best bus bandwidth of the table: all link-bound; at a tenth of it: a tenth.
    got = transfer_comm_ms([1.0, 1.0], [300.0, 30.0], np.array([300.0, 300.0]), SOURCE, TARGET)
    np.testing.assert_allclose(got, [1.5, 0.1 * 1.5 + 0.9])


def test_a100_reaches_flash_attention_2s_share_of_its_peak():
    a100 = load_hardware_config("a100")
    c = ceilings(a100, 0.8, 0.9)
    assert c.attention_flops_per_s == pytest.approx(0.73 * 312e12)
    assert c.link_bytes_per_s == 600e9
    assert ceilings(load_hardware_config("l40s"), 0.8, 0.9).link_bytes_per_s == 64e9  # no NVLink: PCIe


@pytest.mark.parametrize("field", ["num_sms", "boost_clock_mhz", "l2_cache_mib", "attention_efficiency"])
def test_a_missing_fact_stops_with_the_field_named(field):
    gpu = dataclasses.replace(TEST_GPU, **(FACTS | {field: None}))
    with pytest.raises(ConfigError, match=f"testgpu.yaml: field '{field}' is missing"):
        check_facts(gpu, "target")


def test_a_yaml_without_a_fact_stops_before_any_fit(tmp_path, nothing_runs):
    values = {**dataclasses.asdict(load_hardware_config("a100")), "name": "mygpu", "profile": "mygpu"}
    del values["num_sms"]
    path = tmp_path / "mygpu.yaml"
    path.write_text("\n".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in values.items()
                              if v is not None))
    with pytest.raises(ConfigError, match="field 'num_sms' is missing"):
        predict_batch("llama-2-7b", str(path), [[1, 16]])


def test_an_unknown_source_gpu_is_named_with_the_field():
    gpu = dataclasses.replace(load_hardware_config("a100"), transfer_from="v100")
    with pytest.raises(ConfigError, match="a100.yaml: transfer_from='v100': unknown hardware 'v100'"):
        build_predictor(load_model_config("llama-2-7b"), gpu, 1, 1)


def test_shipped_gpus_have_every_fact():
    for name in ("h100", "h200", "a100", "a100_pcie", "l40s", "b200"):
        check_facts(load_hardware_config(name), "target")


def test_a_transferred_predictor_says_where_its_times_come_from(profiles_dir, cache_dir, monkeypatch):
    """A GPU without tables, transferred from the synthetic one: slower where the hardware is, named as
    transferred, and a measured profile wins once it exists."""
    source = dataclasses.replace(TEST_GPU, **FACTS)
    target = dataclasses.replace(source, name="slowgpu", profile="slowgpu", comm_profile="slowgpu",
                                 bf16_dense_tflops=source.bf16_dense_tflops / 2,
                                 memory_bandwidth_tbps=source.memory_bandwidth_tbps / 2, transfer_from="testgpu")
    monkeypatch.setattr(build_module, "load_hardware_config", lambda name: {"testgpu": source}[name])
    measured = build_predictor(TINY_MODEL, source, 1, 1, 0.0, engine="servesim_execute", profiles_dir=profiles_dir,
                               cache_directory=cache_dir)
    transferred = build_predictor(TINY_MODEL, target, 1, 1, 0.0, engine="servesim_execute",
                                  profiles_dir=profiles_dir, cache_directory=cache_dir)
    assert transferred.fitted.transferred_from == "testgpu" and measured.fitted.transferred_from == ""
    assert transferred.calibration["source"].startswith("transferred from testgpu")
    q, kv = np.array([2048]), np.array([0])
    slow, fast = transferred.breakdown(q, kv), measured.breakdown(q, kv)
    assert slow.transferred_from == "testgpu"
    # Half the FLOP/s and bytes/s, the same SMs: the tiny model's GEMMs are half launch time (4 us, kept)
    # and half work (doubled), so its linear layers take about 1.5 times as long.
    assert 1.3 < slow.breakdown_ms["linear"] / fast.breakdown_ms["linear"] < 2.0
    # Collectives: half the NVLink bandwidth; large all-reduces are link-bound, so they take longer.
    slow_link = dataclasses.replace(target, name="slowlink", profile="slowlink", comm_profile="slowlink",
                                    nvlink_bandwidth_gbps=source.nvlink_bandwidth_gbps / 2)
    tp2 = [build_predictor(TINY_MODEL, gpu, 2, 1, 0.0, engine="servesim_execute", profiles_dir=profiles_dir,
                           cache_directory=cache_dir).breakdown(np.array([8192]), np.array([0]))
           for gpu in (source, slow_link)]
    assert 1.5 < tp2[1].breakdown_ms["communication"] / tp2[0].breakdown_ms["communication"] <= 2.0
    assert build_module.profile_source(TINY_MODEL, target, profiles_dir) == "testgpu"
    assert build_module.profile_source(TINY_MODEL, source, profiles_dir) == "testgpu"


def test_a_run_on_a100_says_its_times_are_transferred_from_h100(capsys):
    from simulator.run import SimulationConfig, run_simulation
    from simulator.run_header import setup_lines
    from simulator.runtime.cli import main as predict_main

    workload = {"trace": None, "arrival": "poisson", "rate_qps": 2.0, "lengths": "uniform",
                "min_tokens": 64, "max_tokens": 512, "num_requests": 20}
    cfg = SimulationConfig.from_dict({"model": "llama-2-7b", "hardware": "a100", "predictor": "fitted",
                                      "workload": workload, "policy": {"name": "sarathi", "chunk_size": 256}})
    result = run_simulation(cfg)
    words = result.summary["setup"]["predictor_description"]
    assert "a100 kernel times transferred from h100" in words, words
    assert any("transferred from h100" in line for line in setup_lines(result.summary["setup"]))
    # Same batches, same engine: the A100 is slower than the H100 it was transferred from.
    h100 = run_simulation(dataclasses.replace(cfg, hardware=load_hardware_config("h100")))
    assert result.summary["e2e_s"]["mean"] > h100.summary["e2e_s"]["mean"]
    assert "transferred" not in h100.summary["setup"]["predictor_description"]
    # servesim-predict says the same
    assert predict_main(["model=llama-2-7b", "hardware=a100", "batch=[[512,0],[1,1024]]"]) == 0
    assert "kernel times transferred from h100 profiles" in capsys.readouterr().out


def test_h200_prices_its_own_profiles_and_transfers_only_the_models_it_lacks():
    """conf/hardware/h200.yaml transfers from h100: llama-3.1-8b (profiled on the H100 only) is priced from
    the H100's tables; every model measured on the H200 keeps its own."""
    h200 = load_hardware_config("h200")
    assert build_module.profile_source(load_model_config("llama-3.1-8b"), h200) == "h100"
    for name in ("llama-3-8b", "llama-2-7b", "llama-3-70b"):
        assert build_module.profile_source(load_model_config(name), h200) == "h200", name
