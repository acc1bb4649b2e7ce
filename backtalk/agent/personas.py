"""Switching persona mid-conversation: a function the LLM calls when asked."""

from __future__ import annotations

from collections.abc import Callable

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import LLMUpdateSettingsFrame
from pipecat.services.llm_service import FunctionCallParams, LLMService
from pipecat.services.openai.llm import OpenAILLMService

from backtalk.prompts import personas

__all__ = ["SET_PERSONA_TOOL_NAME", "register_persona_tool"]

SET_PERSONA_TOOL_NAME = "set_persona"


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
        on_change: Optional ``callable(persona)`` run after a switch (e.g. recording).

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
        delta = OpenAILLMService.Settings(system_instruction=instruction_for(persona))
        await params.llm.queue_frame(LLMUpdateSettingsFrame(delta=delta))
        if on_change is not None:
            on_change(persona)
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
