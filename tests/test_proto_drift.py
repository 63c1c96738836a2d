"""The committed ``yrd`` package is exactly what ``make proto`` generates from ``proto/``."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TestGeneratedCodeMatchesContract:
    """Editing a .proto without running `make proto` fails here."""

    def test_no_drift(self, tmp_path: Path) -> None:
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            import gen_protos
        finally:
            sys.path.pop(0)
        gen_protos.generate(tmp_path)
        generated = tmp_path / "yrd"
        committed = ROOT / "yrd"
        problems: list[str] = []

        def compare(cmp: filecmp.dircmp[str], prefix: str) -> None:
            problems.extend(f"only generated: {prefix}{n}" for n in cmp.left_only)
            problems.extend(
                f"only committed: {prefix}{n}" for n in cmp.right_only if n != "__pycache__"
            )
            problems.extend(f"differs: {prefix}{n}" for n in cmp.diff_files)
            for name, sub in cmp.subdirs.items():
                if name != "__pycache__":
                    compare(sub, f"{prefix}{name}/")

        compare(filecmp.dircmp(generated, committed), "yrd/")
        assert problems == [], "run `make proto` and commit the result:\n" + "\n".join(problems)

    def test_every_field_is_documented(self) -> None:
        """Every message field in proto/ has a comment above it (unit and format)."""
        undocumented = []
        for proto in sorted((ROOT / "proto").rglob("*.proto")):
            lines = proto.read_text(encoding="utf-8").splitlines()
            in_message = 0
            for i, line in enumerate(lines):
                stripped = line.strip()
                if stripped.startswith("message "):
                    in_message += 1
                elif stripped == "}" and in_message:
                    in_message -= 1
                elif (
                    in_message
                    and stripped.endswith(";")
                    and "=" in stripped
                    and not (stripped.startswith(("//", "option", "reserved")))
                ):
                    previous = lines[i - 1].strip()
                    if not previous.startswith("//") and "oneof" not in previous:
                        undocumented.append(f"{proto.relative_to(ROOT)}:{i + 1}: {stripped}")
        assert undocumented == [], "fields without a comment above them:\n" + "\n".join(
            undocumented
        )
