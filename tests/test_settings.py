"""Settings: environment and .env, secrets, key checks."""

import pytest
from pydantic import ValidationError

from backtalk.config import Settings
from backtalk.errors import MissingKeysError


def test_env_file_is_read_and_empty_keys_count_as_missing(tmp_path):
    (tmp_path / ".env").write_text(
        "DEEPGRAM_API_KEY=\nOPENAI_API_KEY=sk-from-dotenv\nBACKTALK_TRANSCRIPT_LANGUAGES=de, en\n"
    )
    settings = Settings()
    assert settings.deepgram_api_key is None
    assert settings.openai_api_key.get_secret_value() == "sk-from-dotenv"
    assert settings.transcript_languages == ["de", "en"]
    with pytest.raises(MissingKeysError) as info:
        settings.require_keys(talk=True)
    assert list(info.value.missing) == ["DEEPGRAM_API_KEY"]


def test_environment_wins_over_env_file(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert Settings().openai_api_key.get_secret_value() == "sk-from-env"


def test_secrets_are_masked_everywhere(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-LEAKCHECK")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw-LEAKCHECK@h/db")
    settings = Settings()
    for rendering in (repr(settings), str(settings.model_dump()), settings.model_dump_json()):
        assert "LEAKCHECK" not in rendering


def test_missing_keys_message_says_what_needs_each(monkeypatch):
    with pytest.raises(MissingKeysError) as info:
        Settings().require_keys(talk=True, transport="daily")
    message = str(info.value)
    assert "DEEPGRAM_API_KEY: needed for speech recognition" in message
    assert "OPENAI_API_KEY: needed for the answers" in message
    assert "DAILY_API_KEY: needed for creating a Daily room" in message
    Settings(deepgram_api_key="d", openai_api_key="o").require_keys(
        talk=True, transport="daily", room_url="https://x.daily.co/r"
    )


def test_openai_embedder_needs_the_openai_key_even_for_ingest(monkeypatch):
    monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
    with pytest.raises(MissingKeysError, match="BACKTALK_EMBEDDER=openai"):
        Settings().require_keys()


def test_bad_values_are_rejected(monkeypatch):
    monkeypatch.setenv("BACKTALK_RETRIEVAL_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError):
        Settings()


def test_services_are_chosen_by_settings(monkeypatch):
    from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
    from pipecat.services.deepgram.stt import DeepgramSTTService

    from backtalk.agent.services import make_stt, make_turn_strategies

    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
    assert isinstance(make_stt(Settings()), DeepgramSTTService)
    assert make_turn_strategies(Settings()) is not None
    monkeypatch.setenv("BACKTALK_STT_SERVICE", "deepgram_flux")
    monkeypatch.setenv("BACKTALK_DEEPGRAM_BASE_URL", "ws://127.0.0.1:9")
    flux = make_stt(Settings())
    assert isinstance(flux, DeepgramFluxSTTService)
    # Flux's own turn events end turns (no local turn model is loaded).
    strategies = make_turn_strategies(Settings())
    assert [type(s).__name__ for s in strategies.stop] == ["EagerUserTurnStopStrategy"]


def test_speculative_retrieval_defaults_to_on_with_nova_and_off_with_flux(monkeypatch):
    assert Settings().speculate is True
    monkeypatch.setenv("BACKTALK_STT_SERVICE", "deepgram_flux")
    assert Settings().speculate is False
    monkeypatch.setenv("BACKTALK_SPECULATIVE_RETRIEVAL", "true")
    assert Settings().speculate is True
    monkeypatch.setenv("BACKTALK_STT_SERVICE", "deepgram")
    monkeypatch.setenv("BACKTALK_SPECULATIVE_RETRIEVAL", "false")
    assert Settings().speculate is False
