"""Switching persona mid-conversation: a function the LLM calls when asked."""

from __future__ import annotations

from collections.abc import Callable

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import LLMUpdateSettingsFrame
from pipecat.services.llm_service import FunctionCallParams, LLMService
from pipecat.services.openai.llm import OpenAILLMService

from backtalk.prompts import personas

__all__ = ["SET_PERSONA_TOOL_NAME", "persona_switch", "register_persona_tool"]

SET_PERSONA_TOOL_NAME = "set_persona"


def persona_switch(instruction_for: Callable[[str], str], persona: str) -> LLMUpdateSettingsFrame:
    """The frame that makes the LLM speak as ``persona`` from its next answer on.

    It swaps the system instruction (persona + the same grounding rules) and keeps
    the conversation's history.

    Args:
        instruction_for: Builds the full system instruction for a persona name.
        persona: One of :func:`backtalk.prompts.personas`.

    Raises:
        ValueError: ``persona`` is not a known persona.
    """
    if persona not in personas():
        raise ValueError(f"unknown persona {persona!r}; choose one of {', '.join(personas())}")
    delta = OpenAILLMService.Settings(system_instruction=instruction_for(persona))
    return LLMUpdateSettingsFrame(delta=delta)


def register_persona_tool(
    llm: LLMService, instruction_for: Callable[[str], str], *, on_change=None
) -> FunctionSchema:
    """Register ``set_persona(persona)`` on ``llm`` and return its schema.

    The handler swaps the LLM's system instruction for the chosen persona's (the
    grounding rules stay the same) with an ``LLMUpdateSettingsFrame``, so the
    conversation's history is kept.

    Args:
        llm: The LLM service.
        instruction_for: Builds the full system instruction for a persona name.
        on_change: Optional ``async callable(persona)`` run after a switch (e.g. to
            tell the client).

    Returns:
        The schema to put in the context's tools.
    """
    names = personas()

    async def set_persona(params: FunctionCallParams) -> None:
        persona = str(params.arguments.get("persona", ""))
        if persona not in names:
            await params.result_callback(
                {"ok": False, "error": f"unknown persona; choose one of {', '.join(names)}"}
            )
            return
        await params.llm.queue_frame(persona_switch(instruction_for, persona))
        if on_change is not None:
            await on_change(persona)
        await params.result_callback(
            {"ok": True, "persona": persona, "note": "Speak in the new style from now on."}
        )

    llm.register_function(SET_PERSONA_TOOL_NAME, set_persona)
    return FunctionSchema(
        name=SET_PERSONA_TOOL_NAME,
        description="Change how you talk when the user asks for a different style.",
        properties={
            "persona": {
                "type": "string",
                "enum": names,
                "description": (
                    "tutor: patient and clear; casual: relaxed and chatty; "
                    "analyst: precise, critical."
                ),
            }
        },
        required=["persona"],
    )
