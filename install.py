"""Run by the WebUI at every start (`python install.py`, before anything is imported).

Uncond Lab needs nothing the WebUI does not already ship (torch, safetensors, gradio 3.41.2 and the WebUI's own
k-diffusion), so this installs nothing and never pins a library the WebUI shares; it only says early what is
missing.
"""
import launch

for module in ("torch", "safetensors", "gradio"):
    if not launch.is_installed(module):
        print(f"[Uncond Lab] '{module}' is missing from this WebUI's environment; Uncond Lab will not load.")
