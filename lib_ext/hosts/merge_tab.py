"""The "Merge sweep" part of the Uncond Lab tab: merge ratio × CFG × uncond sweeps into one labelled grid, and
"Save this merge"; plus the same two actions as API routes (POST /uncond-lab/v1/merge-sweep,
/uncond-lab/v1/save-merge).

Every cell is an ordinary txt2img through the WebUI's processing, with Uncond Lab's own settings in its script
slot: the merge is applied by the same code as in txt2img (one weight update per ratio, since cells run ratio
outermost), and each picture's infotext records it. After the sweep, whatever happened, the weights are
restored and the merge's copies freed. Parsing and layout live in lib_ext/merge/sweep.py.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import gradio as gr
from gradio import context as gradio_context
from modules import call_queue, images, processing, scripts, sd_models, sd_samplers, sd_vae, shared

from lib_ext.hosts import common, host
from lib_ext.hosts.webui_state import webui_job
from lib_ext.merge import MergeRecipe, save_merge
from lib_ext.merge.recipe import METHOD_LABELS, parse_method
from lib_ext.settings import Settings, SettingsError
from lib_ext.merge.sweep import SweepError, plan_sweep, uncond_label

SCRIPT_TITLE = "Uncond Lab"
LOADED_MODEL = "Loaded model"
ELEM = "uncond_lab_tab"


class SweepRequestError(ValueError):
    """A sweep or save request is incomplete or wrong; the message names the field."""


# --- requests (the tab's controls and the API's JSON share them) -------------------------------------------

@dataclass
class SweepRequest:
    model_b: str = ""
    model_a: str = ""                 # "" = the loaded model
    model_c: str = ""
    method: str = "weighted_sum"
    ratios: str = "0-1 [5]"
    te_ratio: Any = None              # None/"follow" = each cell's merge ratio
    cfgs: str = "7"
    unconds: str = "default"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 20
    width: int = 512
    height: int = 512
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    save: bool = True                 # the grid into the grid folder, the cells into the samples folder
    send_images: bool = True          # API: return the pictures (base64 PNG)
    blocks: str = ""                  # block-weights list ("IN04=0", "IN04=1"; "" = the plain ratio)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SweepRequest":
        if not isinstance(values, Mapping):
            raise SweepRequestError(f"Uncond Lab: a sweep request must be a JSON object, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise SweepRequestError(f"Uncond Lab: unknown sweep field(s) {', '.join(map(repr, unknown))}; "
                                    f"known: {', '.join(known)}")
        request = cls(**values)
        for name in ("seed", "steps", "width", "height"):
            value = getattr(request, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise SweepRequestError(f"Uncond Lab: sweep field '{name}' must be a whole number, got {value!r}")
            setattr(request, name, int(value))
        if not 1 <= request.steps <= 150:
            raise SweepRequestError(f"Uncond Lab: 'steps' must be 1 to 150, got {request.steps}")
        for name in ("width", "height"):
            if not 64 <= getattr(request, name) <= 4096:
                raise SweepRequestError(f"Uncond Lab: '{name}' must be 64 to 4096, got {getattr(request, name)}")
        return request


@dataclass
class SweepResult:
    grid: Any = None
    images: list = field(default_factory=list)
    infotexts: list = field(default_factory=list)
    grid_infotext: str = ""
    grid_path: str | None = None
    errors: list = field(default_factory=list)
    cells_done: int = 0
    cell_count: int = 0
    seconds: float = 0.0


def _merge_settings(request: SweepRequest, ratio: float, blocks: str | None = None) -> dict:
    """The merge part of Uncond Lab's settings for one cell, validated like an API call."""
    values = {"merge_model": request.model_b, "merge_method": request.method, "merge_model_c": request.model_c,
              "merge_ratio": ratio, "merge_te_ratio": request.te_ratio, "merge_blocks": blocks or ""}
    try:
        return {k: v for k, v in Settings.from_dict(values).as_dict().items() if k.startswith("merge_")}
    except SettingsError as error:
        raise SweepRequestError(str(error)) from None


# --- the sweep ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _outside_event_listener():
    """Gradio 4 (Forge Neo) skips a component's __init__ inside an event handler (component_meta.updateable: there
    a constructor is an update), and the tab's buttons build the scripts' controls to read their defaults. Gradio
    3 has no such context: nothing to do."""
    flag = getattr(getattr(gradio_context, "LocalContext", None), "in_event_listener", None)
    if flag is None:
        yield
        return
    token = flag.set(False)
    try:
        yield
    finally:
        flag.reset(token)


def _script_args(settings: dict) -> tuple:
    """Every script's UI defaults (as the API builds them), with Uncond Lab's slot set to `settings`."""
    runner = scripts.scripts_txt2img
    ours = next((s for s in runner.alwayson_scripts if s.title() == SCRIPT_TITLE), None)
    if ours is None or ours.args_to is None:
        raise SweepRequestError("Uncond Lab: the sweep needs the WebUI's txt2img scripts (started without --nowebui)")
    args = [None] * max([1] + [s.args_to or 0 for s in runner.scripts])
    args[0] = 0
    with _outside_event_listener(), gr.Blocks():  # ui() builds components only inside a Blocks; thrown away
        for script in runner.scripts:
            controls = script.ui(script.is_img2img)
            if controls and script.args_from is not None:
                args[script.args_from:script.args_to] = [c.value for c in controls]
    args[ours.args_from] = settings
    return tuple(args)


def _cell_processing(request: SweepRequest, cell, model_a_title: str | None, base_args: tuple):
    settings = {"enabled": cell.uncond is not None, "zero_weight": cell.uncond or 0.0,
                **_merge_settings(request, cell.ratio, cell.blocks)}
    ours = next(s for s in scripts.scripts_txt2img.alwayson_scripts if s.title() == SCRIPT_TITLE)
    args = list(base_args)
    args[ours.args_from] = settings
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        outpath_samples=shared.opts.outdir_samples or shared.opts.outdir_txt2img_samples,
        outpath_grids=shared.opts.outdir_grids or shared.opts.outdir_txt2img_grids,
        prompt=request.prompt, negative_prompt=request.negative_prompt, seed=request.seed, steps=request.steps,
        cfg_scale=cell.cfg, width=request.width, height=request.height, sampler_name=request.sampler_name,
        scheduler=request.scheduler, batch_size=1, n_iter=1, do_not_save_grid=True,
        do_not_save_samples=not request.save,
        override_settings={"sd_model_checkpoint": model_a_title} if model_a_title else {},
    )
    p.scripts = scripts.scripts_txt2img
    # Built in code like an API request: the built-in sampler/seed scripts must not overwrite the fields above
    # with their UI defaults (their setup() is for the UI only). Set before script_args, whose setter runs setup().
    p.is_api = True
    p.script_args = tuple(args)
    return p


def _blank(width: int, height: int):
    from PIL import Image
    return Image.new("RGB", (width, height), (64, 64, 64))


def run_sweep(request: SweepRequest) -> SweepResult:
    """Run every cell (the caller holds the WebUI's queue lock and has begun a job on shared.state)."""
    plan = plan_sweep(request.ratios, request.cfgs, request.unconds, request.blocks)
    if not request.model_b:
        raise SweepRequestError("Uncond Lab: pick a merge partner B")
    for ratio, blocks in plan.rows:
        _merge_settings(request, ratio, blocks)  # every cell valid before the first picture
    common.find_checkpoint(request.model_b, "model B")
    if request.model_c and parse_method(request.method) == "add_difference":
        common.find_checkpoint(request.model_c, "model C")
    model_a = None
    if request.model_a and request.model_a != LOADED_MODEL:
        model_a = common.find_checkpoint(request.model_a, "model A").title
    seed = processing.get_fixed_seed(request.seed)
    request.seed = int(seed)  # one seed for every cell, as the grid compares settings, not noise
    result = SweepResult(cell_count=plan.cell_count)
    start = time.perf_counter()
    state = shared.state
    state.job_count = plan.cell_count
    base_args = _script_args({})
    pictures = {}
    try:
        for number, cell in enumerate(plan.cells(), 1):
            if state.interrupted or getattr(state, "stopping_generation", False):
                break
            uncond = uncond_label(cell.uncond)
            state.job = f"Uncond Lab sweep: cell {number} of {plan.cell_count}"
            blocks = "" if cell.blocks is None else f", blocks {cell.blocks}"
            state.textinfo = (f"Cell {number}/{plan.cell_count}: merge ratio {cell.ratio:g}{blocks}, "
                              f"CFG {cell.cfg:g}, {uncond}")
            p = _cell_processing(request, cell, model_a, base_args)
            try:
                processed = processing.process_images(p)
            except Exception as error:  # reported, not hidden; the other cells still run
                result.errors.append(f"cell {number} (ratio {cell.ratio:g}{blocks}, CFG {cell.cfg:g}, {uncond}): "
                                     f"{error}")
                processed = None
            finally:
                p.close()
            if processed is not None and processed.images:
                pictures[(cell.row, cell.column)] = processed.images[0]
                result.infotexts.append(processed.infotexts[0])
                result.images.append(processed.images[0])
                result.cells_done += 1
            if state.skipped:
                state.skipped = False
    finally:
        common.release_merge()  # the originals back, the copies freed: interrupted, failed or done
    result.seconds = time.perf_counter() - start
    if not pictures:
        return result
    size = next(iter(pictures.values())).size
    cells = [pictures.get((r, c)) or _blank(*size)
             for r in range(len(plan.rows)) for c in range(len(plan.columns))]
    grid = images.image_grid(cells, rows=len(plan.rows))
    columns = [[images.GridAnnotation(line) for line in lines] for lines in plan.column_labels()]
    rows = [[images.GridAnnotation(label)] for label in plan.row_labels()]
    result.grid = images.draw_grid_annotations(grid, size[0], size[1], columns, rows)
    blocks_note = "" if plan.blocks == (None,) else f"; block weights {'; '.join(b or 'flat' for b in plan.blocks)}"
    sweep_note = (f"Uncond Lab sweep: merge ratios {', '.join(f'{r:g}' for r in plan.ratios)}{blocks_note}; CFG "
                  f"{', '.join(f'{c:g}' for c in plan.cfgs)}; {', '.join(uncond_label(u) for u in plan.unconds)}")
    result.grid_infotext = (result.infotexts[0] + ", " if result.infotexts else "") + sweep_note
    if request.save:
        outdir = shared.opts.outdir_grids or shared.opts.outdir_txt2img_grids
        result.grid_path, _ = images.save_image(result.grid, outdir, "uncond_lab_sweep", extension=shared.opts.grid_format,
                                                info=result.grid_infotext, grid=True, seed=request.seed,
                                                prompt=request.prompt)
    return result


# --- "Save this merge" -------------------------------------------------------------------------------------

def checkpoints_folder() -> str:
    """The WebUI's --ckpt-dir, else its models/Stable-diffusion (Forge Neo has only --ckpt-dirs, extra folders)."""
    return getattr(shared.cmd_opts, "ckpt_dir", None) or sd_models.model_path


def save_this_merge(request: SweepRequest, ratio: float, name: str = "", blocks: str | None = None) -> dict:
    """Write the merge at `ratio` (and per-block `blocks`) into the checkpoints folder (never over a file) and list
    it, no restart. Merged and saved as the in-memory merge holds it in the loaded model (each part in its loaded
    dtype), so that loading it gives the picture the in-memory merge gives."""
    merge = _merge_settings(request, ratio, blocks)
    if not merge["merge_model"]:
        raise SweepRequestError("Uncond Lab: pick a merge partner B")
    loaded = host.selected_model()
    info_a = (common.find_checkpoint(request.model_a, "model A")
              if request.model_a and request.model_a != LOADED_MODEL else loaded.sd_checkpoint_info)
    infos = {"A": info_a, "B": common.find_checkpoint(merge["merge_model"], "model B")}
    if merge["merge_method"] == "add_difference":
        infos["C"] = common.find_checkpoint(merge["merge_model_c"], "model C")
    for info in infos.values():
        common.checkpoint_title(info)  # computes the sha256 A1111 keys sd_merge_models by
    include_vae = all(common.has_vae(i.filename) for i in infos.values())
    if loaded is not None and loaded.sd_checkpoint_info.filename == info_a.filename:
        include_vae = include_vae and sd_vae.loaded_vae_file is None  # as the in-memory merge did
    recipe = MergeRecipe(merge["merge_method"], info_a.filename, infos["B"].filename,
                         infos["C"].filename if "C" in infos else None, unet_ratio=merge["merge_ratio"],
                         te_ratio=merge["merge_te_ratio"], include_vae=include_vae,
                         blocks=merge["merge_blocks"] or None)
    state = shared.state

    def progress(done: int, total: int) -> None:
        state.sampling_steps, state.sampling_step = max(total // 2**20, 1), done // 2**20
        state.textinfo = f"Saving the merge: {done / 2**30:.2f} of {total / 2**30:.2f} GiB"

    state.job_count = 1
    path = save_merge(recipe, checkpoints_folder(), name=name or None,
                      live_dtypes=host.merge_live_dtypes(loaded) if loaded is not None else None,
                      sha256={role: getattr(info, "sha256", None) for role, info in infos.items()},
                      progress=progress)
    _copy_config_sidecar(info_a.filename, str(path))
    sd_models.list_models()  # the new file shows up in every checkpoint list without a restart
    info = sd_models.get_closet_checkpoint_match(os.path.basename(path))
    return {"path": str(path), "title": info.title if info else os.path.basename(path), "recipe": recipe.describe()}


def _copy_config_sidecar(model_a: str, merged: str) -> None:
    """A's `<name>.yaml` next to the merge: A1111 reads the model config (v-prediction, an unusual architecture)
    from it, so without it a merge of such models would load as something else. Never over an existing file."""
    import shutil
    source, target = os.path.splitext(model_a)[0] + ".yaml", os.path.splitext(merged)[0] + ".yaml"
    if os.path.isfile(source) and not os.path.lexists(target):
        shutil.copyfile(source, target)


# --- the tab ------------------------------------------------------------------------------------------------

def _titles() -> list[str]:
    return sd_models.checkpoint_tiles()


def _samplers() -> list[str]:
    return [s.name for s in sd_samplers.visible_samplers()]


def _schedulers() -> list[str]:
    try:
        from modules import sd_schedulers
    except ImportError:
        return ["Automatic"]
    return [s.label for s in sd_schedulers.schedulers]


def _ui_request(model_a, model_b, model_c, method, ratios, te_ratio, cfgs, unconds, prompt, negative_prompt, seed,
                steps, width, height, sampler_name, scheduler, blocks="") -> SweepRequest:
    none = ("", "None", None)
    return SweepRequest(model_a="" if model_a in (LOADED_MODEL, *none) else model_a,
                        model_b="" if model_b in none else model_b, model_c="" if model_c in none else model_c,
                        method=method, ratios=ratios, te_ratio=te_ratio, cfgs=cfgs, unconds=unconds, prompt=prompt,
                        negative_prompt=negative_prompt, seed=int(seed), steps=int(steps), width=int(width),
                        height=int(height), sampler_name=sampler_name, scheduler=scheduler, blocks=blocks or "")


def _run_from_ui(id_task, *values):
    try:
        result = run_sweep(_ui_request(*values))
    except (SweepError, SweepRequestError, common.MergeRequestError, ValueError) as error:
        return [], f"<p class='uncond-lab-error'>{html.escape(str(error))}</p>"
    gallery = ([result.grid] if result.grid is not None else []) + result.images
    summary = (f"{result.cells_done} of {result.cell_count} cells in {result.seconds:.1f} s"
               + (f"; grid saved as {html.escape(result.grid_path)}" if result.grid_path else ""))
    errors = "".join(f"<p class='uncond-lab-error'>{html.escape(e)}</p>" for e in result.errors)
    return gallery, f"<p>{summary}</p>{errors}<pre>{html.escape(result.grid_infotext)}</pre>"


def _save_from_ui(id_task, save_ratio, name, *values) -> tuple[str, str]:
    """(what was saved, ""): the WebUI's call wrapper writes its timing, or an unexpected error, into the last
    output, and needs two (it returns a tuple, which gradio would hand whole to a single output).
    values: the sweep's controls, then the block weights to save."""
    *values, save_blocks = values
    try:
        saved = save_this_merge(_ui_request(*values), float(save_ratio), name, save_blocks or None)
    except (SweepError, SweepRequestError, common.MergeRequestError, ValueError, OSError) as error:
        return f"<p class='uncond-lab-error'>{html.escape(str(error))}</p>", ""
    return (f"<p>Saved {html.escape(saved['path'])}; it is in the checkpoint list as "
            f"<code>{html.escape(saved['title'])}</code> ({html.escape(saved['recipe'])})</p>"), ""


def build_sweep_tab() -> None:
    """The sweep controls, the gallery and "Save this merge" (inside the Uncond Lab tab's "Merge sweep" tab)."""
    id_task = gr.Textbox(visible=False, elem_id=f"{ELEM}_id_task")
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Row():
                model_a = gr.Dropdown([LOADED_MODEL, *_titles()], value=LOADED_MODEL, label="Model A",
                                      elem_id=f"{ELEM}_model_a")
                model_b = gr.Dropdown(["None", *_titles()], value="None", label="Model B (merge partner)",
                                      elem_id=f"{ELEM}_model_b")
                model_c = gr.Dropdown(["None", *_titles()], value="None", label="Model C (add difference)",
                                      elem_id=f"{ELEM}_model_c")
                refresh = gr.Button("\U0001f504", elem_id=f"{ELEM}_refresh", scale=0, min_width=40)
            method = gr.Radio(list(METHOD_LABELS.values()), value=METHOD_LABELS["weighted_sum"], label="Method",
                              elem_id=f"{ELEM}_method")
            with gr.Row():
                ratios = gr.Textbox("0-1 [5]", label="Merge ratios (X/Y/Z syntax: 0-1 [5], 0, 0.3, 0.5)",
                                    elem_id=f"{ELEM}_ratios")
                te_ratio = gr.Dropdown(["follow", "0", "0.5", "1"], value="follow", allow_custom_value=True,
                                       label="Text-encoder ratio", elem_id=f"{ELEM}_te_ratio")
            blocks = gr.Textbox("", label='Block weights (one row each; X/Y/Z quoting: "IN04=0", "IN04=1", '
                                'input-only; empty: the plain ratio)', elem_id=f"{ELEM}_blocks")
            with gr.Row():
                cfgs = gr.Textbox("7", label="CFG scales", elem_id=f"{ELEM}_cfgs")
                unconds = gr.Textbox("default", label="Uncond (default; null; zero; zero weights 0-1)",
                                     elem_id=f"{ELEM}_unconds")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{ELEM}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{ELEM}_negative")
            with gr.Row():
                seed = gr.Number(-1, label="Seed", precision=0, elem_id=f"{ELEM}_seed")
                steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id=f"{ELEM}_steps")
                width = gr.Slider(64, 2048, value=1024, step=8, label="Width", elem_id=f"{ELEM}_width")
                height = gr.Slider(64, 2048, value=1024, step=8, label="Height", elem_id=f"{ELEM}_height")
            with gr.Row():
                samplers = _samplers()
                sampler = gr.Dropdown(samplers, value="Euler" if "Euler" in samplers else samplers[0],
                                      label="Sampler", elem_id=f"{ELEM}_sampler")
                scheduler = gr.Dropdown(_schedulers(), value="Automatic", label="Schedule type",
                                        elem_id=f"{ELEM}_scheduler")
            with gr.Row():
                run = gr.Button("Run sweep", variant="primary", elem_id=f"{ELEM}_run")
                interrupt = gr.Button("Interrupt", elem_id=f"{ELEM}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{ELEM}_skip")
            with gr.Accordion("Save this merge", open=False):
                with gr.Row():
                    save_ratio = gr.Number(0.5, label="Ratio to save", elem_id=f"{ELEM}_save_ratio")
                    save_blocks = gr.Textbox("", label="Block weights to save (empty: none)",
                                             elem_id=f"{ELEM}_save_blocks")
                    save_name = gr.Textbox("", label="File name (empty: from the recipe)",
                                           elem_id=f"{ELEM}_save_name")
                    save = gr.Button("Save this merge", elem_id=f"{ELEM}_save")
                saved = gr.HTML(elem_id=f"{ELEM}_saved")
                save_status = gr.HTML(elem_id=f"{ELEM}_save_status")
        with gr.Column(scale=6, elem_id=f"{ELEM}_gallery_container"):
            gallery = gr.Gallery(label="Sweep", elem_id=f"{ELEM}_gallery", columns=4)
            info = gr.HTML(elem_id=f"{ELEM}_info")
    values = [model_a, model_b, model_c, method, ratios, te_ratio, cfgs, unconds, prompt, negative, seed, steps,
              width, height, sampler, scheduler, blocks]
    # extra_outputs: what the wrapper shows in every output but the last one (its error message) on an exception.
    run.click(call_queue.wrap_gradio_gpu_call(_run_from_ui, extra_outputs=[None]),
              _js="uncondLabSweepSubmit", inputs=[id_task, *values], outputs=[gallery, info])
    save.click(call_queue.wrap_gradio_gpu_call(_save_from_ui, extra_outputs=[""]),
               _js="uncondLabSweepSubmit", inputs=[id_task, save_ratio, save_name, *values, save_blocks],
               outputs=[saved, save_status])
    interrupt.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])
    skip.click(lambda: shared.state.skip(), inputs=[], outputs=[])

    def refresh_lists():
        sd_models.list_models()
        titles = _titles()
        return (gr.update(choices=[LOADED_MODEL, *titles]), gr.update(choices=["None", *titles]),
                gr.update(choices=["None", *titles]))

    refresh.click(refresh_lists, inputs=[], outputs=[model_a, model_b, model_c])


# --- API ---------------------------------------------------------------------------------------------------

def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _http_error(error: Exception):
    from fastapi import HTTPException
    return HTTPException(status_code=422, detail=str(error))


def register_api(app) -> None:
    from fastapi import Body

    def sweep_route(payload: dict = Body(...)):
        """Run a sweep like the tab's Run button; returns the grid, the cells and their infotexts."""
        try:
            request = SweepRequest.from_dict(payload)
            with webui_job("uncond_lab_sweep"):
                result = run_sweep(request)
        except (SweepError, SweepRequestError, common.MergeRequestError, ValueError) as error:
            raise _http_error(error) from None
        return {
            "grid": _png(result.grid) if request.send_images and result.grid is not None else None,
            "images": [_png(i) for i in result.images] if request.send_images else [],
            "infotexts": result.infotexts, "grid_infotext": result.grid_infotext, "grid_path": result.grid_path,
            "errors": result.errors, "cells_done": result.cells_done, "cell_count": result.cell_count,
            "seconds": result.seconds,
        }

    def save_route(payload: dict = Body(...)):
        """'Save this merge': {"model_b": ..., "ratio": 0.5, "save_blocks": "IN04=1", "name": "...", ...} → the
        file's path and title."""
        try:
            values = dict(payload)
            ratio, name = values.pop("ratio", 0.5), values.pop("name", "")
            save_blocks = values.pop("save_blocks", None)
            if not isinstance(name, str):
                raise SweepRequestError(f"Uncond Lab: 'name' must be text, got {name!r}")
            request = SweepRequest.from_dict(values)
            with webui_job("uncond_lab_save"):
                return save_this_merge(request, ratio, name, save_blocks)
        except (SweepError, SweepRequestError, common.MergeRequestError, ValueError, OSError) as error:
            raise _http_error(error) from None

    def release_route():
        """Restore the weights and free the merge's copies now; returns how many bytes were held."""
        held = host.merge_status().get("resident_bytes", 0)
        with webui_job("uncond_lab_release"):
            common.release_merge()
        return {"released_bytes": held}

    def status_route():
        """What the weights hold now: {group: ratio} (null: the originals, "dirty": a pass was cut short, "per
        block": UNet blocks at different ratios), and A1111's {part: ratio} per UNet block slot (applied_parts)."""
        status = host.merge_status()
        parts = {k: ("dirty" if v != v else v) for k, v in status.get("applied_parts", {}).items()}  # NaN: not JSON
        dirty = "dirty" in parts.values() or not parts
        applied = {k: (("dirty" if dirty else "per block") if v != v else v)
                   for k, v in status.get("applied", {}).items()}
        return {**status, "applied": applied, **({"applied_parts": parts} if parts else {})}

    app.add_api_route("/uncond-lab/v1/merge-sweep", sweep_route, methods=["POST"])
    app.add_api_route("/uncond-lab/v1/save-merge", save_route, methods=["POST"])
    app.add_api_route("/uncond-lab/v1/merge-release", release_route, methods=["POST"])
    app.add_api_route("/uncond-lab/v1/merge-status", status_route, methods=["GET"])
