"""The pack's shape: a pure core, an import-light root, one source of truth for packaging."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes")


def test_core_imports_without_comfyui() -> None:
    """Every core module imports in a fresh interpreter where ComfyUI's modules cannot be found."""
    script = f"""
import importlib, pkgutil, sys
FORBIDDEN = {FORBIDDEN!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in FORBIDDEN:
            raise ImportError('core imported ComfyUI module ' + name)
sys.meta_path.insert(0, Block())
import sonic_guard
# __main__ modules are command-line entry points: importing one runs it.
names = [m.name for m in pkgutil.walk_packages(sonic_guard.__path__, 'sonic_guard.')
         if not m.name.endswith('.__main__')]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)
assert not leaked, leaked
print(len(names))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 5


def test_core_sources_never_name_comfyui() -> None:
    """A static check too: no import statement in the core names a ComfyUI module."""
    for path in (REPO / "sonic_guard").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path}: imports {name}"


def test_root_init_imports_without_comfyui() -> None:
    spec = importlib.util.spec_from_file_location("sonic_guard_pack_root", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web"
    assert callable(module.comfy_entrypoint)
    # Exporting both makes ComfyUI take the legacy path and never call the V3 entrypoint.
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")


def test_dependency_list_parses_and_follows_policy() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dynamic" not in pyproject["project"], "the registry's tools read static dependencies only"
    assert "comfyui" not in pyproject["project"]["name"].lower()
    assert any(c.startswith("Operating System") for c in pyproject["project"]["classifiers"])
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"] == ">=0.3.75"
    # The registry shows the icon from the repository's main branch: the file must exist at that path.
    assert comfy["Icon"].endswith("/main/docs/icon.png") and (REPO / "docs" / "icon.png").is_file()

    lines = [
        line.split(" #")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    requirements = {Requirement(line).name.lower(): Requirement(line) for line in lines}
    static = {Requirement(line).name.lower(): Requirement(line) for line in pyproject["project"]["dependencies"]}
    assert static == requirements, "pyproject.toml's dependencies and requirements.txt must list the same"
    for needed in ("nvidia-ml-py", "pyroscope-io", "pydub", "numpy", "prometheus-client", "av"):
        assert needed in requirements, needed
    assert "pynvml" not in requirements, "the pynvml package is a deprecated shim; depend on nvidia-ml-py"
    for host_owned in ("torch", "torchvision", "torchaudio"):
        assert host_owned not in requirements, f"{host_owned} comes from the host ComfyUI"
    marker = requirements["pyroscope-io"].marker
    assert marker is not None
    assert not marker.evaluate({"sys_platform": "win32"})
    assert marker.evaluate({"sys_platform": "linux"})


def test_web_directory_holds_only_extension_files() -> None:
    """ComfyUI loads every .js under the web directory; keep nothing else executable there."""
    web = REPO / "web"
    for path in web.rglob("*"):
        if path.is_file():
            assert path.suffix in {".js", ".md", ".css"}, path


def test_example_workflows_are_valid_json() -> None:
    for path in (REPO / "workflows").glob("*.json"):
        json.loads(path.read_text())
