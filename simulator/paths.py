"""Where the project's shipped files live (the repository root of an editable install)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
DATA_DIR = REPO_ROOT / "data"
PROFILES_DIR = DATA_DIR / "profiles"
TRACES_DIR = DATA_DIR / "traces"
