"""Dependencies point one way: services -> runtime -> SDK, and the CLI on top of them all."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.support.paths import REPO

# Folder -> (its package, the Rewind packages it may import).
LAYERS = {
    "rewind": ("rewind", {"rewind"}),
    "runtime": ("rewind_runtime", {"rewind", "rewind_runtime"}),
    "services/buffer": ("rewind_buffer", {"rewind", "rewind_runtime", "rewind_buffer"}),
    "services/checkpoint": ("rewind_checkpoint", {"rewind", "rewind_runtime", "rewind_checkpoint"}),
    "services/trainer": ("rewind_trainer", {"rewind", "rewind_runtime", "rewind_trainer"}),
}
REWIND_PACKAGES = {"rewind", "rewind_runtime", "rewind_cli", "rewind_buffer", "rewind_checkpoint", "rewind_trainer"}


def imported_packages(path) -> set[str]:
    """Top-level Rewind packages a module imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & REWIND_PACKAGES


@pytest.mark.parametrize("folder", LAYERS)
def test_no_module_imports_a_layer_above_it(folder):
    package, allowed = LAYERS[folder]
    wrong = {str(path.relative_to(REPO)): sorted(imported_packages(path) - allowed)
             for path in (REPO / folder).rglob("*.py") if imported_packages(path) - allowed}
    assert not wrong, f"{package} may import only {sorted(allowed)}: {wrong}"


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.strip().splitlines()[-1].split())


def test_import_rewind_loads_no_service_and_no_torch():
    loaded = _modules_after("import rewind")
    assert "torch" not in loaded
    assert not {m for m in loaded if m.split(".")[0] in REWIND_PACKAGES - {"rewind"}}


def test_the_sdk_names_load_on_first_use():
    loaded = _modules_after("import rewind\nrewind.CheckpointClient\nrewind.TrainerClient\nrewind.errors")
    assert "torch" not in loaded and "rewind.checkpoint_client" in loaded
    # BufferClient loads torch when it first encodes an episode or decodes a batch.
    assert "torch" not in _modules_after("import rewind\nrewind.BufferClient")
    assert "torch" in _modules_after("from rewind import buffer_client\nbuffer_client._buffer_messages()")


def test_the_checkpoint_service_loads_no_torch():
    """It moves snapshots, blocks and files as bytes; torch would cost every start of it (a trainer's local
    services, each test's) two seconds of imports."""
    loaded = _modules_after("import rewind_checkpoint.server, rewind_checkpoint.api, rewind_cli.checkpoint")
    assert "torch" not in loaded and "rewind_checkpoint.pulls" in loaded and "rewind_checkpoint.restore" in loaded


def test_train_is_provided_by_the_trainer_through_an_entry_point():
    loaded = _modules_after("import rewind\nassert rewind.train.__module__ == 'rewind_trainer.api'")
    assert "rewind_trainer.api" in loaded
    result = subprocess.run([sys.executable, "-c", "import rewind; rewind.no_such_name"], capture_output=True,
                            text=True, cwd=REPO)
    assert "module 'rewind' has no attribute 'no_such_name'" in result.stderr
