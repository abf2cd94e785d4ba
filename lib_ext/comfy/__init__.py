"""Move a setup between ComfyUI and the WebUI, free of WebUI imports (stdlib, plus lib_ext.settings).

    import_graph(source)            a ComfyUI PNG / API prompt / UI workflow → {"txt2img": A1111 payload with Uncond
                                    Lab's settings, "unsupported": [what is not carried over, naming the node]}
    load_graph(source)              the API form of any graph (ComfyGraph); ComfyGraphError when it is none
"""
from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.graph import ComfyGraph, load_graph
from lib_ext.comfy.png import png_text_chunks
from lib_ext.comfy.to_webui import import_graph

__all__ = ["ComfyGraph", "ComfyGraphError", "import_graph", "load_graph", "png_text_chunks"]
