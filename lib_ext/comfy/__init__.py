"""Move a setup between ComfyUI and the WebUI, free of WebUI imports (stdlib, plus lib_ext.settings).

    import_graph(source)            a ComfyUI PNG / API prompt / UI workflow → {"txt2img": A1111 payload with Uncond
                                    Lab's settings, "unsupported": [what is not carried over, naming the node]}
    export_payload(payload, family) a txt2img payload (import_graph's shape) → {"prompt": API prompt, "workflow": UI
                                    workflow, "notes": [what ComfyUI has no node for]}
    export_infotext(text, family), export_png(data, family): the same from A1111's infotext / PNG
    payload_to_infotext(payload)    the A1111 infotext that pastes back to that payload (PNG Info of a ComfyUI PNG)
    load_graph(source)              the API form of any graph (ComfyGraph); ComfyGraphError when it is none

One concept per module: png (text chunks), nodes (the node catalogue: sockets, widget order), workflow (UI → API
as ComfyUI_frontend does), graph (reading and validating), layout (API → UI), builder (writing API prompts), names
(samplers and schedulers), conditioning (the uncond as conditioning nodes, both ways), model_chain (reading the
checkpoint, merge, RF, LoRA, CLIP skip, VAE), merge_nodes (writing merges), infotext (A1111's text), to_webui
(import), from_webui (export).
Round trip: import_graph(export_payload(p)["prompt"])["txt2img"] == p for a payload in import_graph's form.
"""
from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.from_webui import export_infotext, export_payload, export_png
from lib_ext.comfy.graph import ComfyGraph, load_graph
from lib_ext.comfy.infotext import infotext_to_payload, parse_infotext, payload_to_infotext
from lib_ext.comfy.png import png_text_chunks
from lib_ext.comfy.to_webui import import_graph

__all__ = ["ComfyGraph", "ComfyGraphError", "export_infotext", "export_payload", "export_png", "import_graph",
           "infotext_to_payload", "load_graph", "parse_infotext", "payload_to_infotext", "png_text_chunks"]
