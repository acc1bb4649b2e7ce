"""Settings, read once from the environment and ``.env`` (pydantic-settings).

Provider keys keep the names their own SDKs use (``OPENAI_API_KEY``, ...); Backtalk's
own settings carry the ``BACKTALK_`` prefix. Secrets are :class:`~pydantic.SecretStr`,
so ``repr()``, ``model_dump()`` and logs show ``'**********'``.

Settings are built only in entry points (the CLI callback, the bot's ``main``) and
passed down; library classes take plain arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backtalk.errors import MissingKeysError

__all__ = ["Settings", "TurnStopStrategy"]

TurnStopStrategy = Literal["smart_turn", "speech_timeout"]
#: Similarity floor for the local embedder (see Settings.min_score).
LOCAL_MIN_SCORE = 0.25


class Settings(BaseSettings):
    """All Backtalk settings.

    Parameters:
        deepgram_api_key: ``DEEPGRAM_API_KEY``; speech-to-text and text-to-speech.
        openai_api_key: ``OPENAI_API_KEY``; the LLM, and embeddings when
            ``embedder == "openai"``.
        daily_api_key: ``DAILY_API_KEY``; creating Daily rooms (``--transport daily``).
        database_url: ``DATABASE_URL``; any Postgres with pgvector. Unset: an embedded
            Postgres under ``data_dir``.
        data_dir: ``BACKTALK_DATA_DIR``; the embedded store and caches.
        embedder: ``BACKTALK_EMBEDDER``; ``local`` (WordLlama, 256-d, no network) or
            ``openai`` (``text-embedding-3-small``, 1536-d).
        openai_base_url: ``OPENAI_BASE_URL``; any OpenAI-compatible endpoint (must end
            in ``/v1``). Unset: OpenAI.
        deepgram_base_url: ``BACKTALK_DEEPGRAM_BASE_URL``; e.g. ``ws://127.0.0.1:8080``.
            Unset: Deepgram.
        log_level: ``BACKTALK_LOG_LEVEL``; the agent's log level. ``DEBUG`` logs
            prompts and transcripts; keep ``INFO`` in production.
        print_latency: ``BACKTALK_PRINT_LATENCY`` (or ``talk --latency``); print each
            turn's latency breakdown. It is always sent to the client over RTVI.
        llm_model: ``BACKTALK_LLM_MODEL``; the chat model.
        llm_max_tokens: ``BACKTALK_LLM_MAX_TOKENS``; cap on one spoken answer, tokens.
        max_user_chars: ``BACKTALK_MAX_USER_CHARS``; cap on one user message sent to
            the LLM, characters (longer typed text is cut, and the cut is marked;
            :mod:`backtalk.processors.limits`).
        llm_timeout_s: ``BACKTALK_LLM_TIMEOUT_S``; the OpenAI client's HTTP timeout,
            seconds (connect, and each read of the stream; the SDK's own is 600).
        llm_first_token_s: ``BACKTALK_LLM_FIRST_TOKEN_S``; how long a chat request
            may go without its first token, seconds (SDK retries included), before it
            is re-issued once; a second such wait ends the turn with a spoken apology
            (Pipecat's ``retry_timeout_secs``).
        llm_max_retries: ``BACKTALK_LLM_MAX_RETRIES``; retries the OpenAI SDK makes
            of a failed chat request (429, 5xx, connection errors, timeouts), with
            exponential backoff, honouring the server's ``Retry-After``.
        backup_llm_base_url: ``BACKTALK_BACKUP_LLM_BASE_URL``; an OpenAI-compatible
            endpoint (Azure OpenAI, Groq, a local server; ending in ``/v1``) that takes
            over a turn the LLM fails (429, 5xx, a timeout, no first token): the same
            request is sent to it at once (:mod:`backtalk.agent.failover`). Unset: no
            backup LLM; a failed turn ends with a spoken apology.
        backup_llm_api_key: ``BACKTALK_BACKUP_LLM_API_KEY``; its key (unset:
            ``OPENAI_API_KEY``).
        backup_llm_model: ``BACKTALK_BACKUP_LLM_MODEL``; its model (unset: ``llm_model``).
        backup_llm_failback_s: ``BACKTALK_BACKUP_LLM_FAILBACK_S``; seconds on the backup
            after which the next turn tries the first LLM again (60: OpenAI's rate
            limits are per minute).
        backup_deepgram_api_key: ``BACKTALK_BACKUP_DEEPGRAM_API_KEY``; a second Deepgram
            key for a backup STT and TTS, used when the first one fails (a refused key,
            a dropped or flapping socket). Unset with no backup base URL: no backup.
        backup_deepgram_base_url: ``BACKTALK_BACKUP_DEEPGRAM_BASE_URL``; the backup's
            endpoint (e.g. a self-hosted Deepgram; unset: Deepgram's). The backup key
            defaults to ``DEEPGRAM_API_KEY``.
        openai_embedding_model: ``BACKTALK_OPENAI_EMBEDDING_MODEL``.
        stt_service: ``BACKTALK_STT_SERVICE``; ``deepgram`` (Nova, with Backtalk's turn
            detection) or ``deepgram_flux`` (Flux with eager end-of-turn: turn
            detection by Deepgram, retrieval on the eager turn).
        stt_model: ``BACKTALK_STT_MODEL``; Deepgram Nova listen model.
        stt_language: ``BACKTALK_STT_LANGUAGE``; BCP-47 code for speech recognition.
        tts_voice: ``BACKTALK_TTS_VOICE``; Deepgram Aura voice.
        transcript_languages: ``BACKTALK_TRANSCRIPT_LANGUAGES``; YouTube caption
            languages in order of preference (JSON list or comma separated).
        youtube_proxy_url: ``BACKTALK_YOUTUBE_PROXY_URL``; an HTTP(S) proxy for
            YouTube requests, for when YouTube blocks your IP.
        webshare_proxy_username / webshare_proxy_password: rotating residential proxies
            from Webshare, the remedy youtube-transcript-api documents for blocked IPs.
        retrieval_top_k: chunks given to the LLM per turn.
        retrieval_timeout_s: latency budget for one retrieval, seconds. On timeout
            the turn goes on without retrieved context.
        retrieval_min_score: similarity floor (cosine, -1..1); a turn whose best chunk
            scores below it is answered as "the video doesn't cover this". Unset: the
            embedder's measured default (see :attr:`min_score`).
        retrieval_mode: ``BACKTALK_RETRIEVAL_MODE``; ``inject`` (excerpts added to every
            turn, no extra round trip) or ``tool`` (the LLM calls ``search_video``).
        speculative_retrieval: ``BACKTALK_SPECULATIVE_RETRIEVAL``; start retrieving on
            interim transcriptions and reuse the result when the final user turn
            matches. Unset: on with Nova, off with Flux (see :attr:`speculate`).
        chunk_target_s / chunk_max_s: chunk window length, seconds of video.
        vad_stop_secs: silence, seconds, before Silero VAD reports the user stopped.
        vad_start_secs: speech, seconds, before Silero VAD reports the user started.
        vad_confidence: Silero speech probability threshold, 0-1.
        turn_stop_strategy: ``smart_turn`` (Pipecat's smart-turn v3 model behind VAD)
            or ``speech_timeout`` (a fixed silence after the last word).
        turn_speech_timeout_s: silence, seconds, for ``speech_timeout``.
        barge_in: ``BACKTALK_BARGE_IN``; what the user's speech over the bot does.
            ``pause`` (default): the bot's audio pauses within ``barge_in_onset_s`` of
            speech; a backchannel ("yeah", "mm-hm", noise without words) resumes it
            where it paused, any other word (or ``barge_in_speech_s`` of speech)
            interrupts it (:mod:`backtalk.agent.turns`). ``vad``: Pipecat's default,
            any speech the VAD confirms interrupts at once.
        barge_in_onset_s: ``BACKTALK_BARGE_IN_ONSET_S``; speech over the bot, seconds
            of Silero windows at ``vad_confidence`` or above, that pauses it (0.032: one
            32 ms window; Silero's ``start_secs`` is 0.2, longer than "Wait,"). 0.064
            pauses ~32 ms later, on two windows.
        barge_in_speech_s: ``BACKTALK_BARGE_IN_SPEECH_S``; speech over the bot,
            seconds, that interrupts it even before a word is transcribed (longer than
            any backchannel: the longest fixture, "Mm-hm.", is 0.9 s).
        barge_in_resume_s: ``BACKTALK_BARGE_IN_RESUME_S``; if set, seconds after the
            pause at which the bot goes on while no word of the user's has been
            transcribed yet (words still interrupt it). Unset (default): it waits for
            the words, or for the user to fall quiet. Measured trade-off in
            ``benchmarks/TURN_TAKING.md``.
        smart_turn_stop_secs: the longest silence, seconds, smart-turn waits while it
            scores the turn unfinished.
        smart_turn_rescore_s: ``BACKTALK_SMART_TURN_RESCORE_S``; while smart-turn
            scores a turn unfinished, it is asked again every 64 ms of silence until
            this much silence after the speech, seconds (0: once, at the VAD stop, as
            Pipecat does; see
            :class:`~backtalk.agent.turns.RescoringTurnAnalyzerUserTurnStopStrategy`).
        audio_in_frame_s: ``BACKTALK_AUDIO_IN_FRAME_S``; length, seconds, of the input
            audio frames the pipeline gets (the transport's 20 ms frames are joined).
            Unset: 0.032 with Nova, 0.08 with Flux (see :attr:`audio_in_frame`).
        daily_api_url: ``BACKTALK_DAILY_API_URL``; Daily's REST API (rooms, meeting
            tokens). Point it at another endpoint for tests.
        session_max_s: ``BACKTALK_SESSION_MAX_S``; hard limit of one conversation,
            seconds: the bot says goodbye and leaves; Daily rooms and tokens expire then.
        session_idle_s: ``BACKTALK_SESSION_IDLE_S``; a conversation in which nobody
            speaks for this long, seconds, ends the same way.
        session_starts_per_minute: ``BACKTALK_SESSION_STARTS_PER_MINUTE``; conversations
            one API key, and one client address, may start per minute (``serve``).
        worker_max_sessions: ``BACKTALK_WORKER_MAX_SESSIONS``; conversations one worker
            process holds at most (``serve``).
        worker_load_threshold: ``BACKTALK_WORKER_LOAD_THRESHOLD``; a worker whose CPU
            use, in cores (0-1 of one core), is at or above this takes no new
            conversation (LiveKit Agents' default: 0.7).
        drain_timeout_s: ``BACKTALK_DRAIN_TIMEOUT_S``; on SIGTERM, how long, seconds,
            ``serve`` lets live conversations finish before it exits.
    """

    model_config = SettingsConfigDict(
        env_prefix="BACKTALK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    deepgram_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DEEPGRAM_API_KEY", "deepgram_api_key")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    daily_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DAILY_API_KEY", "daily_api_key")
    )
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )

    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("backtalk")))
    embedder: Literal["local", "openai"] = "local"
    deepgram_base_url: str | None = None

    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    print_latency: bool = False
    llm_model: str = "gpt-4o-mini"
    llm_max_tokens: int = 400
    max_user_chars: int = Field(default=2000, ge=100)
    llm_timeout_s: float = Field(default=20.0, gt=0)
    llm_first_token_s: float = Field(default=5.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    backup_llm_base_url: str | None = None
    backup_llm_api_key: SecretStr | None = None
    backup_llm_model: str | None = None
    backup_llm_failback_s: float = Field(default=60.0, ge=0)
    backup_deepgram_api_key: SecretStr | None = None
    backup_deepgram_base_url: str | None = None
    openai_embedding_model: str = "text-embedding-3-small"
    stt_service: Literal["deepgram", "deepgram_flux"] = "deepgram"
    stt_model: str = "nova-3-general"
    stt_language: str = "en"
    tts_voice: str = "aura-2-helena-en"

    transcript_languages: Annotated[list[str], NoDecode] = ["en"]
    youtube_proxy_url: SecretStr | None = None
    webshare_proxy_username: SecretStr | None = None
    webshare_proxy_password: SecretStr | None = None

    retrieval_top_k: int = Field(default=4, ge=1, le=20)
    retrieval_timeout_s: float = Field(default=0.5, gt=0)
    retrieval_min_score: float | None = Field(default=None, ge=-1, le=1)
    speculative_retrieval: bool | None = None
    retrieval_mode: Literal["inject", "tool"] = "inject"
    chunk_target_s: float = Field(default=45.0, gt=0)
    chunk_max_s: float = Field(default=60.0, gt=0)

    vad_stop_secs: float = Field(default=0.2, ge=0)
    vad_start_secs: float = Field(default=0.2, ge=0)
    vad_confidence: float = Field(default=0.7, gt=0, le=1)
    turn_stop_strategy: TurnStopStrategy = "smart_turn"
    barge_in: Literal["pause", "vad"] = "pause"
    barge_in_onset_s: float = Field(default=0.032, gt=0, le=1.0)
    barge_in_speech_s: float = Field(default=1.5, gt=0)
    barge_in_resume_s: float | None = Field(default=None, gt=0)
    turn_speech_timeout_s: float = Field(default=0.6, ge=0)
    #: 1.0 s, not Pipecat's 3.0: measured in benchmarks/end_of_turn.py, a finished
    #: question smart-turn misjudges as unfinished then waits 1.27 s instead of 3.26 s,
    #: with no more mid-sentence cut-offs than at 3.0.
    smart_turn_stop_secs: float = Field(default=1.0, gt=0)
    #: 0.5 s: on q1 smart-turn v3 says "finished" somewhere in 0.25-0.45 s of silence
    #: on every frame alignment, and the fragments of the spliced-pause set stay
    #: "unfinished" (p ≤ 0.07) until 0.6 s (benchmarks/TURN_TAKING.md).
    smart_turn_rescore_s: float = Field(default=0.5, ge=0)
    audio_in_frame_s: float | None = Field(default=None, ge=0, le=0.5)

    # Serving (backtalk serve, backtalk talk --transport daily)
    daily_api_url: str = "https://api.daily.co/v1"
    session_max_s: float = Field(default=1800.0, gt=0)
    session_idle_s: float = Field(default=180.0, gt=0)
    session_starts_per_minute: int = Field(default=10, ge=1)
    worker_max_sessions: int = Field(default=8, ge=1)
    worker_load_threshold: float = Field(default=0.7, gt=0, le=1)
    drain_timeout_s: float = Field(default=60.0, ge=0)

    @field_validator("transcript_languages", mode="before")
    @classmethod
    def _split_languages(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "openai_base_url",
        "deepgram_base_url",
        "deepgram_api_key",
        "openai_api_key",
        "daily_api_key",
        "database_url",
        "youtube_proxy_url",
        "webshare_proxy_username",
        "webshare_proxy_password",
        "backup_llm_base_url",
        "backup_llm_api_key",
        "backup_llm_model",
        "backup_deepgram_api_key",
        "backup_deepgram_base_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def require_keys(
        self, *, talk: bool = False, transport: str = "webrtc", room_url: str | None = None
    ) -> None:
        """Check that every key the requested action needs is set, before anything starts.

        Args:
            talk: True to check for a voice conversation (STT, LLM, TTS).
            transport: ``webrtc`` or ``daily``.
            room_url: A Daily room to join; without it a room is created, which
                needs ``DAILY_API_KEY``.

        Raises:
            MissingKeysError: naming each missing variable and what needs it.
        """
        missing: dict[str, str] = {}
        if talk and not self.deepgram_api_key:
            missing["DEEPGRAM_API_KEY"] = "speech recognition and the bot's voice (Deepgram)"
        if talk and not self.openai_api_key:
            missing["OPENAI_API_KEY"] = "the answers (OpenAI LLM)"
        if self.embedder == "openai" and not self.openai_api_key:
            missing["OPENAI_API_KEY"] = missing.get(
                "OPENAI_API_KEY", "embeddings (BACKTALK_EMBEDDER=openai)"
            )
        if talk and transport == "daily" and not room_url and not self.daily_api_key:
            missing["DAILY_API_KEY"] = "creating a Daily room (or pass --room-url)"
        if missing:
            raise MissingKeysError(missing)

    def secret(self, name: str) -> str | None:
        """The plain value of secret setting ``name`` (e.g. ``"openai_api_key"``), or None."""
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    @property
    def min_score(self) -> float | None:
        """The similarity floor in effect.

        ``local`` (WordLlama): 0.25, measured with ``backtalk eval`` on the fixture QA
        set plus 20 off-topic questions: it keeps 13 of 14 answerable questions (the
        one lost is a vague follow-up, answered from the conversation instead) and
        declines 20 of 22 off-topic ones. ``openai``: no floor, because it could not be
        calibrated without OpenAI access; set ``BACKTALK_RETRIEVAL_MIN_SCORE``.
        """
        if self.retrieval_min_score is not None:
            return self.retrieval_min_score
        return LOCAL_MIN_SCORE if self.embedder == "local" else None

    @property
    def speculate(self) -> bool:
        """Whether retrieval starts on interim transcripts (``speculative_retrieval``).

        Unset, it is on with Nova and off with Flux. Flux's eager end of turn already
        starts the turn's retrieval ~0.2 s early, with the full text; the tap's
        prefetches of partial ``Update`` text then never serve a turn and only cost
        embedding requests: 91 vs 37 per 30 turns at the same voice-to-voice latency
        (``benchmarks/results/speculative_flux.md``, OpenAI embedder).
        """
        if self.speculative_retrieval is not None:
            return self.speculative_retrieval
        return self.stt_service != "deepgram_flux"

    @property
    def audio_in_frame(self) -> float:
        """Seconds of microphone audio per input frame (``audio_in_frame_s``).

        Unset: 0.032 with Nova, one Silero VAD window (512 samples at 16 kHz), which
        cuts the pipeline's frames by 37.5 % against WebRTC's 20 ms and keeps VAD
        decisions window-exact (:mod:`backtalk.agent.audio`). 0.08 with Flux: Deepgram
        "strongly recommends" 80 ms chunks "for optimal model performance and latency"
        (developers.deepgram.com/docs/flux/quickstart), and Flux, not the local VAD,
        decides when a turn starts and ends.
        """
        if self.audio_in_frame_s is not None:
            return self.audio_in_frame_s
        return 0.08 if self.stt_service == "deepgram_flux" else 0.032

    @property
    def embedded_store_dir(self) -> Path:
        """Folder of the embedded Postgres cluster (``<data_dir>/pg``)."""
        return self.data_dir / "pg"
