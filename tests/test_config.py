from __future__ import annotations

from pathlib import Path

import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, load_config
from thinktank.discovery import demo_config, discover
from thinktank.errors import ConfigError

SMALLEST = """
models:
  - name: fake-model
    provider: openai            # any OpenAI-compatible endpoint
    model: fake-model           # the upstream's model id
    base_url: http://127.0.0.1:18080/v1
    api_key: sk-fake            # or api_key_env: SOME_VARIABLE
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "thinktank.yaml"
    p.write_text(text)
    return p


def test_smallest_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SMALLEST))
    d = cfg.models[0]
    assert (d.name, d.provider, d.upstream_model, d.base_url) == (
        "fake-model", "openai", "fake-model", "http://127.0.0.1:18080/v1")
    assert d.resolve_api_key() == "sk-fake"


def test_full_config(tmp_path: Path) -> None:
    text = """
models:
  - {name: gpt-4o, provider: openai, api_key_env: MY_KEY, input_price: 2.5, output_price: 10,
     context_window: 128000, weight: 2, tags: [smart]}
  - {name: claude, provider: anthropic, model: claude-sonnet-4-5, api_key: k}
groups:
  - {name: smart, models: [gpt-4o, claude], strategy: lowest_latency, fallbacks: [cheap],
     context_window_fallbacks: [claude]}
aliases: {cheap: claude}
router: {num_retries: 3, timeout: 20, deadline: 90, cooldown: 10, allowed_fails: 2}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.groups[0].strategy == "lowest_latency" and cfg.router.num_retries == 3
    assert cfg.models[0].resolve_api_key({"MY_KEY": "abc"}) == "abc"
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        cfg.models[0].resolve_api_key({})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  - {name: a, provider: openai, base_url: ftp://x}\n",
         "models[0] ('a'): base_url: Value error, must start with http:// or https://"),
        ("models:\n  - {name: a, provider: openai}\n  - {name: b, provider: openai, weight: -1}\n",
         "models[1] ('b'): weight:"),
        ("models:\n  - {name: a, provider: openai, colour: blue}\n", "models[0] ('a'): colour: Extra inputs"),
        ("models:\n  - {provider: openai}\n", "models[0]: name: Field required"),
        ("models:\n  - {name: a, provider: openai, api_key: x, api_key_env: Y}\n", "not both"),
        ("models:\n  - {name: a, provider: openai}\ngroups:\n  - {name: g, models: [zzz]}\n", "unknown model 'zzz'"),
        ("router: {num_retries: many}\n", "router.num_retries: Input should be a valid integer"),
        ("models: [\n", "YAML syntax error at line"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_config_errors_name_file_entry_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert message in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_provider_and_missing_key_name_the_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_key="k")
    bad = write(tmp_path, "models:\n  - {name: a, provider: nosuch}\n")
    unknown = r"thinktank\.yaml: models\[0\] \('a'\): provider: unknown provider 'nosuch' \(known: .*anthropic"
    with pytest.raises(ConfigError, match=unknown):
        create_app(settings.model_copy(update={"config": bad}))
    bad = write(tmp_path, "models:\n  - {name: gpt-4o, provider: openai, api_key_env: NOPE_NOT_SET}\n")
    with pytest.raises(ConfigError, match=r"thinktank\.yaml: models\[0\] \('gpt-4o'\): api_key_env: .*NOPE_NOT_SET"):
        create_app(settings.model_copy(update={"config": bad}))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THINKTANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("THINKTANK_PORT", "9999")
    monkeypatch.setenv("THINKTANK_MAX_BODY_BYTES", "2048")
    s = Settings()
    assert (s.data_dir, s.port, s.max_body_bytes, s.host) == (tmp_path, 9999, 2048, "127.0.0.1")


def test_an_empty_metrics_token_sets_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THINKTANK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("THINKTANK_METRICS_TOKEN", "")
    assert Settings().metrics_token is None
    monkeypatch.setenv("THINKTANK_METRICS_TOKEN", "  ")
    assert Settings().metrics_token is None
    monkeypatch.setenv("THINKTANK_METRICS_TOKEN", "scrape-me")
    token = Settings().metrics_token
    assert token is not None and token.get_secret_value() == "scrape-me"


def test_discovery_from_environment() -> None:
    env = {"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b", "GOOGLE_API_KEY": "c", "OLLAMA_HOST": "127.0.0.1:9"}
    cfg = discover(env)
    providers = {m.provider for m in cfg.models}
    assert providers == {"openai", "anthropic", "gemini"}
    assert {m.api_key_env for m in cfg.models if m.provider == "gemini"} == {"GOOGLE_API_KEY"}
    assert any(m.mode == "embedding" for m in cfg.models)
    assert discover({"OLLAMA_HOST": "127.0.0.1:9"}).models == []


def test_discovery_finds_ollama_models(fake_ollama_url: str) -> None:
    cfg = discover({"OLLAMA_HOST": fake_ollama_url})
    assert [(m.name, m.provider, m.upstream_model) for m in cfg.models] == [
        ("ollama/llama3.2:latest", "ollama", "llama3.2:latest")]


def test_demo_models_are_labelled() -> None:
    cfg = demo_config()
    assert all(m.provider == "mock" and "MOCK" in (m.description or "") for m in cfg.models)
