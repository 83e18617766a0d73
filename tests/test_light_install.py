"""The README's test command on a machine without torch: nothing pulls torch in, torch tests skip with a reason."""
import os
import subprocess
import sys
import tomllib

from simulator.paths import REPO_ROOT

# Loaded first through PYTHONPATH: makes `import torch` fail as on a machine where it was never installed.
BLOCK_TORCH = '''
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
'''


def test_the_dev_extra_installs_no_torch_and_the_profile_extra_does():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(requirement.startswith("torch") for requirement in extras["dev"])
    assert any(requirement.startswith("torch") for requirement in extras["profile"])


def test_without_torch_its_test_modules_are_skipped_with_the_reason(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    command = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
               "tests/profiler/test_profiler_timing.py", "tests/profiler/test_profiler_grid.py"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO_ROOT}"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SKIPPED [1] tests/profiler/test_profiler_timing.py: torch is not installed" in done.stdout
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in done.stdout
    assert " passed, 1 skipped" in done.stdout  # the grid's tests need no torch and still run
