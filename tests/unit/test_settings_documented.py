"""Every setting is in the README's configuration table, and nothing there is made up."""

import re
from pathlib import Path

from polder.common.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> set[str]:
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `POLDER_")]
    return {
        name for row in rows for name in re.findall(r"`POLDER_([A-Z0-9_]+)`", row.split("|")[1])
    }


def test_every_setting_is_in_the_configuration_table() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert documented() == fields, {
        "undocumented": fields - documented(),
        "not settings": documented() - fields,
    }
