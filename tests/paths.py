"""Where the tests find the repository's data (the tests are not installed, so
they may look beside themselves; the node and its tools never do)."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
#: The shipped province configs, with their development keys.
CONFIG_DIR = REPOSITORY / "province_configs"
KEYS_DIR = CONFIG_DIR / "keys"
