"""The README's Python examples run as written (a client example against a real
`shoal serve` process)."""

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
URL = "http://127.0.0.1:6333"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shoal_serve(tmp_path):
    """A `shoal serve` process on a free port; yields its URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("shoal")
    proc = subprocess.Popen([str(exe), "serve", str(tmp_path / "served.db"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shoal serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    if URL in code:
        code = code.replace(URL, request.getfixturevalue("shoal_serve"))
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_readme_has_examples():
    assert len(BLOCKS) >= 3 and any(URL in b for b in BLOCKS)


def test_readme_names_only_what_exists():
    """Drift between the README and the code: every ``shoal.NAME`` it mentions exists, every
    ``.py`` file its layout names is in the tree, and every method of the collection contract
    is documented."""
    import importlib
    import re
    from pathlib import Path

    import shoal
    from shoal.db.contract import METHODS

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    for name in sorted(set(re.findall(r"\bshoal\.([A-Za-z_][A-Za-z0-9_]*)", text))):
        if not hasattr(shoal, name):
            importlib.import_module(f"shoal.{name}")  # a module (shoal.ray, shoal.server, ...)
    tree = {p.name for p in root.rglob("*.py") if ".venv" not in p.parts}
    layout = text[text.index("## Layout"):]
    for file in sorted(set(re.findall(r"\b([a-z_]+\.py)\b", layout))):
        assert file in tree, f"README's layout names {file}, which is not in the tree"
    for method in METHODS:
        assert f"{method}(" in text or f"`{method}`" in text, f"README does not document {method}"
