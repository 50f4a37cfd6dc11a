from pathlib import Path

import pytest

from thrifty import ConfigurationError, Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thrifty.toml"
    path.write_text(text)
    return path


def test_file_then_env_then_overrides(tmp_path, monkeypatch):
    path = write(tmp_path, 'db_url = "sqlite:///file.db"\n[ledger]\nbatch_size = 10\nflush_interval_s = 2.0\n'
                           '[providers.vllm]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:8000/v1"\n')
    monkeypatch.setenv("THRIFTY_LEDGER__BATCH_SIZE", "20")
    s = Settings.load(path)
    assert s.ledger.batch_size == 20 and s.ledger.flush_interval_s == 2.0  # env wins, the rest of [ledger] stays
    assert s.db_url == "sqlite:///file.db"
    assert set(s.providers) == {"openai", "anthropic", "local", "vllm"}  # configured providers add to the defaults
    assert Settings.load(path, db_url="sqlite:///x.db").db_url == "sqlite:///x.db"


def test_default_ledger_is_a_sqlite_file_in_the_data_dir(tmp_path):
    s = Settings.load(data_dir=tmp_path)
    assert s.ledger_url == f"sqlite:///{tmp_path / 'ledger.db'}"


def test_provider_keys_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    s = Settings.load()
    assert s.providers["openai"].resolved_api_key() == "sk-from-env"
    assert "sk-from-env" not in repr(s)


def test_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ConfigurationError, match=r"thrifty.toml.*line 2"):
        Settings.load(write(tmp_path, 'db_url = "x"\nbatch_size = = 3\n'))
    with pytest.raises(ConfigurationError, match=r"'ledger.batch_size' in .*thrifty.toml"):
        Settings.load(write(tmp_path, "[ledger]\nbatch_size = 0\n"))
    with pytest.raises(ConfigurationError, match="providers.x.kind"):
        Settings.load(write(tmp_path, '[providers.x]\nkind = "nope"\n'))
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        Settings.load(tmp_path / "missing.toml")
