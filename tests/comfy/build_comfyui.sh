#!/usr/bin/env bash
# Build the ComfyUI the tests in tests/comfy run: release v0.8.0 (commit fc0cb10b) in DEST/ComfyUI, its Python 3.11
# environment in DEST/venv, with the WebUIs' torch (2.14.1) and ComfyUI's requirements less its UI-only packages
# (comfyui-frontend-package, comfyui-workflow-templates, comfyui-embedded-docs: the tests never start the server)
# plus `requests`, which server.py imports and the frontend package would have brought.
#
#   tests/comfy/build_comfyui.sh SOURCE DEST
#
# SOURCE: a git repository holding that commit (a clone of ComfyUI, or its URL). PYTHON: a python3.11
# (default: python3.11 on PATH). TORCH_SITE: a site-packages that already has torch 2.14.1 for this Python (e.g. a
# WebUI's venv): its torch stack is hard-linked instead of downloaded (about 5 GB less on the same disk).
# Nothing of ComfyUI lands in this repository.
set -euo pipefail
SOURCE=${1:?usage: build_comfyui.sh SOURCE DEST}
DEST=${2:?usage: build_comfyui.sh SOURCE DEST}
COMMIT=fc0cb10b  # "ComfyUI v0.8.0"
PYTHON=${PYTHON:-python3.11}

mkdir -p "$DEST"
if [ ! -d "$DEST/ComfyUI/.git" ]; then
    git clone --no-checkout "$SOURCE" "$DEST/ComfyUI"
fi
git -C "$DEST/ComfyUI" checkout -q -f "$COMMIT"
grep -q '__version__ = "0.8.0"' "$DEST/ComfyUI/comfyui_version.py"

"$PYTHON" -m venv "$DEST/venv"
SITE=$("$DEST/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "${TORCH_SITE:-}" ]; then
    for entry in "$TORCH_SITE"/{torch,torchgen,functorch,torchvision,torchvision.libs,triton,nvidia,cuda} \
                 "$TORCH_SITE"/{torch-,torchvision-,triton-,nvidia_,cuda_}*.dist-info; do
        [ -e "$entry" ] && cp -al "$entry" "$SITE/"
    done
fi
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$DEST/pin.txt"
grep -vE '^(comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)' \
    "$DEST/ComfyUI/requirements.txt" > "$DEST/requirements-nodes.txt"
"$DEST/venv/bin/pip" install -r "$DEST/requirements-nodes.txt" requests -c "$DEST/pin.txt"
"$DEST/venv/bin/python" -c "import torch; print('ComfyUI v0.8.0 with torch', torch.__version__)"
