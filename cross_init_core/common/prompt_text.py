"""Prompt text that the nodes and the terminal client share (pure: no torch, no ComfyUI)."""

from __future__ import annotations

import re

# where the learned tokens go in a prompt (Cross-Init CLIP Text Encode's default placeholder, the eval prompts)
PLACEHOLDER = "<face>"
POSSESSIVE_STANDIN = "the person's"  # what "<face>'s" reads as once the token is gone

_POSSESSIVE = re.compile(re.escape(PLACEHOLDER) + r"(?:['\u2019]s\b|['\u2019](?!\w))")
_SPACE_BEFORE_CLOSING = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPENING = re.compile(r"([(\[])\s+")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_REPEATED_COMMAS = re.compile(r",(?:\s*,)+")
_LEADING = re.compile(r"^[\s,.;:!?]+")
_TRAILING = re.compile(r"[\s,;:]+$")


def scored_prompt(prompt: str) -> str:
    """The prompt as the prompt score sees it: the placeholder removed, spaces collapsed (the paper's protocol), and
    no fragment left behind: "<face>'s portrait" reads "the person's portrait" (not "'s portrait"), and no stray
    comma, empty bracket or space before punctuation stays where the placeholder was."""
    text = _POSSESSIVE.sub(POSSESSIVE_STANDIN, prompt)
    text = " ".join(text.replace(PLACEHOLDER, " ").split())
    text = _EMPTY_BRACKETS.sub("", text)
    text = _SPACE_AFTER_OPENING.sub(r"\1", text)
    text = _SPACE_BEFORE_CLOSING.sub(r"\1", text)
    text = _REPEATED_COMMAS.sub(",", text)
    text = _TRAILING.sub("", _LEADING.sub("", text))
    return " ".join(text.split())
