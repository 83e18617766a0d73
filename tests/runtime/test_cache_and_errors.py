"""Fits are cached on disk and never trusted blindly; missing profiles fail with clear errors."""
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from synthetic import NO_PROFILE_GPU, TEST_GPU, TINY_MODEL, write_profiles

from profiler.tables import pack
from simulator.config import ConfigError, load_hardware_config, load_model_config
from simulator.runtime import ProfileError, build_predictor, cache
from simulator.runtime import fit as fit_module  # the predictor imports fit_runtime from here when it fits
from simulator.runtime.tables import profile_files, read_attention, read_ops


@pytest.fixture()
def own_profiles(tmp_path, profiles_dir, cache_dir, make_predictor):
    """A private copy of the synthetic tables and of the session's fitted cache."""
    make_predictor()  # make sure the session's fit is cached
    shutil.copytree(profiles_dir.parent / "profiles", tmp_path / "profiles")
    shutil.copytree(cache_dir, tmp_path / "cache")
    return tmp_path / "profiles", tmp_path / "cache"


def count_fits(monkeypatch, make_predictor=None):
    """Record calls to fit_runtime. With `make_predictor`, answer them with the session's fit instead of
    fitting again (these tests are about when a fit happens, not what it learns)."""
    calls = []
    real = fit_module.fit_runtime

    def counting(*args, **kwargs):
        calls.append(args)
        return make_predictor().fitted if make_predictor else real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "fit_runtime", counting)
    return calls


def build(profiles, cache):
    return build_predictor(TINY_MODEL, TEST_GPU, 1, 1, 0.0, engine="servesim_execute", profiles_dir=profiles,
                           cache_directory=cache)


def test_cache_is_reused_and_gives_the_same_predictions(own_profiles, monkeypatch, make_predictor):
    fits = count_fits(monkeypatch)
    cached = build(*own_profiles)
    assert fits == []  # the session fixture already fitted these tables
    q, kv = np.array([300, 1, 1]), np.array([0, 50, 2000])
    np.testing.assert_array_equal(cached.stage_times_s(q, kv), make_predictor().stage_times_s(q, kv))
    assert not list(own_profiles[1].glob("*.pkl"))  # arrays and JSON only


def test_editing_a_profile_file_refits(own_profiles, monkeypatch, make_predictor):
    profiles, cache = own_profiles
    ops = profiles / "testgpu" / TINY_MODEL.name / "ops.csv"
    lines = ops.read_text().splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    column = header.index("time_ms")
    first[column] = str(float(first[column]) * 1.5)
    ops.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    fits = count_fits(monkeypatch, make_predictor)
    build(profiles, cache)
    assert len(fits) == 1
    build(profiles, cache)
    assert len(fits) == 1  # and the new fit is cached in turn


def test_gzipped_tables_read_alike_and_refit_once(own_profiles, monkeypatch, make_predictor):
    profiles, cache = own_profiles
    model_dir = profiles / "testgpu" / TINY_MODEL.name
    plain = read_ops(model_dir / "ops.csv", 1), read_attention(model_dir / "attention.csv", 1)
    pack(model_dir / "ops.csv")
    pack(model_dir / "attention.csv")
    files = profile_files(TINY_MODEL, TEST_GPU, profiles)
    assert (files.ops_csv.name, files.attention_csv.name) == ("ops.csv.gz", "attention.csv.gz")
    pd.testing.assert_frame_equal(read_ops(files.ops_csv, 1), plain[0])
    packed, unpacked = read_attention(files.attention_csv, 1), plain[1]
    pd.testing.assert_frame_equal(packed.drop(columns="composition"), unpacked.drop(columns="composition"))
    assert all((a == b).all() for a, b in zip(packed.composition, unpacked.composition, strict=True))
    fits = count_fits(monkeypatch, make_predictor)
    build(profiles, cache)
    assert len(fits) == 1  # the cache key covers the files' bytes: other files, one new fit
    build(profiles, cache)
    assert len(fits) == 1


def damage_entry(cache, how, entry=None):
    """Damage a tp=1 cache entry in `cache` (the first, or `entry`) the way `how` says."""
    entry = entry or next(p for p in sorted(cache.glob("*.npz"))
                          if json.loads(p.with_suffix(".json").read_text())["tp"] == 1)
    meta_path = entry.with_suffix(".json")
    if how == "truncate_npz":
        entry.write_bytes(entry.read_bytes()[:100])
    elif how == "edit_json_version":
        meta = json.loads(meta_path.read_text())
        meta["version"] = "written-by-other-code"
        meta_path.write_text(json.dumps(meta))
    elif how == "garbage_json":
        meta_path.write_text("{not json")
    elif how == "edit_json_number":  # a plausible hand edit: 1.058 -> 1.958
        meta = json.loads(meta_path.read_text())
        meta["calibration_scale"] += 0.9
        meta_path.write_text(json.dumps(meta, indent=1))
    elif how == "drop_json_checksum":  # as entries written before the JSON had one
        meta = json.loads(meta_path.read_text())
        del meta["meta_sha256"]
        meta_path.write_text(json.dumps(meta, indent=1))
    else:  # same size, other content: the recorded digest catches it
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    return entry.stem


@pytest.mark.parametrize("how, reason", [
    ("truncate_npz", "{npz} does not match the checksum its JSON records"),
    ("edit_json_version", "its JSON does not match the checksum it records"),
    ("garbage_json", "unreadable (JSONDecodeError"),
    ("flip_a_byte", "{npz} does not match the checksum its JSON records"),
    ("edit_json_number", "its JSON does not match the checksum it records"),
    ("drop_json_checksum", "its JSON does not match the checksum it records"),
])
def test_corrupt_or_foreign_cache_entries_are_rejected_in_one_line(own_profiles, how, reason, capsys):
    _, cache_directory = own_profiles
    entry = next(p for p in sorted(cache_directory.glob("*.npz"))
             if json.loads(p.with_suffix(".json").read_text())["tp"] == 1)
    version = json.loads(entry.with_suffix(".json").read_text())["version"]
    assert cache.load(entry.stem, version, cache_directory) is not None
    assert capsys.readouterr().err == ""
    key = damage_entry(cache_directory, how)
    assert cache.load(key, version, cache_directory) is None
    err = capsys.readouterr().err
    reason = reason.format(npz=entry.name)
    assert err.startswith(f"servesim: runtime-model cache entry {entry.with_suffix('.json')} not used, {reason}")
    assert err.endswith("; fitting again\n") and err.count("\n") == 1


def test_a_missing_cache_entry_is_fitted_without_a_note(tmp_path, capsys):
    assert cache.load("0" * 32, "any-version", tmp_path) is None
    assert capsys.readouterr().err == ""


def test_a_hand_edited_calibration_is_not_used(own_profiles, monkeypatch, make_predictor, capsys):
    """Editing calibration_scale in every tp=1 entry's JSON changes nothing: the entries are refitted
    (the fit is answered by the session's, as it would come out again) and rewritten."""
    profiles, cache_directory = own_profiles
    for entry in [p for p in sorted(cache_directory.glob("*.npz"))
                  if json.loads(p.with_suffix(".json").read_text())["tp"] == 1]:
        damage_entry(cache_directory, "edit_json_number", entry)
    fits = count_fits(monkeypatch, make_predictor)
    predictor = build(profiles, cache_directory)
    assert len(fits) == 1 and "not used, its JSON does not match" in capsys.readouterr().err
    assert predictor.calibration == make_predictor().calibration
    q, kv = np.array([300, 1]), np.array([0, 2000])
    np.testing.assert_array_equal(predictor.stage_times_s(q, kv), make_predictor().stage_times_s(q, kv))
    build(profiles, cache_directory)
    assert len(fits) == 1 and capsys.readouterr().err == ""  # rewritten, with a checksum that matches


def test_a_rejected_cache_entry_is_refitted_and_rewritten(own_profiles, monkeypatch, make_predictor):
    profiles, cache_directory = own_profiles
    # Both entries of the tp=1 fit: the fit itself and its calibration for the engine's launch mode.
    for entry in [p for p in sorted(cache_directory.glob("*.npz")) if json.loads(p.with_suffix(".json").read_text())["tp"] == 1]:
        damage_entry(cache_directory, "flip_a_byte", entry)
    fits = count_fits(monkeypatch, make_predictor)
    predictor = build(profiles, cache_directory)
    assert len(fits) == 1
    assert predictor.stage_times_s(np.array([1]), np.array([100]))[0] > 0
    build(profiles, cache_directory)
    assert len(fits) == 1


def test_hardware_without_profiles_names_the_directory(profiles_dir):
    with pytest.raises(ProfileError) as err:
        build_predictor(TINY_MODEL, NO_PROFILE_GPU, 1, 1, profiles_dir=profiles_dir)
    message = str(err.value)
    assert str(profiles_dir / "nogpu") in message and "servesim-profile" in message


def test_a_gpu_without_profiles_or_a_transfer_source_is_refused_with_the_directory():
    untransferred = dataclasses.replace(load_hardware_config("a100"), transfer_from=None)
    with pytest.raises(ProfileError, match=r"profiles[/\\]a100"):
        build_predictor(load_model_config("llama-2-7b"), untransferred, 1, 1)


def test_unprofiled_model_and_tp_are_errors(profiles_dir, tmp_path):
    other = TINY_MODEL.__class__(**{**TINY_MODEL.__dict__, "name": "other-model"})
    with pytest.raises(ProfileError, match="other-model"):
        build_predictor(other, TEST_GPU, 1, 1, profiles_dir=profiles_dir)
    with pytest.raises(ProfileError, match="tp=4"):
        build_predictor(TINY_MODEL, TEST_GPU, 4, 1, profiles_dir=profiles_dir, cache_directory=tmp_path)
    with pytest.raises(ConfigError, match="tp=3"):
        build_predictor(TINY_MODEL, TEST_GPU, 3, 1, profiles_dir=profiles_dir)


def test_parallelism_without_comm_tables_names_the_missing_file(tmp_path):
    profiles = write_profiles(tmp_path, comm=False, tps=(1,))
    for tp, pp in [(2, 1), (1, 2)]:
        with pytest.raises(ProfileError, match=r"testgpu[/\\]comm[/\\]comm\.csv"):
            build_predictor(TINY_MODEL, TEST_GPU, tp, pp, profiles_dir=profiles, cache_directory=tmp_path / "c")


def test_malformed_table_names_file_and_line(tmp_path):
    profiles = write_profiles(tmp_path, comm=False, tps=(1,))
    attention = profiles / "testgpu" / TINY_MODEL.name / "attention.csv"
    frame = pd.read_csv(attention)
    frame.loc[2, "time_ms"] = -1.0  # line 4 of the file: header, then rows 0, 1, 2
    frame.to_csv(attention, index=False)
    with pytest.raises(ProfileError, match=r"attention\.csv, line 4: time_ms"):
        build_predictor(TINY_MODEL, TEST_GPU, 1, 1, profiles_dir=profiles, cache_directory=tmp_path / "c")


def test_a_cached_fit_loads_without_scikit_learn_or_scipy():
    """Start-up of a simulation whose fit is cached: fitting code (scikit-learn, SciPy) stays unimported."""
    import subprocess
    import sys

    code = ("import sys; import simulator.runtime, simulator.run; "
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_prediction_from_a_cached_fit_needs_no_scikit_learn_scipy_or_pandas(own_profiles):
    """A simulation's predictor, built from a cached fit and used, loads none of the fitting or table
    libraries (together ~1.4 s of start-up)."""
    import dataclasses
    import subprocess
    import sys

    profiles, cached = own_profiles
    # The configs travel as plain fields: the synthetic-profile module itself imports pandas.
    code = f"""
import sys
from pathlib import Path
from simulator.config import HardwareConfig, ModelConfig
from simulator.runtime import build_predictor
model, gpu = ModelConfig(**{dataclasses.asdict(TINY_MODEL)!r}), HardwareConfig(**{dataclasses.asdict(TEST_GPU)!r})
p = build_predictor(model, gpu, 1, 1, profiles_dir=Path({str(profiles)!r}), cache_directory=Path({str(cached)!r}))
assert p.stage_times_s([300, 1, 1], [0, 100, 2000])[0] > 0 and len(p.decode_run_stage_times_s([5, 9], 4)) == 4
print(sorted(m for m in ('sklearn', 'scipy', 'pandas') if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
