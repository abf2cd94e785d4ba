"""The README's pictures stay true: each one it shows is in docs/images/, small, and made from the running WebUI by
the browser test (tests/webui/test_ui_browser.py, `readme_picture(..., "<name>")`), which fails when it can no
longer be made; no picture lies there unused."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
MAX_TOTAL_BYTES = 600_000


def shown_in_readme() -> set[str]:
    return set(re.findall(r"\(docs/images/([\w-]+)\.png\)", (ROOT / "README.md").read_text()))


def made_by_the_browser_test() -> set[str]:
    source = (ROOT / "tests" / "webui" / "test_ui_browser.py").read_text()
    return set(re.findall(r"readme_picture\([^\n]*?\"([\w-]+)\"[,)]", source))


def test_every_picture_the_readme_shows_is_made_by_the_browser_test():
    shown = shown_in_readme()
    assert shown, "the README shows no picture"
    assert shown <= made_by_the_browser_test(), shown - made_by_the_browser_test()


def test_every_picture_is_there_small_and_used():
    files = {path.stem: path for path in IMAGES.glob("*.png")}
    assert set(files) == shown_in_readme()
    for path in files.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert sum(path.stat().st_size for path in files.values()) < MAX_TOTAL_BYTES
