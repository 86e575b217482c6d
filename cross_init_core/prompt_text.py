"""Prompt text that the nodes and the terminal client share (pure: no torch, no ComfyUI)."""

from __future__ import annotations

# where the learned tokens go in a prompt (Cross-Init CLIP Text Encode's default placeholder, the eval prompts)
PLACEHOLDER = "<face>"


def scored_prompt(prompt: str) -> str:
    """The prompt as the prompt score sees it: the placeholder removed, spaces collapsed (the paper's protocol)."""
    return " ".join(prompt.replace(PLACEHOLDER, " ").split())
