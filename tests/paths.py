"""Where the tests find the repository's data (the tests are not installed, so
they may look beside themselves; the node and its tools never do)."""

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
#: The shipped province configs: one folder per province (CONTRACTS §1).
CONFIG_DIR = REPOSITORY / "province_configs"
#: The development federation CA (certificate and key); not a node's folder.
CA_DIR = CONFIG_DIR / "federation-ca"


def config_file(code: str, root: Path = CONFIG_DIR) -> Path:
    """The ``province.toml`` of province ``code`` (below ``root``, a copy of CONFIG_DIR)."""
    return root / code / "province.toml"


def keys_dir(code: str, root: Path = CONFIG_DIR) -> Path:
    """The development keys folder of province ``code`` (below ``root``)."""
    return root / code / "keys"


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w-]", "", h.strip().lower().replace(" ", "-")) for h in headings}
