"""Prompts as package data: personas (``<name>.md``) and the grounding rules.

A system instruction is a persona followed by ``grounding.md`` with the session's
videos filled in.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources

from backtalk.processors.retrieval import format_timestamp

__all__ = [
    "DEFAULT_PERSONA",
    "load_persona",
    "personas",
    "protected_texts",
    "system_instruction",
]

DEFAULT_PERSONA = "tutor"
_NOT_PERSONAS = {"grounding"}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")


def personas() -> list[str]:
    """Names of the personas shipped with Backtalk (the ``.md`` files here)."""
    return sorted(
        entry.name.removesuffix(".md")
        for entry in resources.files(__package__).iterdir()
        if entry.name.endswith(".md") and entry.name.removesuffix(".md") not in _NOT_PERSONAS
    )


def load_persona(name: str) -> str:
    """The persona prompt ``name``.

    Raises:
        ValueError: no such persona (the message lists the available ones).
    """
    if name not in personas():
        raise ValueError(f"unknown persona {name!r}; choose one of: {', '.join(personas())}")
    return _read(name).strip()


_RETRIEVAL_RULES = {
    "inject": (
        "Before each user message you receive transcript excerpts in a "
        "<transcript_excerpts> block, each marked with its video id and start and end "
        "time. Base your answer on them."
    ),
    "tool": (
        "Call search_video to look up what the video says before answering anything "
        "about its content (not needed for greetings or small talk). It returns "
        "transcript excerpts in a <transcript_excerpts> block, each marked with its video "
        "id and start and end time. Base your answer on them."
    ),
}


def system_instruction(
    videos: Sequence[tuple[str, float]],
    *,
    persona: str = DEFAULT_PERSONA,
    retrieval_mode: str = "inject",
) -> str:
    """The LLM's system instruction for a session.

    Args:
        videos: ``(title, duration_s)`` of each video in the session.
        persona: Persona name (see :func:`personas`).
        retrieval_mode: ``inject`` (excerpts arrive with each turn) or ``tool``
            (the model calls ``search_video``).

    Returns:
        Persona text followed by the grounding rules.
    """
    listing = "\n".join(
        f'- "{_quoted(title)}" ({format_timestamp(duration)} long)' for title, duration in videos
    )
    rules = (
        _read("grounding")
        .strip()
        .format(
            videos=listing,
            retrieval_rule=_RETRIEVAL_RULES[retrieval_mode],
            personas=", ".join(personas()),
        )
    )
    return load_persona(persona) + "\n\n" + rules


def protected_texts() -> list[str]:
    """Every prompt text the bot must never read out: personas, grounding rules."""
    return [load_persona(name) for name in personas()] + [
        _read("grounding"),
        *_RETRIEVAL_RULES.values(),
    ]


def _quoted(title: str) -> str:
    """A video title as data inside the system instruction: one line, markup escaped."""
    return html.escape(" ".join(title.split()), quote=True)
