"""The package as users get it: a wheel and an sdist built from this repository, the wheel installed into
a fresh virtualenv (no system site-packages, nothing of the work tree on its path), then used there: the
callback imports, a tiny fit logs pictures, and the real ``tensorboard`` command of that virtualenv finds
the Attention tab and serves every one of its static files.

The virtualenv gets the torch that constraints.txt pins (the CPU build that lies on disk, so nothing
large is downloaded) first, as a user who already has torch; then the wheel, without constraints: its
requirements must keep that torch.
Deselect with ``-m "not packaging"`` (about a minute and a half on two cores).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "lightning_attnviz" / "tab" / "static"
PLUGIN = "lightning_attnviz.tab.plugin:AttentionPlugin"


def _source_version() -> str:
    tree = ast.parse((ROOT / "lightning_attnviz" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no __version__ in lightning_attnviz/__init__.py")


def _pinned_torch() -> str:
    (pin,) = re.findall(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), flags=re.M)
    return pin


def _clean_env() -> dict[str, str]:
    """This environment without anything that would put the work tree or another env on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from that sdist (``python -m build``'s default)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed, torch pinned as in the test setup."""
    where = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", str(where)], cwd=dist)
    (wheel,) = dist.glob("*.whl")
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, f"torch=={_pinned_torch()}"], cwd=dist)  # the torch a user already has
    _run([*pip, str(wheel)], cwd=dist)  # as users install it: no constraints, torch must stay
    return where


def test_wheel_and_sdist_carry_the_package_data_and_honest_metadata(dist):
    version = _source_version()
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"lightning_attnviz-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"lightning_attnviz-{version}.dist-info"
        meta = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "lightning_attnviz/py.typed" in names
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("lightning_attnviz/tab/static/")}
    assert shipped == {p.name for p in STATIC.iterdir()}  # every frontend file, nothing else
    assert not [n for n in names if n.startswith("tests/")]
    requires = dict(
        re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line.removeprefix("Requires-Dist: ")).groups()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    )
    assert requires["torch"] == ">=2.4"  # a floor, no cap: users keep the torch they have
    assert requires["tensorboard"] == ">=2.21"  # the first release that imports without pkg_resources
    assert f"Version: {version}\n" in meta
    assert re.search(rf"attnviz\s*=\s*{re.escape(PLUGIN)}", entry_points)
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for needed in (
        "pyproject.toml",
        "README.md",
        "lightning_attnviz/py.typed",
        "lightning_attnviz/tab/plugin.py",
    ):
        assert needed in members, needed
    assert {f"lightning_attnviz/tab/static/{p.name}" for p in STATIC.iterdir()} <= members


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers.get("Content-Type", "")


def _wait_for_json(url: str, ready, seconds: float = 90) -> object:
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:  # the server starts, then loads event files in the background
        try:
            last = json.loads(_get(url)[0])
            if ready(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never became ready; last answer {last!r}")


def test_installed_wheel_fits_logs_pictures_and_serves_the_tab(venv, tmp_path):
    probe = tmp_path / "probe.py"
    shutil.copy(ROOT / "tests" / "packaging_probe.py", probe)
    python = venv / "bin" / "python"
    facts = json.loads(_run([str(python), str(probe), str(tmp_path / "logs")], cwd=tmp_path).splitlines()[-1])

    # everything came from the virtualenv, nothing from the work tree or the test environment
    assert facts["prefix"] == str(venv) and facts["base_prefix"] != str(venv)
    for key in ("package_file", "torch_file"):
        assert facts[key].startswith(str(venv)) and not facts[key].startswith(str(ROOT)), facts[key]
    assert facts["torch"].split("+")[0] == _pinned_torch()  # installing the package kept it
    assert facts["version"] == facts["dist_version"] == _source_version()
    assert facts["py_typed"]
    assert facts["static"] == sorted(p.name for p in STATIC.iterdir())
    assert ["attnviz", PLUGIN] in facts["entry_points"]

    # the tiny fit drew its heatmaps: two samples, one MultiheadAttention, at the one capture step
    heatmaps = {tag: steps for tag, steps in facts["images"].items() if tag.endswith("/heatmap")}
    assert set(heatmaps) == {f"attention/sample_{s}/attn/heatmap" for s in range(2)}
    for steps in heatmaps.values():
        ((step, width, height),) = steps
        assert step == 1 and width > 200 and height > 200

    # the virtualenv's own `tensorboard` command finds the tab and serves its files
    port = _free_port()
    cmd = [str(venv / "bin" / "tensorboard"), "--logdir", str(tmp_path / "logs"), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        listing = _wait_for_json(
            f"{base}/plugins_listing", lambda body: body.get("attnviz", {}).get("enabled")
        )
        tab = listing["attnviz"]
        assert tab["tab_name"] == "Attention"
        # TensorBoard opens the tab in a frame whose page imports the entry module from the plugin's route
        entry = "/data/plugin/attnviz/static/index.js"
        assert tab["loading_mechanism"] == {"type": "IFRAME", "module_path": entry}
        frame, _ = _get(f"{base}/plugin_entry.html?name=attnviz")
        assert b'<base href="plugin/attnviz/"' in frame and b'import("./static/index.js")' in frame
        assert _get(f"http://127.0.0.1:{port}{entry}")[0] == (STATIC / "index.js").read_bytes()
        for source in STATIC.iterdir():
            if source.suffix not in (".js", ".css"):
                continue  # package.json marks the modules for node's test runner; never served
            body, content_type = _get(f"{base}/plugin/attnviz/static/{source.name}")
            assert body == source.read_bytes(), source.name
            assert content_type.startswith("text/javascript" if source.suffix == ".js" else "text/css")
        runs = _wait_for_json(f"{base}/plugin/attnviz/runs", lambda body: bool(body.get("tb/version_0")))
        assert set(runs["tb/version_0"]) == {"sample_0/attn", "sample_1/attn"}
    finally:
        server.terminate()
        server.wait(timeout=20)
