"""Pictures against real ComfyUI: the WebUI's picture of a setup and ComfyUI's picture of the same setup as
lib_ext/comfy translates it, both ways, at most 1 level of 255 apart.

(a) a WebUI payload (Uncond Lab's `comfy_sampling` on) → export_payload → ComfyUI's picture of that graph, vs the
    WebUI's picture of the payload;
(b) a ComfyUI graph built as a ComfyUI user would → import_graph → the WebUI's picture of the payload, vs
    ComfyUI's picture of the graph.

On the SDXL test checkpoints ComfyUI recognises (Vega-size, its Segmind_Vega, or base-size), seed 1234,
64×64, 4 steps, Euler, CFG 7, the normal schedule. Skipped unless COMFYUI_DIR (a ComfyUI v0.8.0 checkout) and
COMFYUI_PYTHON (its environment's python) are set, UNCOND_LAB_MODELS_DIR holds the test checkpoints (ComfyUI reads
them there) and a WebUI is named as tests/webui/conftest.py expects. ComfyUI runs without its server, on the CPU in
float32 (tests/comfy/run_comfy_graph.py), after the WebUI has made all its pictures and has been stopped (or, a
running one, unloaded its model), so that the two never hold an SDXL model at once. The table of differences is
printed at the end and written to $UNCOND_LAB_COMFY_OUT/table.md with the pictures when that is set. See
tests/comfy/README.md.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lib_ext.comfy import export_payload, import_graph
from tests.webui.client import max_pixel_difference
from tests.webui.conftest import SD15, SDXL, SDXL_SIZE, sdxl_model

RUNNER = Path(__file__).resolve().with_name("run_comfy_graph.py")
COMFYUI_DIR, COMFYUI_PYTHON = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
MODELS_DIR = os.environ.get("UNCOND_LAB_MODELS_DIR")
# ComfyUI holds a whole SDXL checkpoint in float32 (base-size 13.2 GB loaded, 21 GB peak resident with the file's
# mapped pages; Vega-size 6.6 GB). A merge loads -b beside -a and patches every UNet weight while keeping the
# originals: 21.7 GB peak resident for the Vega-size pair (measured), about 36 GB for the base-size pair.
MERGE_MEMORY_GB = float(os.environ.get("UNCOND_LAB_COMFY_MERGE_GB")
                        or {"base": 40, "vega": 20}.get(SDXL_SIZE, 40))
TOLERANCE = 1  # levels of 255: what the WebUI and ComfyUI's float32 CPU arithmetic leave (lib_ext/comfy_sampling.py)

pytestmark = [
    pytest.mark.skipif(not (COMFYUI_DIR and COMFYUI_PYTHON),
                       reason="set COMFYUI_DIR and COMFYUI_PYTHON (a ComfyUI v0.8.0 checkout and its python)"),
    pytest.mark.skipif(not MODELS_DIR, reason="set UNCOND_LAB_MODELS_DIR: ComfyUI reads the test checkpoints there"),
    pytest.mark.skipif(SDXL_SIZE not in ("vega", "base"), reason="ComfyUI recognises the Vega-size and base-size "
                                                                 "SDXL test files, not the small ones"),
]

A_FILE, B_FILE = sdxl_model("a") + ".safetensors", sdxl_model("b") + ".safetensors"
VAE_FILE = sdxl_model("a") + "-vae.safetensors"  # -a's own VAE as a file: a merge then decodes with it on both sides
PROMPT = "a lighthouse at dusk"
GENERATION = {"prompt": PROMPT, "negative_prompt": "", "seed": 1234, "steps": 4, "width": 64, "height": 64,
              "cfg_scale": 7.0, "sampler_name": "Euler", "scheduler": "Automatic", "batch_size": 1, "n_iter": 1}


@dataclass(frozen=True)
class Case:
    settings: dict                       # Uncond Lab's settings in the WebUI payload (direction a)
    negative: str = "null"               # the ComfyUI graph's negative (direction b): null, zero, blend, window
    rf_shift: float | None = None        # ModelSamplingSD3
    merge: dict | None = None            # the merge node's arguments (ModelMergeSimple or ModelMergeBlocks)
    clip_ratio: float | None = None      # CLIPMergeSimple's ratio
    vae_file: bool = False               # decode with VAE_FILE on both sides (SD VAE / VAELoader)
    # The schedule (WebUI, ComfyUI). ComfyUI's normal is the WebUI's Automatic on an eps model's table; on a flow
    # model RF's schedule is ComfyUI's simple (README), and normal takes exact flow sigmas where the WebUI's table
    # interpolates (5 levels apart at 4 steps, measured).
    schedule: tuple[str, str] = ("Automatic", "normal")
    notes: tuple = field(default=())     # export notes expected for (a)


CASES = {
    "null": Case({"zero_weight": 0.0}),
    "zero": Case({"zero_weight": 1.0}, negative="zero"),
    "blend": Case({"zero_weight": 0.5}, negative="blend"),
    "window": Case({"zero_weight": 1.0, "start": 0.0, "end": 0.3}, negative="window"),
    "rf shift 3": Case({"zero_weight": 0.0, "rf": True, "shift": 3.0}, rf_shift=3.0, schedule=("Simple", "simple")),
    # B's share 0.5 of the UNet and (following it) the text encoders; -a's VAE from a file on both sides, as
    # ComfyUI's merge nodes leave model 1's VAE and Uncond Lab would merge the checkpoint's.
    "merge 0.5": Case({"zero_weight": 0.0, "merge_model": B_FILE, "merge_ratio": 0.5},
                      merge={"class_type": "ModelMergeSimple", "ratio": 0.5}, clip_ratio=0.5, vae_file=True),
    # ComfyUI's names and values (model 1's share); the text encoders and VAE are -a's (ratio 0).
    "block merge": Case({"zero_weight": 0.0, "merge_model": B_FILE, "merge_ratio": 0.0, "merge_te_ratio": 0.0,
                         "merge_blocks": "input=0.3, middle=1, out=0.7"},
                        merge={"class_type": "ModelMergeBlocks", "input": 0.3, "middle": 1.0, "out": 0.7}),
}
FILE_NAMES = {name: name.replace(" ", "_") for name in CASES}  # the pictures' file names


def webui_payload(case: Case) -> dict:
    """Direction (a): the WebUI request of a case, in the shape import_graph writes."""
    override = {"sd_model_checkpoint": A_FILE, **({"sd_vae": VAE_FILE} if case.vae_file else {})}
    return {**GENERATION, "scheduler": case.schedule[0], "override_settings": override, "override_settings_restore_afterwards": True,
            "alwayson_scripts": {"Uncond Lab": {"args": [{"enabled": True, "comfy_sampling": True,
                                                          **case.settings}]}}}


class Graph:
    """An API prompt written by hand, node ids counting up as ComfyUI's frontend numbers them."""

    def __init__(self):
        self.prompt: dict = {}

    def add(self, class_type: str, **inputs) -> list:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]


def comfy_graph(case: Case) -> dict:
    """Direction (b): the case as a ComfyUI user builds it (README's "ComfyUI equivalents")."""
    g = Graph()
    checkpoint = g.add("CheckpointLoaderSimple", ckpt_name=A_FILE)
    model, clip, vae = checkpoint, [checkpoint[0], 1], [checkpoint[0], 2]
    if case.merge:
        partner = g.add("CheckpointLoaderSimple", ckpt_name=B_FILE)
        arguments = {k: v for k, v in case.merge.items() if k != "class_type"}
        model = g.add(case.merge["class_type"], model1=model, model2=partner, **arguments)
        if case.clip_ratio is not None:
            clip = g.add("CLIPMergeSimple", clip1=clip, clip2=[partner[0], 1], ratio=case.clip_ratio)
    if case.vae_file:
        vae = g.add("VAELoader", vae_name=VAE_FILE)
    if case.rf_shift is not None:
        model = g.add("ModelSamplingSD3", model=model, shift=case.rf_shift)
    positive = g.add("CLIPTextEncode", text=PROMPT, clip=clip)
    empty = g.add("CLIPTextEncode", text="", clip=clip)
    negative = empty
    if case.negative != "null":
        zero = g.add("ConditioningZeroOut", conditioning=empty)
        negative = zero
        if case.negative == "blend":
            negative = g.add("ConditioningAverage", conditioning_to=zero, conditioning_from=empty,
                             conditioning_to_strength=0.5)
        elif case.negative == "window":
            early = g.add("ConditioningSetTimestepRange", conditioning=zero, start=0.0, end=0.3)
            late = g.add("ConditioningSetTimestepRange", conditioning=empty, start=0.3, end=1.0)
            negative = g.add("ConditioningCombine", conditioning_1=early, conditioning_2=late)
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    samples = g.add("KSampler", model=model, positive=positive, negative=negative, latent_image=latent, seed=1234,
                    steps=4, cfg=7.0, sampler_name="euler", scheduler=case.schedule[1], denoise=1.0)
    image = g.add("VAEDecode", samples=samples, vae=vae)
    g.add("SaveImage", images=image, filename_prefix="ComfyUI")
    return g.prompt


def write_vae_file(folder: Path) -> Path:
    """-a's VAE (the checkpoint's first_stage_model.*) as a VAE file, as A1111 and ComfyUI load one."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    target = folder / VAE_FILE
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "first_stage_model."
    with safe_open(str(Path(MODELS_DIR) / A_FILE), framework="pt") as checkpoint:
        tensors = {key[len(prefix):]: checkpoint.get_tensor(key) for key in checkpoint.keys()
                   if key.startswith(prefix)}
    partial = target.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.rename(target)
    return target


def webui_vae_folder(webui) -> Path | None:
    """Where the WebUI looks for SD VAE files: UNCOND_LAB_WEBUI_VAE_DIR, else the throw-away data dir's
    models/VAE of a WebUI the fixture started (its log lies in that data dir)."""
    if os.environ.get("UNCOND_LAB_WEBUI_VAE_DIR"):
        return Path(os.environ["UNCOND_LAB_WEBUI_VAE_DIR"])
    if os.environ.get("WEBUI_DIR") and not os.environ.get("UNCOND_LAB_WEBUI_URL") and webui.log_path:
        return Path(webui.log_path).parent / "models" / "VAE"
    return None


def install_vae(webui) -> str | None:
    """The VAE file made known to the WebUI; the reason when it cannot be."""
    folder = webui_vae_folder(webui)
    if folder is None:
        return ("the WebUI's VAE folder is unknown (a running WebUI: set UNCOND_LAB_WEBUI_VAE_DIR to its "
                "models/VAE)")
    write_vae_file(folder)
    webui.post("/sdapi/v1/refresh-vae", {})
    names = [entry["model_name"] for entry in webui.get("/sdapi/v1/sd-vae")]
    if Path(VAE_FILE).stem not in names and VAE_FILE not in names:
        return f"the WebUI does not list {VAE_FILE} after writing it to {folder} (has {names})"
    return None


def generate(webui, payload: dict) -> bytes:
    result = webui.post("/sdapi/v1/txt2img", {**payload, "send_images": True, "save_images": False})
    return base64.b64decode(result["images"][0].split(",", 1)[-1])


def meminfo_gb(field_name: str) -> float:
    """A /proc/meminfo field in GiB (NaN where there is none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


def run_comfyui(graphs: dict[str, dict], work: Path, vae_folder: Path) -> dict[str, dict]:
    """Every graph through run_comfy_graph.py in one ComfyUI process; {name: its JSON line}."""
    batch = work / "graphs.json"
    batch.write_text(json.dumps(graphs, indent=1))
    out = work / "comfyui"
    command = [COMFYUI_PYTHON, str(RUNNER), "--comfyui-dir", COMFYUI_DIR, "--models", MODELS_DIR,
               "--vae", str(vae_folder), "--batch", str(batch), "--out-dir", str(out)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=4 * 3600)
    (work / "comfyui.log").write_text(process.stdout + "\n--- stderr ---\n" + process.stderr)
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    results = {line["name"]: line for line in lines if "name" in line}
    if process.returncode != 0:
        results["error"] = {"returncode": process.returncode, "stderr": process.stderr[-4000:]}
    return results


@dataclass
class Pictures:
    webui: dict = field(default_factory=dict)      # (case, direction) → PNG
    comfyui: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)      # (case, direction) → export notes / import's unsupported
    skipped: dict = field(default_factory=dict)    # case → reason
    timings: dict = field(default_factory=dict)
    comfy_error: dict | None = None


def table(pictures: Pictures, kind: str) -> str:
    rows = ["| case | (a) WebUI → export → ComfyUI | (b) ComfyUI graph → import → WebUI |", "|---|---|---|"]
    for name in CASES:
        if not any((name, direction) in pictures.webui for direction in "ab") and name not in pictures.skipped:
            continue  # not selected
        cells = []
        for direction in "ab":
            key = (name, direction)
            if name in pictures.skipped:
                cells.append("skipped")
            elif key in pictures.webui and key in pictures.comfyui:
                cells.append(str(max_pixel_difference(pictures.webui[key], pictures.comfyui[key])))
            else:
                cells.append("no picture")
        rows.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return (f"Largest pixel difference (levels of 255), {kind} vs ComfyUI v0.8.0 (CPU, float32), SDXL "
            f"{SDXL_SIZE}-size test checkpoints, 64×64, 4 steps, Euler, CFG 7, seed 1234\n\n"
            + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def pictures(request, webui, tmp_path_factory):
    """The selected cases' pictures, the WebUI's first (SDXL loaded), then ComfyUI's (the WebUI stopped, or with
    no model loaded)."""
    if not (Path(MODELS_DIR) / A_FILE).is_file() or not (Path(MODELS_DIR) / B_FILE).is_file():
        pytest.skip(f"{A_FILE} and {B_FILE} are not in UNCOND_LAB_MODELS_DIR ({MODELS_DIR})")
    out = Path(os.environ["UNCOND_LAB_COMFY_OUT"]) if os.environ.get("UNCOND_LAB_COMFY_OUT") else \
        tmp_path_factory.mktemp("comfy-round-trip")
    out.mkdir(parents=True, exist_ok=True)
    comfy_vae = out / "comfyui-vae"
    result = Pictures()
    selected = {item.callspec.params["name"] for item in request.session.items
                if Path(str(item.fspath)) == Path(__file__) and hasattr(item, "callspec")}
    webui.use_checkpoint(SDXL)
    memory = meminfo_gb("MemTotal")
    merge_problem = (f"a merge in ComfyUI (float32) needs about {MERGE_MEMORY_GB:g} GB of memory, this machine has "
                     f"{memory:.1f} (UNCOND_LAB_COMFY_MERGE_GB sets the bound)") if memory < MERGE_MEMORY_GB else None
    for name in selected:
        if CASES[name].merge and merge_problem:
            result.skipped[name] = merge_problem
    vae_problem = None
    if any(CASES[name].vae_file for name in selected - set(result.skipped)):
        vae_problem = install_vae(webui)
    graphs, made = {}, {}
    started = time.perf_counter()
    for name, case in CASES.items():
        if name not in selected or name in result.skipped:
            continue
        if case.vae_file and vae_problem:
            result.skipped[name] = vae_problem
            continue
        payload_a = webui_payload(case)
        exported = export_payload(payload_a, "SDXL")
        graph_b = comfy_graph(case)
        imported = import_graph(graph_b)
        result.notes[(name, "a")], result.notes[(name, "b")] = exported["notes"], imported["unsupported"]
        for direction, payload, graph in (("a", payload_a, exported["prompt"]), ("b", imported["txt2img"], graph_b)):
            key = json.dumps(payload, sort_keys=True)  # made once where (a) and (b) ask for the same request
            if key not in made:
                made[key] = generate(webui, payload)
            result.webui[(name, direction)] = made[key]
            graphs[f"{FILE_NAMES[name]}-{direction}"] = graph
    result.timings["webui"] = time.perf_counter() - started
    # The WebUI lets go of its memory before ComfyUI loads a model: a WebUI this session started is stopped (even
    # with its model unloaded it holds about 6 GB, and ComfyUI's merges of the Vega-size pair peak at 21.7 GB
    # resident); a running one switches to the small SD1.5 file and unloads it.
    if webui.stop is not None:
        webui.stop()
    else:
        webui.use_checkpoint(SD15)
        webui.post("/sdapi/v1/unload-checkpoint", {})
    if any(CASES[name].vae_file for name in selected if name not in result.skipped):
        write_vae_file(comfy_vae)
    started, available = time.perf_counter(), meminfo_gb("MemAvailable")
    lines = run_comfyui(graphs, out, comfy_vae) if graphs else {}
    result.timings["comfyui"] = time.perf_counter() - started
    result.comfy_error = lines.get("error")
    for name in CASES:
        for direction in "ab":
            line = lines.get(f"{FILE_NAMES[name]}-{direction}")
            if line:
                result.comfyui[(name, direction)] = Path(line["out"]).read_bytes()
    for (name, direction), png in result.webui.items():
        (out / f"webui-{FILE_NAMES[name]}-{direction}.png").write_bytes(png)
    yield result
    text = table(result, webui.name) + (
        f"\nWebUI {result.timings['webui']:.0f} s, ComfyUI {result.timings['comfyui']:.0f} s (one process, "
        f"{available:.1f} GB available when it started)\n"
        + "".join(f"\n{name}: skipped, {reason}" for name, reason in result.skipped.items()))
    (out / "table.md").write_text(text)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in [""] + text.splitlines() + [f"(pictures, graphs, ComfyUI's log and table.md in {out})"]:
        reporter.write_line(line) if reporter else print(line, file=sys.stderr)


def compare(pictures: Pictures, name: str, direction: str) -> None:
    if name in pictures.skipped:
        pytest.skip(pictures.skipped[name])
    key = (name, direction)
    if key not in pictures.comfyui:
        killed = (pictures.comfy_error or {}).get("returncode") == -9
        pytest.fail(f"ComfyUI made no picture for {name} ({direction})"
                    + (": it was killed, for memory most likely (see tests/comfy/README.md, Memory and time)"
                       if killed else f": {pictures.comfy_error}"))
    difference = max_pixel_difference(pictures.webui[key], pictures.comfyui[key])
    assert difference <= TOLERANCE, f"{name} ({direction}): {difference} levels apart"


@pytest.mark.parametrize("name", CASES)
def test_webui_payload_exported_to_comfyui_gives_the_webuis_picture_sdxl(pictures, name):
    """(a) export_payload of the WebUI's request: ComfyUI's picture of that graph is the WebUI's, and the export
    needed no notes."""
    assert pictures.notes.get((name, "a"), []) == list(CASES[name].notes)
    compare(pictures, name, "a")


@pytest.mark.parametrize("name", CASES)
def test_comfyui_graph_imported_into_the_webui_gives_comfyuis_picture_sdxl(pictures, name):
    """(b) import_graph of a hand-built ComfyUI graph: nothing unsupported, and the WebUI's picture of the
    payload is ComfyUI's picture of the graph."""
    assert pictures.notes.get((name, "b"), []) == []
    compare(pictures, name, "b")
