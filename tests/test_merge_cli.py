"""`python -m lib_ext.merge` on tiny checkpoints: once in a subprocess (the real entry point), else in-process
through `cli.main` (each subprocess pays for importing torch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lib_ext.merge.cli import main
from lib_ext.merge.keys import classify_key
from merge_fixtures import assert_bits_equal, sd1_checkpoint, sdxl_checkpoint, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def subprocess_run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lib_ext.merge", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def run(capsys):
    """main(argv) in this process, returning what the subprocess would: returncode, stdout, stderr."""
    def call(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)
    return call


def test_help_states_the_memory_bound(run):
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "peak extra memory is bounded by about 28 bytes x --chunk-elements (112 MiB" in text


def test_entry_point_end_to_end(tmp_path):
    a, b = sd1_checkpoint(0), sd1_checkpoint(1)
    pa, pb = write_checkpoint(tmp_path / "a.safetensors", a), write_checkpoint(tmp_path / "b.safetensors", b)
    result = subprocess_run(pa, pb, "--ratio", "1", "--out-dir", tmp_path, "--name", "b again")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "b again.safetensors")
    merged = load_file(tmp_path / "b again.safetensors")
    key = "model.diffusion_model.out.2.weight"
    assert_bits_equal(merged[key], b[key], key)


def test_ratios_write_one_file_each(tmp_path, run):
    a, b = sd1_checkpoint(0), sd1_checkpoint(1)
    pa, pb = write_checkpoint(tmp_path / "a.safetensors", a), write_checkpoint(tmp_path / "b.safetensors", b)
    out = tmp_path / "out"
    out.mkdir()
    result = run(pa, pb, "--ratio", "0,1", "--ratio", "0.5", "--te-ratio", "0.25", "--out-dir", out, "--name", "ab",
                 "--chunk-elements", "32")
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split("\n") if line]
    assert [p.name for p in written] == ["ab r0.safetensors", "ab r1.safetensors", "ab r0.5.safetensors"]
    assert "ab r0.5" in result.stderr  # the progress bar
    zero, one, half = (load_file(p) for p in written)
    for key, value in a.items():
        if not value.is_floating_point():
            continue
        te_at_quarter = torch.lerp(a[key].float(), b[key].float(), 0.25).half()
        assert_bits_equal(zero[key], te_at_quarter if classify_key(key) == "te" else a[key], key)
        if classify_key(key) == "unet":
            assert_bits_equal(one[key], b[key], key)
            assert_bits_equal(half[key], torch.lerp(a[key].float(), b[key].float(), 0.5).half(), key)
        if classify_key(key) in ("vae", "other"):
            assert_bits_equal(one[key], a[key], key)  # no --vae: A's VAE
    with safe_open(written[2], "pt") as file:
        recipe = json.loads(file.metadata()["uncond_lab_merge_recipe"])
    assert (recipe["unet_ratio"], recipe["te_ratio"], recipe["model_a"]) == (0.5, 0.25, "a.safetensors")


def test_add_difference_with_vae_and_dtype(tmp_path, run):
    a, b, c = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
    paths = [write_checkpoint(tmp_path / f"{n}.safetensors", t) for n, t in (("a", a), ("b", b), ("c", c))]
    result = run(paths[0], paths[1], "--c", paths[2], "--ratio", "1", "--vae", "--dtype", "fp32",
                 "--out-dir", tmp_path, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    merged = load_file(result.stdout.strip())
    key = "first_stage_model.decoder.conv_out.weight"
    assert_bits_equal(merged[key], torch.add(a[key].float(), b[key].float() - c[key].float(), alpha=1.0), key)


def test_incompatible_inputs_exit_with_the_key(tmp_path, run):
    pa = write_checkpoint(tmp_path / "a.safetensors", sd1_checkpoint(0))
    pb = write_checkpoint(tmp_path / "b.safetensors", sdxl_checkpoint(1, v_pred=True))
    result = run(pa, pb, "--ratio", "0.5", "--out-dir", tmp_path, "--no-progress")
    assert result.returncode == 1
    assert "error: cannot merge A = a.safetensors (SD1.x, EPS), B = b.safetensors (SDXL, V)" in result.stderr
    assert "'model.diffusion_model.input_blocks.0.0.bias' is in A but not in B" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]


def test_bad_arguments(tmp_path, run):
    pa = write_checkpoint(tmp_path / "a.safetensors", sd1_checkpoint(0))
    assert "must be a number in [-1, 2], got '50'" in run(pa, pa, "--ratio", "50", "--out-dir", tmp_path).stderr
    result = run(pa, pa, "--ratio", "0.5", "--vae-ratio", "0.5", "--out-dir", tmp_path)
    assert result.returncode == 2 and "needs include_vae=true" in result.stderr
    result = run(pa, tmp_path / "b.ckpt", "--ratio", "0.5", "--out-dir", tmp_path)
    assert result.returncode == 2 and "only safetensors inputs are merged" in result.stderr
