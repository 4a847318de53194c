"""Profiling tags and settings: what is accepted, what is refused, and what the refusal says."""

from __future__ import annotations

import pytest

from sonic_guard.errors import BadInputError, TagError
from sonic_guard.telemetry import ProfilingConfig, duration_bucket, parse_tag_text, run_tags, validate_tags
from sonic_guard.telemetry.profiling_config import ENV_AUTH_PASSWORD, ENV_AUTH_USER, ENV_SERVER, ENV_TENANT
from sonic_guard.telemetry.tags import MAX_USER_TAGS, check_run_tags


def test_valid_tags_pass_and_ints_become_strings() -> None:
    tags = {"team": "vision", "gpu_pool": "a100-80g", "_batch": "v1.2:rc", "shard": 3}
    assert validate_tags(tags) == {
        "team": "vision",
        "gpu_pool": "a100-80g",
        "_batch": "v1.2:rc",
        "shard": "3",
    }
    assert validate_tags(None) == {}


@pytest.mark.parametrize(
    ("tags", "fragment"),
    [
        ({"file": "/home/me/portrait.png"}, "file path"),
        ({"file": "C:\\Users\\me\\a.wav"}, "file path"),
        ({"note": "my test run"}, "whitespace"),
        ({"note": "tab\there"}, "whitespace"),
        ({"note": "x" * 65}, "65 characters"),
        ({"note": ""}, "0 characters"),
        ({"note": "héllo"}, "outside the allowed set"),
        ({"note": "a=b"}, "outside the allowed set"),
        ({"1team": "a"}, "key '1team' is not allowed"),
        ({"team-name": "a"}, "is not allowed"),
        ({"k" * 65: "a"}, "is not allowed"),
        ({"stage": "sampling"}, "reserved"),
        ({"resolution": "512x512"}, "reserved"),
        ({"__name__": "x"}, "reserved"),
        ({"flag": True}, "bool value"),
        ({"ratio": 0.5}, "float value"),
    ],
)
def test_bad_tags_are_rejected_with_what_expected_and_fix(tags: dict, fragment: str) -> None:
    with pytest.raises(TagError) as caught:
        validate_tags(tags)
    error = caught.value
    assert fragment in error.problem
    assert error.expected and error.fix
    assert error.reason == "bad_tag"
    # The message never echoes a path back (it may end up in logs).
    assert "/home/me" not in str(error) and "Users" not in str(error)


def test_too_many_tags() -> None:
    tags = {f"k{i}": "v" for i in range(MAX_USER_TAGS + 1)}
    with pytest.raises(TagError, match="at most 16"):
        validate_tags(tags)
    assert len(validate_tags(dict(list(tags.items())[:MAX_USER_TAGS]))) == MAX_USER_TAGS


def test_parse_tag_text() -> None:
    assert parse_tag_text("team=vision, gpu_pool = a100\nshard=2") == {
        "team": "vision",
        "gpu_pool": "a100",
        "shard": "2",
    }
    assert parse_tag_text("  ") == {}
    with pytest.raises(TagError, match="not key=value"):
        parse_tag_text("team")
    with pytest.raises(TagError, match="given twice"):
        parse_tag_text("a=1,a=2")
    with pytest.raises(TagError, match="file path"):
        parse_tag_text("src=/tmp/x.wav")


def test_duration_buckets_keep_cardinality_low() -> None:
    assert duration_bucket(0) == "5s"
    assert duration_bucket(5.0) == "5s"
    assert duration_bucket(5.01) == "10s"
    assert duration_bucket(599) == "600s"
    assert duration_bucket(3600) == "over600s"
    assert duration_bucket(float("nan")) == "unknown"
    assert len({duration_bucket(s / 10) for s in range(0, 10000)}) <= 14


def test_run_tags_combine_pack_and_user_tags() -> None:
    tags = run_tags(duration_s=12.4, width=576, height=1024, inference_steps=25, user_tags={"team": "v"})
    assert tags == {"duration": "15s", "resolution": "576x1024", "inference_steps": "25", "team": "v"}
    assert check_run_tags(tags) == tags
    with pytest.raises(TagError):
        run_tags(duration_s=1, width=8, height=8, inference_steps=1, user_tags={"stage": "x"})
    with pytest.raises(TagError):
        check_run_tags({"resolution": "a b"})


def test_config_from_environment_and_explicit_values_win() -> None:
    env = {
        ENV_SERVER: "http://pyro.internal:4040/",
        ENV_TENANT: "team-a",
        ENV_AUTH_USER: "svc",
        ENV_AUTH_PASSWORD: "s3cret",
    }
    config = ProfilingConfig.from_settings(environ=env)
    assert config.server_address == "http://pyro.internal:4040" and config.tenant_id == "team-a"
    assert config.basic_auth_user == "svc" and config.basic_auth_password == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in config.describe()
    explicit = ProfilingConfig.from_settings(server_address="https://p.example:443", tenant_id="b", environ=env)
    assert explicit.server_address == "https://p.example:443" and explicit.tenant_id == "b"
    assert ProfilingConfig.from_settings(environ={}).enabled is False


def test_config_hides_credentials_in_the_address() -> None:
    config = ProfilingConfig(server_address="http://user:pw@host:4040")
    assert "pw" not in config.describe()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_address": "pyro:4040"},
        {"server_address": "ftp://pyro"},
        {"server_address": "http://h", "application_name": "my app"},
        {"server_address": "http://h", "sample_rate": 0},
        {"server_address": "http://h", "stop_timeout_s": 0},
        {"server_address": "http://h", "basic_auth_user": "only-user"},
        {"server_address": "http://h", "tenant_id": "a\nX-Evil: 1"},
        {"server_address": "http://h", "user_tags": {"path": "/x"}},
    ],
)
def test_config_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(BadInputError) as caught:
        ProfilingConfig(**kwargs)
    assert caught.value.expected and caught.value.fix
