"""Loading safety, checked on the source: every torch.load passes weights_only=True, nothing unpickles with
pickle, and the only TorchScript load takes its path from the model folder (ModelPaths), never from a user input."""

from __future__ import annotations

import ast
from pathlib import Path

from comfy_host import REPO

from sonic_guard.models.checkpoint_paths import ModelPaths

PACK_SOURCES = sorted([*(REPO / "sonic_guard").rglob("*.py"), *(REPO / "nodes").rglob("*.py")])


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in PACK_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path, node))
    return found


def test_every_torch_load_is_weights_only() -> None:
    loads = _calls("torch.load")
    assert loads, "no torch.load found: the scan is broken"
    for path, call in loads:
        keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert keywords.get("weights_only") == "True", f"{path.name}:{call.lineno} torch.load without weights_only"


def test_nothing_unpickles_directly() -> None:
    assert not _calls("pickle.load") and not _calls("pickle.loads")


def test_torchscript_is_loaded_only_from_the_model_folder(tmp_path: Path) -> None:
    jit_loads = _calls("torch.jit.load")
    assert [path.name for path, _ in jit_loads] == ["yolo_detector.py"]
    # The detector's path comes from the model folder's layout, nothing else.
    (tmp_path / "yoloface_v5m.pt").write_bytes(b"x")
    assert ModelPaths.from_root(tmp_path).yoloface == tmp_path / "yoloface_v5m.pt"
    users = [path.name for path in PACK_SOURCES if "YoloFaceDetector(" in path.read_text(encoding="utf-8")]
    assert sorted(users) == ["choose_detector.py"], users
    source = (REPO / "sonic_guard" / "job.py").read_text(encoding="utf-8")
    assert "make_face_detector(models.face_detector_path)" in source
