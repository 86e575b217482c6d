"""Training captions: the reference's 81 templates (data/caption_templates.txt, MIT, see data/README.md).

Each template's `{}` is filled with `face of {} person`; the inner `{}` is where the learned tokens go.
Repeated templates are kept, so a uniform draw over the tuple weighs them as the reference does.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES_FILE = Path(__file__).resolve().parents[1] / "data" / "caption_templates.txt"
SUBJECT = "face of {} person"


def read_caption_templates(path: Path = TEMPLATES_FILE) -> tuple[str, ...]:
    """One template per non-blank line, each with exactly one `{}`, filled with SUBJECT."""
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.count("{}") != 1:
            raise ValueError(f"{path}:{number}: a caption template needs exactly one '{{}}', got {line!r}")
        templates.append(line.replace("{}", SUBJECT))
    return tuple(templates)


CAPTION_TEMPLATES: tuple[str, ...] = read_caption_templates()
