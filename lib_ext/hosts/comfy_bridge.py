"""ComfyUI ⇄ WebUI in the WebUI: the HTTP routes, PNG Info for ComfyUI's PNGs, ComfyUI's graph in the WebUI's PNGs
(an option), and the tab's "ComfyUI" panel. The conversions themselves are lib_ext/comfy (host-free).

    POST /uncond-lab/v1/comfy/import  {"png": base64} | {"prompt": API graph} | {"workflow": UI graph}
                                      → {"txt2img": payload, "unsupported": [...], "infotext": text}
    POST /uncond-lab/v1/comfy/export  a txt2img payload | {"infotext": text}
                                      → {"prompt": API graph, "workflow": UI graph, "notes": [...]}
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from modules import images, sd_models, shared

from lib_ext.comfy import ComfyGraphError, export_infotext, export_payload, import_graph, payload_to_infotext
from lib_ext.comfy.from_webui import READ_OPTIONS
from lib_ext.hosts import host
from lib_ext.settings import SettingsError

log = logging.getLogger("uncond_lab")

PNG_CHUNKS_OPTION = "uncond_lab_comfy_png_chunks"
IMPORT_NOTE_KEY = "Uncond Lab: not carried over from ComfyUI"  # PNG Info shows it beside the parameters
WRAPPED_MARK = "uncond_lab_wrapped"


# --- conversions with the WebUI's knowledge (checkpoint hashes, the loaded model's family) -----------------

def _model_hash(payload: dict) -> str | None:
    """The short hash of the payload's checkpoint if the WebUI lists it (pasting switches checkpoints by hash)."""
    name = (payload.get("override_settings") or {}).get("sd_model_checkpoint")
    info = sd_models.get_closet_checkpoint_match(name) if name else None
    return info.shorthash if info is not None and info.shorthash else None


def _this_webuis_options(payload: dict, unsupported: list[str]) -> dict:
    """The payload without override_settings this WebUI does not have (Forge Neo has no timestep quantization
    switch; it refuses an unknown option with an error)."""
    override = payload.get("override_settings") or {}
    unknown = [key for key in override if key not in shared.opts.data_labels]
    for key in unknown:
        unsupported.append(f"option {key} = {override[key]!r}: not an option of this WebUI")
    return {**payload, "override_settings": {k: v for k, v in override.items() if k not in unknown}}


def import_result(source: Any) -> dict:
    """import_graph's result for this WebUI, plus the infotext that pastes it (PNG Info's "Send to txt2img")."""
    result = import_graph(source)
    unsupported = list(result["unsupported"])
    payload = _this_webuis_options(result["txt2img"], unsupported)
    return {"txt2img": payload, "unsupported": unsupported,
            "infotext": payload_to_infotext(payload, _model_hash(payload))}


def _family() -> str | None:
    """SDXL or SD1 by the loaded model (the export's default block names and sizes); None when none is loaded."""
    sd_model = shared.sd_model
    if sd_model is None:
        return None
    return "SDXL" if host.is_dict_cond_model(sd_model) else "SD1"


def _with_this_webuis_settings(payload: dict) -> dict:
    """The payload with each option the export reads that it leaves to the WebUI's settings filled in from them,
    as its generation uses them (CLIP skip: Forge Neo's default is 2, A1111's 1)."""
    opts = shared.opts
    override = dict(payload.get("override_settings") or {})
    for key in READ_OPTIONS:
        if key not in override and key in opts.data_labels:
            override[key] = getattr(opts, key)  # its value, or its default when never set
    return {**payload, "override_settings": override}


def export_result(body: dict) -> dict:
    if "infotext" in body:
        if not isinstance(body["infotext"], str):
            raise ComfyGraphError("Uncond Lab ComfyUI export: 'infotext' must be a string")
        return export_infotext(body["infotext"], _family())
    return export_payload(_with_this_webuis_settings(body), _family())


# --- HTTP routes --------------------------------------------------------------------------------------------

def _import_source(body: Any) -> Any:
    if not isinstance(body, dict) or not ({"png", "prompt", "workflow"} & set(body)):
        raise ComfyGraphError("Uncond Lab ComfyUI import: send {\"png\": base64 PNG}, {\"prompt\": API graph} or "
                              "{\"workflow\": UI graph}")
    if "png" in body:
        try:
            return base64.b64decode(str(body["png"]).split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise ComfyGraphError("Uncond Lab ComfyUI import: 'png' is not base64") from None
    return {key: body[key] for key in ("prompt", "workflow") if key in body}


def register_api(app) -> None:
    from fastapi import Body, HTTPException

    def refused(error: Exception) -> HTTPException:
        return HTTPException(status_code=422, detail=str(error))

    def import_route(body: dict = Body(...)):  # noqa: B008 (FastAPI's idiom)
        try:
            return import_result(_import_source(body))
        except (ComfyGraphError, SettingsError) as error:
            raise refused(error) from None

    def export_route(body: dict = Body(...)):  # noqa: B008
        try:
            return export_result(body)
        except (ComfyGraphError, SettingsError) as error:
            raise refused(error) from None

    app.add_api_route("/uncond-lab/v1/comfy/import", import_route, methods=["POST"])
    app.add_api_route("/uncond-lab/v1/comfy/export", export_route, methods=["POST"])


# --- PNG Info: a ComfyUI PNG reads as the infotext of its import ------------------------------------------

def _reads_comfy_pngs(read):
    """images.read_info_from_image, also for ComfyUI's PNGs (no "parameters", a "prompt"/"workflow" chunk)."""
    @functools.wraps(read)
    def read_info_from_image(image):
        geninfo, items = read(image)
        if geninfo is None and ("prompt" in items or "workflow" in items):
            try:
                source = {key: json.loads(items[key]) for key in ("prompt", "workflow") if key in items}
                result = import_result(source)
            except (ComfyGraphError, SettingsError, ValueError, TypeError) as error:
                items[IMPORT_NOTE_KEY] = str(error)
            else:
                geninfo = result["infotext"]
                if result["unsupported"]:
                    items[IMPORT_NOTE_KEY] = "; ".join(result["unsupported"])
        return geninfo, items

    setattr(read_info_from_image, WRAPPED_MARK, read)
    return read_info_from_image


def install_png_info_reader() -> None:
    if not hasattr(images.read_info_from_image, WRAPPED_MARK):
        images.read_info_from_image = _reads_comfy_pngs(images.read_info_from_image)


def remove_png_info_reader() -> None:
    original = getattr(images.read_info_from_image, WRAPPED_MARK, None)
    if original is not None:
        images.read_info_from_image = original


# --- the WebUI's PNGs: ComfyUI's "prompt" and "workflow" chunks too (an option, off by default) ------------

def add_options() -> None:
    shared.opts.add_option(PNG_CHUNKS_OPTION, shared.OptionInfo(
        False, "Also write the ComfyUI graph of each picture into its PNG ('prompt' and 'workflow' chunks)",
        section=("uncond_lab", "Uncond Lab")).info("ComfyUI then opens the WebUI's pictures directly"))


def add_comfy_chunks(params) -> None:
    """on_before_image_saved: the graph that reproduces the picture, from its infotext."""
    if not getattr(shared.opts, PNG_CHUNKS_OPTION, False) or not str(params.filename).lower().endswith(".png"):
        return
    infotext = (params.pnginfo or {}).get("parameters")
    if not infotext:
        return
    try:
        graphs = export_infotext(infotext, _family())
    except (ComfyGraphError, SettingsError) as error:
        log.warning("Uncond Lab: no ComfyUI graph written into %s: %s", params.filename, error)
        return
    params.pnginfo["prompt"] = json.dumps(graphs["prompt"])
    params.pnginfo["workflow"] = json.dumps(graphs["workflow"])


# --- the tab's panel --------------------------------------------------------------------------------------

def _read_upload(file) -> Any:
    """A PNG's bytes or a JSON graph from the File component (a temp file path, or an object with .name)."""
    path = Path(getattr(file, "name", file))
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    try:
        return json.loads(data)
    except ValueError:
        raise ComfyGraphError("Uncond Lab ComfyUI import: not a PNG and not JSON") from None


def _downloads(graphs: dict) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="uncond_lab_comfy_"))
    (folder / "workflow.json").write_text(json.dumps(graphs["workflow"], indent=2))
    (folder / "prompt.json").write_text(json.dumps(graphs["prompt"], indent=2))
    return [str(folder / "workflow.json"), str(folder / "prompt.json")]


def _bullets(title: str, lines: list[str]) -> str:
    return f"**{title}**\n\n" + "\n".join(f"* {line}" for line in lines) if lines else ""


def build_comfy_tab() -> None:
    import gradio as gr
    from modules import infotext_utils

    gr.Markdown("A ComfyUI picture or workflow becomes WebUI settings (Uncond Lab's included); a WebUI picture or "
                "infotext becomes the ComfyUI graph that reproduces it. *ComfyUI sampling* in the settings makes "
                "the WebUI sample as ComfyUI's KSampler does.")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="ComfyUI PNG or graph JSON", file_types=[".png", ".json"],
                             elem_id="uncond_lab_comfy_upload")
            import_button = gr.Button("Import from ComfyUI", elem_id="uncond_lab_comfy_import")
            infotext = gr.Textbox(label="WebUI parameters (edit, then send)", lines=5,
                                  elem_id="uncond_lab_comfy_infotext")
            send = gr.Button("Send to txt2img", elem_id="uncond_lab_comfy_send")
            unsupported = gr.Markdown(elem_id="uncond_lab_comfy_unsupported")
        with gr.Column():
            source = gr.Textbox(label="WebUI infotext to export (PNG Info's parameters)", lines=5,
                                elem_id="uncond_lab_comfy_source")
            export_button = gr.Button("Export to ComfyUI", elem_id="uncond_lab_comfy_export")
            downloads = gr.File(label="ComfyUI graphs", file_count="multiple", interactive=False,
                                elem_id="uncond_lab_comfy_downloads")
            notes = gr.Markdown(elem_id="uncond_lab_comfy_notes")

    def do_import(file):
        if file is None:
            return "", "Upload a ComfyUI PNG or graph JSON first."
        try:
            result = import_result(_read_upload(file))
        except (ComfyGraphError, SettingsError) as error:
            return "", f"**Not imported:** {error}"
        return result["infotext"], _bullets("Not carried over", result["unsupported"])

    def do_export(text):
        try:
            graphs = export_infotext(text or "", _family())
        except (ComfyGraphError, SettingsError) as error:
            return None, f"**Not exported:** {error}"
        return _downloads(graphs), _bullets("Notes", graphs["notes"])

    import_button.click(do_import, [upload], [infotext, unsupported], show_progress=False)
    export_button.click(do_export, [source], [downloads, notes], show_progress=False)
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
        paste_button=send, tabname="txt2img", source_text_component=infotext))
