"""Run one ComfyUI API prompt with a real ComfyUI checkout, on the CPU in float32, without its server.

Standalone: run it with ComfyUI's own Python (its venv), never import it from the test suite.

    $COMFYUI_PYTHON tests/comfy/run_comfy_graph.py --comfyui-dir $COMFYUI_DIR --models DIR \
        --prompt graph.json|- --out picture.png

ComfyUI is set up as `python main.py --cpu --force-fp32 --fp32-unet --fp32-text-enc --fp32-vae` would set it up
(comfy.cli_args.args changed before comfy.model_management is imported; the text encoders too, which ComfyUI
otherwise keeps in float16 on the CPU), the built-in node modules are loaded as main.py does
(nodes.init_extra_nodes, without custom and API nodes), and the prompt is validated and run by ComfyUI's own
executor (execution.validate_prompt, execution.PromptExecutor) with a stand-in for the server that drops its
messages. The picture is the file ComfyUI's SaveImage (or PreviewImage) wrote, `np.clip(255. * image, 0, 255)`
as uint8, copied to --out; a graph whose VAEDecode feeds no image output gets a SaveImage on it.

--models is ComfyUI's "checkpoints" folder (the file names in CheckpointLoaderSimple are relative to it), and its
"loras" and "vae" folder unless --loras / --vae name others. One JSON line on stdout per picture:
{"out": PATH, "seconds": S, ...} (with --batch FILE --out-dir DIR: {"name": NAME, ...} per prompt of the file's
{name: prompt}, run in one ComfyUI, whose cache keeps a checkpoint loaded between prompts that load it alike).
Exit status 2 for a prompt ComfyUI refuses (its errors on stderr), 1 for a failure while running one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

OUTPUT_NODES = ("SaveImage", "PreviewImage")
# ComfyUI's SaveImage writes its pictures as `np.clip(255. * image.cpu().numpy(), 0, 255).astype(np.uint8)`
# (nodes.py SaveImage.save_images); the file it writes is the one copied, so these are its exact pixels.


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"),
                        help="a ComfyUI checkout (default: $COMFYUI_DIR)")
    parser.add_argument("--models", required=True, help="the checkpoints folder")
    parser.add_argument("--loras", help="the LoRA folder (default: --models)")
    parser.add_argument("--vae", help="the VAE folder (default: --models)")
    parser.add_argument("--prompt", default="-", help="an API prompt JSON file, or - for stdin (default)")
    parser.add_argument("--out", help="where the PNG goes")
    parser.add_argument("--batch", help="a JSON file {name: API prompt}: each run in turn in one ComfyUI (its "
                                        "loaded models reused as ComfyUI's cache allows), written to "
                                        "--out-dir/NAME.png")
    parser.add_argument("--out-dir", help="the folder for --batch's pictures")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--verbose", action="store_true", help="ComfyUI's INFO log lines on stderr")
    parser.add_argument("--validate-only", action="store_true",
                        help="load the nodes and validate the prompt (files included), run nothing")
    arguments = parser.parse_args(argv)
    if not arguments.comfyui_dir:
        parser.error("--comfyui-dir or COMFYUI_DIR is needed")
    if not arguments.validate_only and not (arguments.out_dir if arguments.batch else arguments.out):
        parser.error("--out (or --batch with --out-dir) is needed")
    return arguments


def read_prompt(source: str) -> dict:
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    prompt = json.loads(text)
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), dict):  # {"prompt": ...} as POST /prompt takes
        prompt = prompt["prompt"]
    if not isinstance(prompt, dict) or not all(isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise SystemExit("not an API-format prompt (node id → {class_type, inputs})")
    return prompt


def with_image_output(prompt: dict) -> dict:
    """The prompt, plus a SaveImage on each VAEDecode when no node of it saves or previews an image."""
    if any(node["class_type"] in OUTPUT_NODES for node in prompt.values()):
        return prompt
    prompt = dict(prompt)
    decoders = [node_id for node_id, node in prompt.items() if node["class_type"] == "VAEDecode"]
    if not decoders:
        raise SystemExit("the prompt has neither an image output node nor a VAEDecode")
    for number, node_id in enumerate(decoders):
        prompt[f"run_comfy_graph_save_{number}"] = {"class_type": "SaveImage", "inputs": {
            "filename_prefix": "run_comfy_graph", "images": [node_id, 0]}}
    return prompt


def set_up_comfyui(comfyui_dir: str, threads: int, verbose: bool) -> None:
    """ComfyUI importable and configured: CPU, float32 everywhere. Must run before anything imports torch's users
    in ComfyUI (comfy.model_management reads the arguments once, at import)."""
    comfyui_dir = os.path.abspath(comfyui_dir)
    if not os.path.isfile(os.path.join(comfyui_dir, "comfy", "model_management.py")):
        raise SystemExit(f"{comfyui_dir} is not a ComfyUI checkout")
    sys.path.insert(0, comfyui_dir)
    # As main.py does first: ComfyUI's package `utils` before a module of ComfyUI puts comfy/ (with comfy/utils.py)
    # on sys.path, which would leave server.py (imported by nodes_images.py) without utils.install_util.
    import utils.install_util  # noqa: F401
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import comfy.options
    comfy.options.enable_args_parsing(False)  # comfy.cli_args parses [] instead of our argv
    from comfy.cli_args import args, LatentPreviewMethod
    args.cpu = True
    args.force_fp32 = True
    args.fp32_unet = True
    args.fp32_text_enc = True
    args.fp32_vae = True
    args.disable_smart_memory = False
    args.preview_method = LatentPreviewMethod.NoPreviews
    if threads > 0:
        import torch
        torch.set_num_threads(threads)


class QuietServer:
    """What PromptExecutor needs of ComfyUI's PromptServer: a client id and somewhere to send messages."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


class PromptRefused(Exception):
    """ComfyUI's validation refused the prompt (exit status 2)."""


class ComfyRunner:
    """One configured ComfyUI in this process: its node classes loaded, a PromptExecutor with its cache."""

    def __init__(self, arguments: argparse.Namespace):
        set_up_comfyui(arguments.comfyui_dir, arguments.threads, arguments.verbose)
        import asyncio
        import folder_paths
        self.work = tempfile.mkdtemp(prefix="run_comfy_graph_")
        for kind, set_directory in (("output", folder_paths.set_output_directory),
                                    ("temp", folder_paths.set_temp_directory),
                                    ("input", folder_paths.set_input_directory)):
            os.makedirs(os.path.join(self.work, kind))
            set_directory(os.path.join(self.work, kind))
        models = os.path.abspath(arguments.models)
        folder_paths.add_model_folder_path("checkpoints", models, is_default=True)
        folder_paths.add_model_folder_path("loras", os.path.abspath(arguments.loras or models), is_default=True)
        folder_paths.add_model_folder_path("vae", os.path.abspath(arguments.vae or models), is_default=True)

        import comfy.model_management  # noqa: F401  (reads args now: CPU, fp32)
        import execution
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        self.asyncio, self.folder_paths, self.execution, self.nodes = asyncio, folder_paths, execution, nodes
        self.executor = execution.PromptExecutor(QuietServer(), cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0})

    def validate(self, prompt: dict) -> list[str]:
        """The output node ids ComfyUI would run; PromptRefused with ComfyUI's errors."""
        unknown = sorted({node["class_type"] for node in prompt.values()} - set(self.nodes.NODE_CLASS_MAPPINGS))
        if unknown:
            raise PromptRefused(f"node types this ComfyUI does not have: {', '.join(unknown)}")
        valid, error, outputs, node_errors = self.asyncio.run(
            self.execution.validate_prompt("run_comfy_graph", prompt, None))
        if not valid:
            raise PromptRefused(json.dumps({"error": error, "node_errors": node_errors}, indent=1, default=str))
        return outputs

    def run(self, prompt: dict, out: str) -> dict:
        """Validate and execute `prompt`; copy its first image to `out`."""
        started = time.perf_counter()
        prompt = with_image_output(prompt)
        outputs = self.validate(prompt)
        self.executor.execute(prompt, "run_comfy_graph", {}, outputs)
        if not self.executor.success:
            failures = [data for event, data in self.executor.status_messages if event == "execution_error"]
            raise RuntimeError(json.dumps(failures, indent=1, default=str))
        images = [image for node_id in outputs
                  for image in (self.executor.history_result["outputs"].get(node_id) or {}).get("images", [])]
        if not images:
            raise RuntimeError("ComfyUI ran the prompt but wrote no image")
        first = images[0]
        source = os.path.join(self.folder_paths.get_directory_by_type(first["type"]), first.get("subfolder", ""),
                              first["filename"])
        out = os.path.abspath(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(source, out)
        for image in images:
            os.remove(os.path.join(self.folder_paths.get_directory_by_type(image["type"]),
                                   image.get("subfolder", ""), image["filename"]))
        return {"out": out, "seconds": round(time.perf_counter() - started, 2), "images": len(images),
                "node_types": sorted({node["class_type"] for node in prompt.values()})}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def read_batch(path: str) -> dict[str, dict]:
    batch = json.load(open(path, encoding="utf-8"))
    if not isinstance(batch, dict) or not all(isinstance(p, dict) for p in batch.values()):
        raise SystemExit("--batch: a JSON object {name: API prompt} is needed")
    bad = [name for name in batch if not name or "/" in name or name.startswith(".")]
    if bad:
        raise SystemExit(f"--batch: names must be plain file names: {bad}")
    return batch


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    prompts = read_batch(arguments.batch) if arguments.batch else {"": read_prompt(arguments.prompt)}
    started = time.perf_counter()
    runner = ComfyRunner(arguments)
    setup = round(time.perf_counter() - started, 2)
    try:
        if arguments.validate_only:
            for name, prompt in prompts.items():
                runner.validate(with_image_output(prompt))
            print(json.dumps({"valid": True, "setup_seconds": setup}))
            return 0
        if not arguments.batch:
            print(json.dumps({**runner.run(prompts[""], arguments.out), "setup_seconds": setup}))
            return 0
        for name, prompt in prompts.items():  # one JSON line per picture, as it is made
            result = runner.run(prompt, os.path.join(arguments.out_dir, name + ".png"))
            print(json.dumps({"name": name, **result}), flush=True)
        print(json.dumps({"setup_seconds": setup, "seconds": round(time.perf_counter() - started, 2)}))
        return 0
    except PromptRefused as refused:
        print(refused, file=sys.stderr)
        return 2
    except RuntimeError as failure:
        print(failure, file=sys.stderr)
        return 1
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(main())
