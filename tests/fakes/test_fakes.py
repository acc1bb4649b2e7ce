"""The loopback fakes work with the real openai SDK, deepgram-sdk and Pipecat services."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import openai
import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.listen.v2.types import (
    ListenV2ConfigureSuccess,
    ListenV2Connected,
    ListenV2FatalError,
    ListenV2TurnInfo,
)
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.tests.utils import SleepFrame, run_test

from . import FakeDeepgram, FakeOpenAI, FakeReply, fake_embedding

pytestmark = pytest.mark.integration

SPEECH_WAV = Path("/work/shared/fixtures/audio/q1_what_is_learning_rate.wav")
SPEECH_TEXT = "What does the speaker say about choosing the learning rate?"


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_deepgram():
    with FakeDeepgram() as fake:
        yield fake


def load_speech() -> tuple[bytes, int]:
    """PCM16 mono audio of a spoken question and its sample rate (Hz)."""
    with wave.open(str(SPEECH_WAV)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.readframes(w.getnframes()), w.getframerate()


def chunks(pcm: bytes, sample_rate: int, secs: float = 0.02) -> list[bytes]:
    step = int(sample_rate * secs) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- OpenAI: embeddings -----------------------------------------------------------------


def test_embeddings_with_sync_sdk(fake_openai):
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    texts = ["the learning rate controls step size", "choosing a learning rate", "pizza dough"]

    first = client.embeddings.create(model="text-embedding-3-small", input=texts)
    again = client.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )

    # The SDK asks for base64 by default and decodes it; float gives the same numbers.
    assert fake_openai.embedding_requests[0]["encoding_format"] == "base64"
    vectors = [d.embedding for d in first.data]
    assert [d.embedding for d in again.data] == vectors == [fake_embedding(t) for t in texts]
    assert all(len(v) == 1536 and abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert first.usage.total_tokens > 0 and first.model == "text-embedding-3-small"

    small = client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=256)
    assert len(small.data[0].embedding) == 256

    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    assert err.value.body["param"] == "input"
    assert fake_openai.auth_headers == ["Bearer sk-test"] * 4


async def test_embeddings_with_async_sdk(fake_openai):
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test")
    result = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.data[0].embedding == fake_embedding("hello")


def test_injected_failures_and_missing_auth(fake_openai):
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    fake_openai.set_fail(1, 429)
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="a")
    client.embeddings.create(model="text-embedding-3-small", input="a")  # next one succeeds
    assert len(fake_openai.embedding_requests) == 2

    request = urllib.request.Request(
        f"{fake_openai.base_url}/embeddings", data=b'{"input": "a"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 401
    assert json.loads(err.value.read())["error"]["type"] == "invalid_request_error"


# -- OpenAI: chat completions -----------------------------------------------------------


async def test_chat_fault_knobs(fake_openai):
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]

    async def ask() -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    # The next chat requests fail with a status and Retry-After; embeddings are untouched.
    fake_openai.fail_chat(2, 429, retry_after_s=1.5)
    await client.embeddings.create(model="text-embedding-3-small", input="a")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as err:
            await ask()
        assert err.value.response.headers["retry-after"] == "1.5"
    assert await ask() == "Sure. The video covers that."

    # Stalls: the first token (after the headers, or the headers too) comes late.
    for before_headers in (False, True):
        fake_openai.stall_chat(1, 0.3, before_headers=before_headers)
        started = time.monotonic()
        assert await ask() == "Sure. The video covers that."
        assert time.monotonic() - started >= 0.3
    assert len(fake_openai.chat_requests) == len(fake_openai.chat_request_times) == 5
    times = fake_openai.chat_request_times
    assert times == sorted(times)


async def test_openai_llm_service_streams_the_reply(fake_openai):
    llm = OpenAILLMService(api_key="sk-test", base_url=fake_openai.base_url)
    context = LLMContext(messages=[{"role": "user", "content": "hi"}])

    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context=context)])

    text = [f.text for f in down if isinstance(f, LLMTextFrame)]
    assert len(text) > 1 and "".join(text) == "Sure. The video covers that."
    request = fake_openai.chat_requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert {"role": "user", "content": "hi"} in request["messages"]


async def test_openai_llm_service_runs_a_tool_call():
    def reply(body: dict) -> str | FakeReply:
        if body["messages"][-1]["role"] == "tool":
            return f"It is {json.loads(body['messages'][-1]['content'])['weather']}."
        args = {"city": "Paris", "unit": "celsius"}
        return FakeReply(tool_calls=[{"name": "get_weather", "arguments": args}])

    calls = []

    async def get_weather(params):
        calls.append(dict(params.arguments))
        await params.result_callback({"weather": "sunny"})

    tools = ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name="get_weather",
                description="Weather in a city.",
                properties={"city": {"type": "string"}, "unit": {"type": "string"}},
                required=["city"],
            )
        ]
    )
    context = LLMContext(tools=tools)
    user, assistant = LLMContextAggregatorPair(context)
    with FakeOpenAI(reply=reply) as fake:
        llm = OpenAILLMService(api_key="sk-test", base_url=fake.base_url)
        llm.register_function("get_weather", get_weather)
        message = {"role": "user", "content": "Weather in Paris?"}
        down, _ = await run_test(
            Pipeline([user, llm, assistant]),
            frames_to_send=[
                LLMMessagesAppendFrame(messages=[message], run_llm=True),
                SleepFrame(0.5),
            ],
        )
        requests = fake.chat_requests

    assert calls == [{"city": "Paris", "unit": "celsius"}]
    assert requests[0]["tools"][0]["function"]["name"] == "get_weather"
    # The result went back to the model, which then answered in text.
    assert len(requests) == 2 and requests[1]["messages"][-1]["role"] == "tool"
    assert context.get_messages()[-1] == {"role": "assistant", "content": "It is sunny."}


async def test_abandoned_stream_is_counted():
    with FakeOpenAI(reply="one two three four five six", token_interval_s=0.1) as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test")
        stream = await client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "count"}], stream=True
        )
        async for _chunk in stream:
            break
        await stream.close()
        for _ in range(50):
            if fake.cancelled_streams:
                break
            await asyncio.sleep(0.02)
        assert fake.cancelled_streams == 1


def test_non_streaming_completion(fake_openai):
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test")
    result = client.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
    )
    assert result.choices[0].message.content == "Sure. The video covers that."
    assert fake_openai.cancelled_streams == 0


# -- Deepgram: STT ----------------------------------------------------------------------


async def test_deepgram_stt_service_transcribes_queued_text(fake_deepgram):
    pcm, rate = load_speech()
    fake_deepgram.queue_transcript(SPEECH_TEXT)
    stt = DeepgramSTTService(api_key="dg-test", base_url=fake_deepgram.base_url, sample_rate=rate)
    silence = bytes(int(rate * 0.3) * 2)
    audio = [InputAudioRawFrame(c, rate, 1) for c in chunks(pcm + silence, rate)]

    down, _ = await run_test(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *audio,
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.3),
        ],
    )

    interims = [f.text for f in down if isinstance(f, InterimTranscriptionFrame)]
    finals = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert finals == [SPEECH_TEXT]
    assert interims and all(SPEECH_TEXT.startswith(t) and t != SPEECH_TEXT for t in interims)
    assert fake_deepgram.listen_connections == 1
    assert fake_deepgram.listen_queries[0]["sample_rate"] == str(rate)
    assert {"type": "Finalize"} in fake_deepgram.listen_control
    assert fake_deepgram.audio_bytes_received == len(pcm + silence)
    assert fake_deepgram.auth_headers == ["Token dg-test"]
    assert fake_deepgram.pending_transcripts == []


async def test_listen_protocol_endpointing_finalize_and_close(fake_deepgram):
    pcm, rate = load_speech()
    url = f"{fake_deepgram.base_url}/v1/listen?encoding=linear16&sample_rate={rate}"
    headers = {"Authorization": "Token dg-test"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        # Speech then 1 s of silence, no Finalize: the endpointer ends the utterance.
        for chunk in chunks(pcm + bytes(rate * 2), rate, secs=0.1):
            await ws.send(chunk)
        results = []
        while not results or not results[-1]["is_final"]:
            results.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
        final = results[-1]
        assert final["speech_final"] and not final["from_finalize"]
        assert final["channel"]["alternatives"][0]["transcript"] == ""  # nothing queued
        assert fake_deepgram.unscripted_utterances == 1

        await ws.send(json.dumps({"type": "Finalize"}))  # no speech since: empty final
        empty = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert empty["is_final"] and empty["from_finalize"] and not empty["speech_final"]

        await ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 2))["type"] == "Metadata"


async def test_websockets_require_authorization(fake_deepgram):
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(f"{fake_deepgram.base_url}/v1/speak"):
            pass
    assert err.value.response.status_code == 401


async def test_deepgram_fault_knobs(fake_deepgram):
    """Refused handshakes, flapping and dropped sockets, and the attempt counts."""
    listen = f"{fake_deepgram.base_url}/v1/listen?sample_rate=16000"
    speak = f"{fake_deepgram.base_url}/v1/speak?sample_rate=24000"
    headers = {"Authorization": "Token dg-test"}

    # The next 2 listen handshakes are refused (401, with Deepgram's dg-error), then
    # they are accepted again; other paths are not affected.
    fake_deepgram.refuse(2, path="/v1/listen")
    for _ in range(2):
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(listen, additional_headers=headers)
        assert err.value.response.status_code == 401
        assert err.value.response.headers["dg-error"] == "Invalid credentials."
    fake_deepgram.refuse(1, status=403)
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(speak, additional_headers=headers)
    assert err.value.response.status_code == 403

    async def accepted(n: int) -> None:
        # The client's handshake can complete before the server has registered the
        # socket (its thread may be behind on a busy machine): wait for the n-th.
        for _ in range(200):
            if fake_deepgram.listen_connections == n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the fake never registered the listen socket")

    async with websockets.connect(listen, additional_headers=headers) as ws:
        await accepted(1)
        # Dropped on command with a close code...
        assert fake_deepgram.drop("/v1/listen", code=1011) == 1
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 2)
        assert closed.value.rcvd.code == 1011
    async with websockets.connect(listen, additional_headers=headers) as ws:
        await accepted(2)
        # ...or, like a network failure, with none (1006), after 3 more messages.
        assert fake_deepgram.drop("/v1/listen", code=1006, after_messages=3) == 1
        for _ in range(3):
            await ws.send(bytes(640))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 2)
        assert closed.value.rcvd is None
        assert fake_deepgram.audio_bytes_received == 2 * 640
    assert fake_deepgram.connection_attempts("/v1/listen") == 4
    assert fake_deepgram.listen_connections == 2
    assert fake_deepgram.connection_attempts("/v1/speak") == 1

    # Accepted, then closed (1011) within the given time, for the next connection only.
    fake_deepgram.flap(1, after_s=0.2, path="/v1/speak")
    async with websockets.connect(speak, additional_headers=headers) as ws:
        started = time.monotonic()
        assert json.loads(await ws.recv())["type"] == "Metadata"
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 2)
        assert closed.value.rcvd.code == 1011 and time.monotonic() - started < 1.5
    async with websockets.connect(speak, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "Metadata"
        with pytest.raises(TimeoutError):  # stays open
            await asyncio.wait_for(ws.recv(), 0.5)
    assert fake_deepgram.connection_attempts("/v1/speak") == 3
    assert fake_deepgram.speak_connections == 2


# -- Deepgram: Flux STT (/v2/listen) ----------------------------------------------------

#: The SDK's model of each message Flux sends, by ``type``.
FLUX_MESSAGE_MODELS = {
    "Connected": ListenV2Connected,
    "TurnInfo": ListenV2TurnInfo,
    "ConfigureSuccess": ListenV2ConfigureSuccess,
    "Error": ListenV2FatalError,
}


def assert_valid_flux_messages(messages: list[dict]) -> None:
    """Each message (all from one connection) validates against the deepgram SDK's own
    pydantic type, and ``sequence_id`` counts the connection's messages from 0."""
    assert messages and messages[0]["type"] == "Connected"
    for i, message in enumerate(messages):
        FLUX_MESSAGE_MODELS[message["type"]].model_validate(message)
        assert message["sequence_id"] == i
        if message["type"] == "TurnInfo":
            assert ("trigger" in message) == (message["event"] == "EndOfTurn")
            assert message["transcript"] == " ".join(w["word"] for w in message["words"])


def split_speech(pcm: bytes, rate: int, pause_s: float) -> tuple[bytes, bytes]:
    """The fixture question cut in two at its middle, with ``pause_s`` of silence
    appended to the first part."""
    cut = len(pcm) // 4 * 2
    return pcm[:cut] + bytes(int(rate * pause_s) * 2), pcm[cut:]


def flux_client(fake: FakeDeepgram) -> AsyncDeepgramClient:
    """The deepgram SDK's async client, pointed at the fake."""
    environment = DeepgramClientEnvironment(
        base=fake.base_url.replace("ws://", "http://"),
        production=fake.base_url,
        agent=fake.base_url,
        agent_rest=fake.base_url.replace("ws://", "http://"),
    )
    return AsyncDeepgramClient(api_key="dg-test", environment=environment)


async def flux_session(fake: FakeDeepgram, audio: bytes, rate: int, **params) -> list:
    """Stream ``audio`` with the SDK's ``listen.v2`` in 80 ms chunks (Deepgram's
    recommendation for Flux), close the stream, and return every parsed message."""
    received = []
    async with flux_client(fake).listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate=rate, **params
    ) as socket:
        for chunk in chunks(audio, rate, secs=0.08):
            await socket.send_media(chunk)
        await socket.send_close_stream()
        async for message in socket:
            received.append(message)
    return received


def events(messages: list) -> list[tuple[str, str]]:
    """(event, transcript) of TurnInfo messages, without empty Updates."""
    return [
        (m.event, m.transcript)
        for m in messages
        if isinstance(m, ListenV2TurnInfo) and (m.event != "Update" or m.transcript)
    ]


def collapse_updates(seq: list[tuple[str, str]]) -> list[str]:
    """Event names, with runs of Updates shown once."""
    out: list[str] = []
    for name, _ in seq:
        if not (name == "Update" and out and out[-1] == "Update"):
            out.append(name)
    return out


async def test_flux_stt_service_eager_end_of_turn(fake_deepgram):
    pcm, rate = load_speech()
    fake_deepgram.queue_transcript(SPEECH_TEXT)
    stt = DeepgramFluxSTTService(
        api_key="dg-test",
        url=f"{fake_deepgram.base_url}/v2/listen",
        sample_rate=rate,
        enable_eager_end_of_turn=True,
    )
    audio = [InputAudioRawFrame(c, rate, 1) for c in chunks(pcm + bytes(rate * 2), rate)]

    down, _ = await run_test(stt, frames_to_send=[*audio, SleepFrame(0.5)])

    # The fake's side: StartOfTurn -> Updates -> EagerEndOfTurn -> EndOfTurn, one turn.
    sent = fake_deepgram.flux_events()
    assert collapse_updates(sent) == ["StartOfTurn", "Update", "EagerEndOfTurn", "EndOfTurn"]
    assert sent[-2:] == [("EagerEndOfTurn", SPEECH_TEXT), ("EndOfTurn", SPEECH_TEXT)]
    assert all(SPEECH_TEXT.startswith(t) and t != SPEECH_TEXT for e, t in sent[:-2])
    turn_infos = [m for m in fake_deepgram.flux_sent if m["type"] == "TurnInfo"]
    end = next(m for m in turn_infos if m["event"] == "EndOfTurn")
    assert end["trigger"] == "model" and end["turn_index"] == 0
    assert end["end_of_turn_confidence"] >= 0.7
    assert turn_infos[-1]["turn_index"] == 1  # the Updates after it belong to turn 1
    assert_valid_flux_messages(fake_deepgram.flux_sent)
    query = fake_deepgram.flux_queries[0]
    assert query["model"] == "flux-general-en" and query["encoding"] == "linear16"
    assert query["sample_rate"] == str(rate) and float(query["eager_eot_threshold"]) == 0.5
    assert fake_deepgram.auth_headers == ["Token dg-test"]
    assert fake_deepgram.pending_transcripts == []

    # Pipecat's side: interims, the eager transcript, then the final one, in order.
    kinds = (
        ProposedUserStartedSpeakingFrame,
        InterimTranscriptionFrame,
        EagerTranscriptionFrame,
        TranscriptionFrame,
        ProposedUserStoppedSpeakingFrame,
    )
    seen = [f for f in down if isinstance(f, kinds)]
    assert isinstance(seen[0], ProposedUserStartedSpeakingFrame)
    assert [type(f) for f in seen[-3:]] == [
        EagerTranscriptionFrame,
        TranscriptionFrame,
        ProposedUserStoppedSpeakingFrame,
    ]
    assert seen[-3].text == seen[-2].text == SPEECH_TEXT
    interims = [f.text for f in seen if isinstance(f, InterimTranscriptionFrame)]
    assert interims and all(SPEECH_TEXT.startswith(t) for t in interims)
    assert not any(isinstance(f, EagerEndOfTurnCancelFrame) for f in down)

    # Pipecat closed the stream the Flux way when the pipeline ended.
    for _ in range(50):
        if {"type": "CloseStream"} in fake_deepgram.flux_control:
            break
        await asyncio.sleep(0.02)
    assert fake_deepgram.flux_control == [{"type": "CloseStream"}]
    assert fake_deepgram.flux_audio_bytes_received == len(pcm) + rate * 2  # + 1 s of silence


async def test_flux_sdk_without_eager_threshold_has_no_eager_events(fake_deepgram):
    pcm, rate = load_speech()
    fake_deepgram.queue_transcript(SPEECH_TEXT)
    fake_deepgram.queue_transcript("Thanks.")
    silence = bytes(rate * 2)  # 1 s

    messages = await flux_session(fake_deepgram, silence + pcm + silence + pcm + silence, rate)

    assert isinstance(messages[0], ListenV2Connected)
    seq = events(messages)
    assert collapse_updates(seq) == ["StartOfTurn", "Update", "EndOfTurn"] * 2
    ends = [m for m in messages if isinstance(m, ListenV2TurnInfo) and m.event == "EndOfTurn"]
    assert [(m.transcript, m.turn_index, m.trigger) for m in ends] == [
        (SPEECH_TEXT, 0, "model"),
        ("Thanks.", 1, "model"),
    ]
    assert [w.word for w in ends[0].words] == SPEECH_TEXT.split()
    # Updates are sent between turns too (empty), every ~0.25 s of audio, and each
    # turn's audio window starts where the previous turn ended.
    turn_infos = [m for m in messages if isinstance(m, ListenV2TurnInfo)]
    assert turn_infos[0].event == "Update" and turn_infos[0].transcript == ""
    assert turn_infos[0].audio_window_end == pytest.approx(0.25, abs=0.03)
    second = [m for m in turn_infos if m.turn_index == 1]
    assert all(m.audio_window_start == ends[0].audio_window_end for m in second)
    assert max(m.audio_window_end for m in turn_infos) == pytest.approx(
        (len(pcm) * 2 + len(silence) * 3) / 2 / rate, abs=0.03
    )
    assert_valid_flux_messages(fake_deepgram.flux_sent)
    # CloseStream ends the stream without an EndOfTurn or any metadata.
    assert isinstance(messages[-1], ListenV2TurnInfo) and messages[-1].event == "Update"


async def test_flux_turn_resumed_after_eager_end_of_turn():
    # The user pauses mid-question for 0.35 s: longer than the eager delay, shorter
    # than the end-of-turn delay. Each stretch of speech takes the next queued text.
    pcm, rate = load_speech()
    first, second = split_speech(pcm, rate, pause_s=0.35)
    part1, part2 = "What does the speaker say", "about choosing the learning rate?"
    with FakeDeepgram(transcripts=[part1, part2]) as fake:
        messages = await flux_session(
            fake, first + second + bytes(rate * 2), rate, eager_eot_threshold=0.5
        )
        sent = fake.flux_sent

    seq = events(messages)
    assert collapse_updates(seq) == [
        "StartOfTurn",
        "Update",
        "EagerEndOfTurn",
        "TurnResumed",
        "Update",
        "EagerEndOfTurn",
        "EndOfTurn",
    ]
    named = [(e, t) for e, t in seq if e != "Update"]
    assert named[1:] == [
        ("EagerEndOfTurn", part1),
        ("TurnResumed", part1),
        ("EagerEndOfTurn", SPEECH_TEXT),
        ("EndOfTurn", SPEECH_TEXT),
    ]
    # The transcript only grows, and the whole turn keeps one turn_index.
    texts = [t for _, t in seq]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    turn = [m for m in messages if isinstance(m, ListenV2TurnInfo) and m.transcript]
    assert {m.turn_index for m in turn} == {0}
    assert_valid_flux_messages(sent)


async def test_flux_turn_resumed_through_pipecat():
    pcm, rate = load_speech()
    first, second = split_speech(pcm, rate, pause_s=0.35)
    part1, part2 = "What does the speaker say", "about choosing the learning rate?"
    with FakeDeepgram(transcripts=[part1, part2]) as fake:
        stt = DeepgramFluxSTTService(
            api_key="dg-test",
            url=f"{fake.base_url}/v2/listen",
            sample_rate=rate,
            enable_eager_end_of_turn=True,
        )
        audio = [InputAudioRawFrame(c, rate, 1) for c in chunks(first + second, rate)]
        silence = [InputAudioRawFrame(c, rate, 1) for c in chunks(bytes(rate * 2), rate)]
        down, _ = await run_test(stt, frames_to_send=[*audio, *silence, SleepFrame(0.5)])

    kinds = (EagerTranscriptionFrame, EagerEndOfTurnCancelFrame, TranscriptionFrame)
    seen = [(type(f).__name__, getattr(f, "text", None)) for f in down if isinstance(f, kinds)]
    assert seen == [
        ("EagerTranscriptionFrame", part1),
        ("EagerEndOfTurnCancelFrame", None),
        ("EagerTranscriptionFrame", SPEECH_TEXT),
        ("TranscriptionFrame", SPEECH_TEXT),
    ]


async def test_flux_control_messages(fake_deepgram):
    pcm, rate = load_speech()
    query = f"model=flux-general-en&encoding=linear16&sample_rate={rate}&eot_timeout_ms=300"
    headers = {"Authorization": "Token dg-test"}
    fake_deepgram.queue_transcript(SPEECH_TEXT)
    fake_deepgram.queue_transcript("Hello.")

    async def recv(ws) -> dict:
        while True:  # skip Updates
            message = json.loads(await asyncio.wait_for(ws.recv(), 2))
            if message.get("event") != "Update":
                return message

    url = f"{fake_deepgram.base_url}/v2/listen?{query}"
    async with websockets.connect(url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "Connected"
        # eot_timeout_ms (300) is shorter than the model's delay (0.45 s): it ends the turn.
        await ws.send(pcm + bytes(rate))
        assert (await recv(ws))["event"] == "StartOfTurn"
        end = await recv(ws)
        assert (end["event"], end["trigger"], end["transcript"]) == (
            "EndOfTurn",
            "timeout",
            SPEECH_TEXT,
        )
        assert end["end_of_turn_confidence"] < 0.7

        # Configure answers with the thresholds now in force.
        thresholds = {"eager_eot_threshold": 0.4, "eot_timeout_ms": 5000}
        await ws.send(json.dumps({"type": "Configure", "thresholds": thresholds}))
        ack = await recv(ws)
        assert ack["type"] == "ConfigureSuccess"
        assert ack["thresholds"] == {**thresholds, "eot_threshold": 0.7}

        # ForceEndTurn ends a turn at once, on what was heard so far.
        await ws.send(pcm[: rate * 2])  # 1 s of speech, no pause
        assert (await recv(ws))["event"] == "StartOfTurn"
        await ws.send(json.dumps({"type": "ForceEndTurn"}))
        forced = await recv(ws)
        assert (forced["event"], forced["trigger"], forced["transcript"]) == (
            "EndOfTurn",
            "manual",
            "Hello.",
        )
        assert forced["turn_index"] == 1

        # Nova's KeepAlive is not part of Flux: a fatal error, and the socket closes.
        await ws.send(json.dumps({"type": "KeepAlive"}))
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("Error", "UNPARSABLE_CLIENT_MESSAGE")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)

    assert [m["type"] for m in fake_deepgram.flux_control] == [
        "Configure",
        "ForceEndTurn",
        "KeepAlive",
    ]
    assert_valid_flux_messages(fake_deepgram.flux_sent)
    assert fake_deepgram.pending_transcripts == [] and fake_deepgram.unscripted_utterances == 0


async def test_flux_speech_without_a_queued_transcript_starts_no_turn(fake_deepgram):
    pcm, rate = load_speech()
    messages = await flux_session(fake_deepgram, pcm + bytes(rate * 2), rate)
    assert events(messages) == []  # Flux's StartOfTurn always carries words
    assert fake_deepgram.unscripted_utterances == 1


# -- Deepgram: TTS ----------------------------------------------------------------------


async def test_deepgram_tts_service_speaks(fake_deepgram):
    tts = DeepgramTTSService(api_key="dg-test", base_url=fake_deepgram.base_url)

    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello there."), SleepFrame(0.3)])

    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 24000 for f in audio)
    pcm = np.frombuffer(b"".join(f.audio for f in audio), dtype="<i2")
    assert np.abs(pcm).max() > 5000
    stopped = [i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame)]
    assert stopped and stopped[0] > down.index(audio[-1])
    assert [t.strip() for t in fake_deepgram.spoken_texts] == ["Hello there."]
    assert [m["type"] for m in fake_deepgram.speak_messages][:2] == ["Speak", "Flush"]
    assert fake_deepgram.speak_connections == 1


async def test_speak_protocol_flush_and_clear():
    with FakeDeepgram(tts_first_audio_s=0.5, tts_secs_per_char=0.01) as fake:
        url = f"{fake.base_url}/v1/speak?model=aura-2-helena-en&encoding=linear16&sample_rate=16000"
        headers = {"Authorization": "Token dg-test"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "Metadata"
            # Clear while the first audio is still pending: nothing is sent but Cleared.
            await ws.send(json.dumps({"type": "Speak", "text": "x" * 100}))
            await ws.send(json.dumps({"type": "Clear"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 0.3))["type"] == "Cleared"
            assert fake.clears == 1

            fake.tts_first_audio_s = 0.0
            await ws.send(json.dumps({"type": "Speak", "text": "x" * 100}))  # 1 s of audio
            await ws.send(json.dumps({"type": "Flush"}))
            audio = b""
            while isinstance(message := await asyncio.wait_for(ws.recv(), 2), bytes):
                audio += message
            assert json.loads(message) == {"type": "Flushed", "sequence_id": 0}
            assert len(audio) == 16000 * 2


# -- lifecycle --------------------------------------------------------------------------


@pytest.mark.parametrize("fake_class", [FakeOpenAI, FakeDeepgram])
def test_stop_releases_port_and_thread(fake_class):
    fake = fake_class()
    for _ in range(2):  # the same instance can be restarted
        fake.start()
        port = fake.port
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        fake.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        # The port can be bound again at once.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    assert not fake.running
    assert not [t for t in threading.enumerate() if t.name == fake_class.__name__]


async def test_stop_with_open_websocket_is_prompt(fake_deepgram):
    url = f"{fake_deepgram.base_url}/v1/speak?sample_rate=24000"
    async with websockets.connect(url, additional_headers={"Authorization": "Token k"}) as ws:
        await ws.recv()
        started = time.monotonic()
        await asyncio.to_thread(fake_deepgram.stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_interruption_abandons_the_llm_stream():
    reply = "This answer is long enough to be interrupted before it ends."
    with FakeOpenAI(reply=reply, ttft_s=0.05, token_interval_s=0.05) as fake:
        llm = OpenAILLMService(api_key="sk-test", base_url=fake.base_url)
        context = LLMContext(messages=[{"role": "user", "content": "hi"}])
        down, _ = await run_test(
            llm,
            frames_to_send=[
                LLMContextFrame(context=context),
                SleepFrame(0.2),
                InterruptionFrame(),
                SleepFrame(0.2),
            ],
        )
        text = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
        assert text and reply.startswith(text) and text != reply
        assert fake.cancelled_streams == 1
