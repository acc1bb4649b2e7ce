"""The service factories against the loopback fakes: what goes over the wire."""

from __future__ import annotations

from fakes import FakeOpenAI
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.openai.llm import OpenAILLMService

from backtalk.agent.services import DirectBodyOpenAILLMService, make_llm
from backtalk.config import Settings

SEARCH = FunctionSchema(
    name="search_video",
    description="Search the video's transcript.",
    properties={"query": {"type": "string", "description": "What to look for."}},
    required=["query"],
)


def conversation(turns: int) -> LLMContext:
    """A context with ``turns`` question/answer pairs, a retrieval message and a tool."""
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: what about épisode {i}?"})
        messages.append({"role": "assistant", "content": f"Answer {i} [t=1:0{i % 10}]."})
    messages.append(
        {"role": "user", "content": '<transcript_excerpts>"a" &amp; b</transcript_excerpts>'}
    )
    messages.append({"role": "user", "content": [{"type": "text", "text": "And the last one?"}]})
    return LLMContext(messages=messages, tools=ToolsSchema(standard_tools=[SEARCH]))


async def drain(llm: OpenAILLMService, context: LLMContext) -> None:
    async for _ in await llm.get_chat_completions(context):
        pass


async def test_direct_body_sends_the_same_request_as_pipecats_service() -> None:
    """Messages and tools moved out of the SDK's transform reach the server unchanged."""
    settings = OpenAILLMService.Settings(model="gpt-4o-mini", system_instruction="Be brief.")
    context = conversation(30)
    with FakeOpenAI(reply="Sure.") as fake:
        for cls in (OpenAILLMService, DirectBodyOpenAILLMService):
            await drain(cls(api_key="sk-test", base_url=fake.base_url, settings=settings), context)
        stock, direct = fake.chat_requests
    assert direct == stock
    assert len(direct["messages"]) == 1 + 60 + 2  # the system instruction comes first
    assert direct["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [t["function"]["name"] for t in direct["tools"]] == ["search_video"]


async def test_direct_body_keeps_extra_body_from_settings() -> None:
    """``Settings.extra`` ``extra_body`` fields still reach the server next to the messages."""
    settings = OpenAILLMService.Settings(
        model="gpt-4o-mini", extra={"extra_body": {"metadata": {"app": "backtalk"}}}
    )
    with FakeOpenAI(reply="Sure.") as fake:
        llm = DirectBodyOpenAILLMService(
            api_key="sk-test", base_url=fake.base_url, settings=settings
        )
        await drain(llm, LLMContext(messages=[{"role": "user", "content": "hi"}]))
        (request,) = fake.chat_requests
    assert request["metadata"] == {"app": "backtalk"}
    assert request["messages"] == [{"role": "user", "content": "hi"}]
    assert "tools" not in request


def test_make_llm_uses_the_direct_body_service() -> None:
    llm = make_llm(Settings(openai_api_key="sk-test"), "Be brief.")
    assert isinstance(llm, DirectBodyOpenAILLMService)
