"""Profile files: atomic merged writes, malformed input, typed entries."""
import multiprocessing as mp
import os

import pytest
import yaml

from pbs_tune.profile import profiles
from pbs_tune.profile.params import describe_threshold
from helpers import GPU_SHAPE, profile_entry


def entry(seqlen, gpu="h100", thr=0.9):
    return profile_entry(seqlen, thr, gpu, **GPU_SHAPE)


def test_merge_adds_and_replaces_by_key(tmp_path):
    path = str(tmp_path / "h100.yaml")
    profiles.merge_entries(path, [entry(32768), entry(8192)])
    profiles.merge_entries(path, [entry(32768, thr=0.8), entry(131072)])
    prof = profiles.load(path)
    assert [e.seqlen for e in prof.entries] == [8192, 32768, 131072]
    assert prof.pick(40000, gpu="h100", heads=32, kv_heads=8, head_dim=128, dtype="bfloat16").params.threshold == 0.8
    assert yaml.safe_load(open(path))["schema_version"] == profiles.SCHEMA_VERSION


def _add(path, n):
    profiles.merge_entries(path, [entry(n)])


def test_concurrent_writers_lose_no_entry(tmp_path):
    path = str(tmp_path / "h100.yaml")
    procs = [mp.get_context("spawn").Process(target=_add, args=(path, 1024 * (i + 1))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(e.seqlen for e in profiles.load(path).entries) == [1024, 2048, 3072, 4096]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "h100.yaml")
    profiles.merge_entries(path, [entry(8192)])
    before = open(path).read()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(profiles.yaml, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        profiles.merge_entries(path, [entry(16384)])
    assert open(path).read() == before
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_malformed_yaml_is_reported_with_its_line_and_never_overwritten(tmp_path):
    path = tmp_path / "h100.yaml"
    text = "schema_version: 1\nentries:\n- gpu: h100\n  seqlen: [8192\n"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError, match=r"h100.yaml:\d+: not valid YAML"):
        profiles.merge_entries(str(path), [entry(8192)])
    assert path.read_text() == text


@pytest.mark.parametrize("text,match", [
    ("schema_version: 99\nentries: []\n", "schema_version 99"),
    ("- just\n- a list\n", "expected a mapping"),
    ("schema_version: 1\nentries:\n- gpu: h100\n", "entry 0 lacks seqlen"),
])
def test_schema_problems_are_clear(tmp_path, text, match):
    path = tmp_path / "h100.yaml"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError, match=match):
        profiles.load(str(path))


@pytest.mark.parametrize("change,match", [
    (dict(params=dict(segment_size=256, threshold=0.9)), "params lacks block_size"),
    (dict(seqlen="256k"), "seqlen must be a positive integer"),
    (dict(launch=dict(block_m=128, block_n=128, num_warps=8, num_stages=3, turbo=1)), "unknown field"),
    (dict(params=dict(block_size=128, segment_size=256, threshold=1.7)), r"threshold must be a number in \(0, 1\]"),
    (dict(dtype="bf17"), "dtype 'bf17'"),
    (dict(layers={"x": "dense"}), "not a layer index"),
    (dict(min_chunk={16384: 0}), "min_chunk must map prefix lengths to chunk sizes"),
    (dict(min_chunk=[2048]), "min_chunk must map prefix lengths to chunk sizes"),
    (dict(layers={"3": dict(params=dict(block_size=128, segment_size=200, threshold=0.9),
                            launch=dict(block_m=128, block_n=128, num_warps=8, num_stages=3))}),
     r"layers\.3: params.segment_size 200 is not a multiple"),
])
def test_entry_fields_are_checked_at_load_with_file_entry_and_field(tmp_path, change, match):
    path = tmp_path / "h100.yaml"
    bad = dict(entry(8192), **change)
    path.write_text(yaml.safe_dump(dict(schema_version=1, entries=[entry(4096), bad])))
    with pytest.raises(profiles.ProfileError, match=match) as info:
        profiles.load(str(path))
    assert str(info.value).startswith(f"{path}: entry 1")


def test_binary_file_or_folder_as_profile_is_one_clear_error(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(profiles.ProfileError, match="not a text file"):
        profiles.load(str(tmp_path / "bin.yaml"))
    with pytest.raises(profiles.ProfileError, match="is a directory"):
        profiles.load(str(tmp_path))


def test_kernel_key_ignores_the_threshold_value_and_covers_layer_overrides():
    a = profiles.ProfileEntry.from_dict(entry(8192, thr=0.9))
    b = profiles.ProfileEntry.from_dict(entry(8192, thr=0.7))
    assert a.kernel_keys() == b.kernel_keys() and len(a.kernel_keys()) == 1
    dense = profiles.ProfileEntry.from_dict(entry(8192, thr=1.0))
    assert dense.kernel_keys() != a.kernel_keys()  # keep-all selection is its own kernel
    layered = profiles.ProfileEntry.from_dict(dict(entry(8192), layers={
        "0": "dense", "5": dict(params=dict(block_size=64, segment_size=256, threshold=0.8),
                                launch=dict(block_m=64, block_n=64, num_warps=4, num_stages=2))}))
    assert len(layered.kernel_keys()) == 2
    assert layered.config_for_layer(0) is None and layered.config_for_layer(5)[0].block_size == 64
    assert layered.config_for_layer(7) == (layered.params, layered.launch)


def test_written_profile_is_world_readable_and_leaves_no_lock_beside_it(tmp_path):
    path = str(tmp_path / "h100.yaml")
    profiles.merge_entries(path, [entry(8192)], library=str(tmp_path / "cache" / "h100"))
    assert os.stat(path).st_mode & 0o044 == 0o044
    assert sorted(os.listdir(tmp_path)) == ["h100.yaml"]
    assert profiles.load(path).library == str(tmp_path / "cache" / "h100")
    assert yaml.safe_load(open(path))["kernels"] == os.path.join("cache", "h100")


def test_the_chunk_crossover_round_trips_and_is_read_by_prefix_length(tmp_path):
    path = tmp_path / "h100.yaml"
    profiles.merge_entries(str(path), [dict(entry(32768), min_chunk={16384: 2048, 32768: 1024, 65536: None}),
                                       entry(8192)])
    measured, unmeasured = sorted(profiles.load(str(path)).entries, key=lambda e: -e.seqlen)
    assert measured.min_chunk == {16384: 2048, 32768: 1024, 65536: None}
    assert [measured.min_chunk_at(p) for p in (8000, 16384, 30000, 40000)] == [profiles.MIN_CHUNK, 2048, 2048, 1024]
    assert measured.min_chunk_at(70000) == float("inf")  # dense won at every size measured there
    assert unmeasured.min_chunk_at(10 ** 6) == profiles.MIN_CHUNK


def test_permutation_is_a_per_entry_and_per_layer_choice(tmp_path):
    path = tmp_path / "h100.yaml"
    layer = dict(params=dict(block_size=128, segment_size=256, threshold=0.9, permute=False),
                 launch=dict(block_m=128, block_n=128, num_warps=8, num_stages=3))
    profiles.merge_entries(str(path), [dict(entry(8192), layers={"4": layer})])
    e = profiles.load(str(path)).entries[0]
    assert e.params.permute and not e.config_for_layer(4)[0].permute
    assert "permute" not in yaml.safe_load(path.read_text())["entries"][0]["params"]  # default stays implicit
    bad = dict(entry(8192), params=dict(block_size=128, segment_size=256, threshold=0.9, permute="yes"))
    path.write_text(yaml.safe_dump(dict(schema_version=1, entries=[bad])))
    with pytest.raises(profiles.ProfileError, match="params.permute must be true or false"):
        profiles.load(str(path))


def test_per_head_thresholds_round_trip_and_are_checked(tmp_path):
    path = tmp_path / "h100.yaml"
    per_head = [0.5 + 0.015 * i for i in range(32)]
    profiles.merge_entries(str(path), [dict(entry(8192), params=dict(block_size=128, segment_size=256,
                                                                      threshold=per_head))])
    e = profiles.load(str(path)).entries[0]
    assert e.params.threshold == tuple(per_head) and not e.params.keeps_all
    assert "τ0.5-0.965/head" in e.describe()
    assert describe_threshold((0.9, 0.9)) == "τ0.9"
    path.write_text(yaml.safe_dump(dict(schema_version=1, entries=[
        dict(entry(8192), params=dict(block_size=128, segment_size=256, threshold=[0.9] * 31))])))
    with pytest.raises(profiles.ProfileError, match=r"one per query head \(32\)"):
        profiles.load(str(path))


def test_the_block_estimator_is_a_profile_parameter_with_the_papers_as_default(tmp_path):
    path = tmp_path / "h100.yaml"
    lse = dict(entry(8192), params=dict(block_size=128, segment_size=256, threshold=0.8, estimator="lse"))
    profiles.merge_entries(str(path), [lse, entry(16384)])
    a, b = profiles.load(str(path)).entries
    assert a.params.estimator == "lse" and b.params.estimator == "mean"
    assert "estimator" not in yaml.safe_load(path.read_text())["entries"][1]["params"]  # the default stays implicit
    assert a.kernel_keys() != profiles.ProfileEntry.from_dict(entry(8192, thr=0.8)).kernel_keys()
    assert "lse" in a.describe() and a.params.estimator == "lse"
    bad = dict(entry(8192), params=dict(block_size=128, segment_size=256, threshold=0.8, estimator="max"))
    path.write_text(yaml.safe_dump(dict(schema_version=1, entries=[bad])))
    with pytest.raises(profiles.ProfileError, match="params.estimator must be one of mean, lse, got 'max'"):
        profiles.load(str(path))


@pytest.mark.parametrize("value", ["input", "int8", "int8+fp8"])
def test_a_precision_key_left_in_a_profile_is_one_line_saying_to_delete_it(tmp_path, value):
    """The 8-bit attend modes are gone; a file that still names a precision, even the 16-bit one, is
    told so at load in one line, for the entry and for a layer."""
    path = tmp_path / "h100.yaml"
    params = dict(block_size=128, segment_size=256, threshold=0.9, precision=value)
    launch = dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
    for bad, where in ((dict(entry(8192), params=params), "entry 0: "),
                       (dict(entry(8192), layers={"2": dict(params=params, launch=launch)}), "entry 0: layers.2: ")):
        path.write_text(yaml.safe_dump(dict(schema_version=1, entries=[bad])))
        with pytest.raises(profiles.ProfileError) as info:
            profiles.load(str(path))
        assert str(info.value) == (f"{path}: {where}params.precision is no longer a parameter: the 8-bit attend "
                                   "modes were removed (slower than 16-bit on Hopper); delete the `precision:` line")


@pytest.mark.parametrize("text", ["workload:mixed", "workload:mixed x4", "workload:stripes@1", "workload:families@3 x2",
                                  "capture:/data/my calib@2 x3.safetensors"])
def test_a_data_source_name_is_built_and_parsed_in_one_place(text):
    from pbs_tune.profile.provenance import DataSource
    source = DataSource.parse(text)
    assert str(source) == text
    assert (source.capture_path is not None) == text.startswith("capture:")
    with pytest.raises(ValueError, match="is not like"):
        DataSource.parse("mixed")


def test_every_shipped_entry_reads_into_typed_provenance_and_writes_back_the_same_keys():
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in (glob.glob(os.path.join(root, "configs", "*.yaml"))
                 + glob.glob(os.path.join(root, "benchmarks", "profiles", "*.yaml"))):
        raw = yaml.safe_load(open(path))["entries"]
        for d, e in zip(raw, profiles.load(path).entries):
            again = e.to_dict()
            assert set(again) == {k for k, v in d.items() if v not in ({}, [], None) or k == "dense_faster"}, path
            if isinstance(d.get("held_out"), dict):  # files of earlier releases hold one check: written as a list
                d["held_out"] = [d["held_out"]]
            for key in ("calibration", "held_out", "launch_choice", "baselines", "reference", "speedup", "study"):
                assert again.get(key) == (d.get(key) or again.get(key)), (path, key)
            assert e.provenance.extra == {}, (path, e.provenance.extra)  # every key is a typed field


def test_a_held_out_check_without_tail_figures_loads_and_one_with_them_round_trips(tmp_path):
    path = tmp_path / "h100.yaml"
    old = dict(source="workload:mixed@1", trial=3, calibration_rel_l2=0.05, rel_l2=0.06, reference_rel_l2=0.07,
               within_bound=True, latency_ms=None, reference_latency_ms=None, speedup_vs_reference=None)

    def write(check):
        path.write_text(yaml.safe_dump(dict(schema_version=profiles.SCHEMA_VERSION,
                                            entries=[dict(entry(8192), held_out=[check])])))
    write(old)  # a file of an earlier release: no tail figures
    (check,) = profiles.load(str(path)).entries[0].provenance.held_out
    assert (check.tail_rel_l2, check.reference_tail_rel_l2, check.tail_bound, check.tail_rel_l2_by_source) == \
        (None, None, None, None) and check.tail_by_source() == ""
    assert check.to_dict() == old  # written back without tail keys
    new = dict(old, tail_rel_l2=0.2, calibration_tail_rel_l2=0.1, reference_tail_rel_l2=0.6, tail_bound=0.6,
               tail_rel_l2_by_source=dict(a=0.2, b=0.1), reference_tail_rel_l2_by_source=dict(a=0.6, b=0.3))
    profiles.merge_entries(str(path), [dict(entry(8192), held_out=[new])])
    (check,) = profiles.load(str(path)).entries[0].provenance.held_out
    assert (check.tail_rel_l2, check.tail_bound, check.tail_rel_l2_by_source) == (0.2, 0.6, dict(a=0.2, b=0.1))
    assert check.tail_by_source() == "a 0.2000 (default 0.6000), b 0.1000 (default 0.3000)"
    assert yaml.safe_load(path.read_text())["entries"][0]["held_out"] == [new]
    write(dict(new, tail_within_bound=True))  # unknown keys stay an error
    with pytest.raises(profiles.ProfileError, match="held_out: unknown field.s. tail_within_bound"):
        profiles.load(str(path))


def test_a_target_is_resolved_once_with_its_arch_and_shared_memory():
    from pbs_tune.profile.target import Target
    a100 = Target.named("a100-sxm")  # not here: the arch table's figures
    assert (a100.arch, a100.shared_memory, a100.capability, a100.on_gpu, a100.device) == \
        (80, 166912, (8, 0), True, "cuda")
    cpu = Target.named("cpu")
    assert (cpu.on_gpu, cpu.device, cpu.capability) == (False, "cpu", None)
    assert Target.named("gh200").arch is None  # a family the table does not know: no arch guessed
