"""The mapped placement: no resident copies, A/B/C read from the memory-mapped files at each switch; the same
values as resident copies bit for bit, exact restore, and a sweep that fits where two copies would not."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lib_ext.merge.inplace import InPlaceMerge
from lib_ext.merge.keys import classify_key
from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.sources import MergeInputError, SafetensorsSource
from merge_fixtures import assert_bits_equal, sd1_checkpoint, write_checkpoint

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
UNET_KEY = "model.diffusion_model.middle_block.1.proj_in.weight"
RATIOS = (0.3, 1.0, 0.0, 0.71, 0.71, -0.5, 1.8)


@pytest.fixture()
def paths(tmp_path):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors)
            for role, tensors in (("a", A), ("b", B), ("c", C))}


def live_model(dtype=None):
    return {k: torch.nn.Parameter(v.clone() if dtype is None else v.to(dtype), requires_grad=False)
            for k, v in A.items() if classify_key(k) != "other"}


def values(model):
    return {k: v.detach().clone() for k, v in model.items()}


def recipe(paths, method):
    c = (paths["c"],) if method == "add_difference" else ()
    return MergeRecipe(method, paths["a"], paths["b"], *c)


def assert_same(x, y):
    for key in x:
        assert_bits_equal(x[key], y[key], key)


@pytest.mark.parametrize("method, dtype, difference_dtype", [
    ("weighted_sum", None, None), ("weighted_sum", torch.float32, None), ("weighted_sum", torch.bfloat16, None),
    ("weighted_sum", torch.float8_e4m3fn, None), ("add_difference", None, None),
    ("add_difference", torch.float32, None), ("add_difference", None, torch.float32),
    ("add_difference", torch.float8_e5m2, None)])
@pytest.mark.parametrize("chunk", [1 << 22, 64])
def test_mapped_writes_what_resident_copies_write(paths, method, dtype, difference_dtype, chunk, monkeypatch):
    """Every ratio of a sweep, mapped vs resident: the same bits; both restore the originals exactly. Also when the
    mapped pass works through tensors in pieces (chunk 64: every test tensor is cut)."""
    monkeypatch.setattr("lib_ext.merge.ops.CHUNK_ELEMENTS", chunk)
    models = {placement: live_model(dtype) for placement in ("device", "mapped")}
    before = values(models["mapped"])
    merges = {placement: InPlaceMerge(recipe(paths, method), model, placement=placement,
                                      difference_dtype=difference_dtype) for placement, model in models.items()}
    for merge in merges.values():
        merge.prepare()
    assert merges["mapped"].placement_used == "mapped" and merges["mapped"].resident_bytes() == 0
    assert merges["device"].resident_bytes() > 0
    for ratio in RATIOS:
        changed = {placement: merge.apply(ratio) for placement, merge in merges.items()}
        assert changed["mapped"] == changed["device"]
        assert_same(values(models["mapped"]), values(models["device"]))
    for merge in merges.values():
        merge.close()
    assert_same(values(models["mapped"]), before)
    assert_same(values(models["device"]), before)


def test_auto_on_cpu_is_mapped(paths):
    with InPlaceMerge(recipe(paths, "weighted_sum"), live_model()) as merge:
        assert merge.placement_used == "mapped"


@pytest.mark.parametrize("placement", ["device", "cpu"])
def test_resident_copies_without_room_read_the_files_instead(paths, placement, monkeypatch):
    """Resident copies asked for on a machine without room for them (an SDXL pair in float32 on 24 GB killed A1111
    for memory): mapped instead, with the reason, the same weights as resident copies where they fit."""
    roomy = live_model()
    with InPlaceMerge(recipe(paths, "weighted_sum"), roomy, placement=placement) as merge:
        assert (merge.placement_used, merge.placement_note) == (placement, None)
        need = merge.estimate().resident_bytes
        merge.apply(0.3)
        expected = values(roomy)
    monkeypatch.setattr("lib_ext.merge.inplace.available_ram_bytes", lambda: need - 1)
    cramped = live_model()
    with InPlaceMerge(recipe(paths, "weighted_sum"), cramped, placement=placement) as merge:
        assert merge.placement_used == "mapped" and merge.resident_bytes() == 0
        assert merge.placement_note.startswith("resident copies need ") and "of RAM is free" in merge.placement_note
        merge.apply(0.3)
        assert_same(values(cramped), expected)
    assert_same(values(cramped), A)


def test_available_ram_is_memavailable_less_the_reserve(tmp_path):
    from lib_ext.merge.inplace import RAM_RESERVE, available_ram_bytes
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683836 kB\nMemFree:         1510000 kB\nMemAvailable:    6736000 kB\n")
    assert available_ram_bytes(str(meminfo)) == 6736000 * 1024 - RAM_RESERVE
    assert available_ram_bytes(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("base", ["live", "file"])
def test_weights_that_differ_from_the_file_are_kept(paths, base):
    """A live weight that is not A's file value (a baked-in LoRA): only it is kept in RAM, and restore puts it
    back; with base="live" it is also A (ratio 0 writes it), with base="file" ratio 0 writes the file's A."""
    model = live_model()
    with torch.no_grad():
        model[UNET_KEY] += 0.125
    before = values(model)
    reference = live_model()
    with torch.no_grad():
        reference[UNET_KEY] += 0.125
    with InPlaceMerge(recipe(paths, "weighted_sum"), model, placement="mapped", base=base) as merge, \
            InPlaceMerge(recipe(paths, "weighted_sum"), reference, placement="device", base=base) as resident:
        kept = model[UNET_KEY].numel() * model[UNET_KEY].element_size()
        assert merge.resident_bytes() == kept
        for ratio in (0.4, 0.0, 1.0, 0.0):
            merge.apply(ratio)
            resident.apply(ratio)
            assert_same(values(model), values(reference))
    assert_same(values(model), before)


def test_an_in_place_rewrite_of_a_is_refused_a_replaced_file_is_not(paths):
    """Restore reads A's file: a file rewritten in place would put other values back, so the next write is
    refused, naming it. A file replaced by another (how savers write) leaves the mapping on the old one."""
    model = live_model()
    with InPlaceMerge(recipe(paths, "weighted_sum"), model, placement="mapped") as merge:
        merge.apply(0.5)
        replacement = paths["a"] + ".new"
        write_checkpoint(replacement, B)
        os.replace(replacement, paths["a"])  # a new file under A's name: the mapping keeps the old one
        merge.apply(0.7)
        merge.restore()
        assert_same(values(model), values(live_model()))
    write_checkpoint(paths["a"], A)
    merge = InPlaceMerge(recipe(paths, "weighted_sum"), model, placement="mapped")
    merge.apply(0.5)
    with open(paths["a"], "r+b") as file:  # the same file, rewritten in place
        file.seek(0, os.SEEK_END)
        file.write(b" ")
    with pytest.raises(MergeInputError, match="rewritten on disk"):
        merge.apply(0.9)
    assert merge.applied["unet"] == 0.5  # nothing written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int64,
                                   torch.bool])
def test_views_read_the_stored_values_without_a_copy(tmp_path, dtype):
    tensors = {"x": torch.arange(-12, 12).reshape(2, 3, 4).to(dtype), "odd": torch.ones(3, dtype=torch.uint8),
               "y": torch.arange(6).to(dtype), "empty": torch.empty(0, 5, dtype=dtype)}
    source = SafetensorsSource(write_checkpoint(tmp_path / "t.safetensors", tensors))
    for key, tensor in tensors.items():
        view = source.view(key)
        assert view.dtype == tensor.dtype and view.shape == tensor.shape
        assert torch.equal(view.view(torch.uint8), tensor.contiguous().view(torch.uint8))
    assert source.view("x").data_ptr() == source.view("x").data_ptr()  # the file's bytes, not a fresh copy
    source.close()


PRESSURE = textwrap.dedent("""
    import resource, sys, threading, torch
    from lib_ext.merge import InPlaceMerge, MergeRecipe
    from safetensors.torch import load_file
    placement, path_a, path_b, headroom = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # float16 files, float32 weights (a WebUI with --no-half): every switch casts
    model = {k: torch.nn.Parameter(v.float(), requires_grad=False) for k, v in load_file(path_a).items()}
    torch.set_num_threads(1)  # no OpenMP pool per thread: their stacks would count against the cap too
    threading.stack_size(1 << 20)
    def data_bytes():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmData:"))
    # Private writable memory (every tensor allocation) is capped at what is in use now plus `headroom`;
    # read-only file mappings do not count against RLIMIT_DATA.
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + headroom, resource.RLIM_INFINITY))
    before = {k: p.detach().clone() for k, p in list(model.items())[:1]}
    errors = []
    def apply(merge, ratio):  # each on a thread of its own, as a WebUI's requests are
        try:
            merge.apply(ratio)
        except RuntimeError as error:
            errors.append(error)
    try:
        with InPlaceMerge(MergeRecipe("weighted_sum", path_a, path_b), model, placement=placement) as merge:
            for ratio in (0.25, 0.5, 1.0, 0.75, 0.3, 0.6):
                thread = threading.Thread(target=apply, args=(merge, ratio))
                thread.start()
                thread.join()
                if errors:
                    raise errors[0]
    except RuntimeError as error:
        print("out of memory:", str(error).splitlines()[0]); sys.exit(3)
    key, value = next(iter(before.items()))
    print("restored" if torch.equal(model[key].view(torch.int32), value.view(torch.int32)) else "NOT restored")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA semantics are Linux's")
def test_a_sweep_fits_under_a_memory_cap_that_two_copies_do_not(tmp_path):
    """A float32 model of 48 MB from float16 files, its process capped at what it uses plus half a model copy:
    resident copies (two more) run out of memory; the mapped placement sweeps six ratios, each on a thread of its
    own (whose freed blocks glibc keeps apart), and restores the weights exactly."""
    generator = torch.Generator().manual_seed(0)
    shapes = {f"model.diffusion_model.block{i}.weight": (1024, 1024) for i in range(12)}
    for name, seed in (("a", 0), ("b", 1)):
        generator.manual_seed(seed)
        write_checkpoint(tmp_path / f"{name}.safetensors",
                         {k: torch.randn(s, generator=generator).half() for k, s in shapes.items()})
    model_bytes = 12 * 1024 * 1024 * 4

    def run(placement):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run([sys.executable, "-c", PRESSURE, placement, str(tmp_path / "a.safetensors"),
                               str(tmp_path / "b.safetensors"), str(model_bytes // 2)],
                              capture_output=True, text=True, cwd=root, timeout=300,
                              env={**os.environ, "PYTHONPATH": root})
    resident, mapped = run("cpu"), run("mapped")
    assert resident.returncode == 3, resident.stdout + resident.stderr
    assert mapped.returncode == 0 and mapped.stdout.strip() == "restored", mapped.stdout + mapped.stderr
