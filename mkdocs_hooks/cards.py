"""MkDocs hook: the model card of each shipped model as a page of the site, `models/<name>.md`.

The cards are written by `training.model_card` into each export's `assets.extra/`, beside their
figures. The page is made from the newest version that has a card, at build time, and its
figures are added from the same folder, so the site shows exactly what was shipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<name>[\w.-]+\.png)\)")


def newest_cards() -> dict[str, Path]:
    """Each model's newest MODEL_CARD.md, by model name."""
    cards = sorted(ROOT.glob("models/*/*/assets.extra/MODEL_CARD.md"), key=lambda p: int(p.parts[-3]))
    return {card.parts[-4]: card for card in cards}  # the newest version last, so it stays


def on_files(files, config):
    for name, card in newest_cards().items():
        version = card.parts[-3]
        original = card.read_text()
        text = FIGURE.sub(rf"![\g<alt>]({name}/\g<name>)", original)
        note = (
            f"\n\n<small>The card of `models/{name}/{version}/assets.extra/MODEL_CARD.md`, as "
            "`training.model_card` wrote it when the version was exported.</small>\n"
        )
        files.append(File.generated(config, f"models/{name}.md", content=text + note))
        for figure in sorted({m["name"] for m in FIGURE.finditer(original)}):
            path = str(card.parent / figure)
            files.append(File.generated(config, f"models/{name}/{figure}", abs_src_path=path))
    return files
