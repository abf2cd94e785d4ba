import sys
from pathlib import Path

# The extension's root, so `import lib_ext` works as it does inside a WebUI.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
