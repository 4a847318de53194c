"""Settings for continuous profiling with pyroscope-io, from explicit values or the environment."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import BadInputError
from .tags import VALUE_PATTERN, validate_tags

ENV_SERVER = "SONIC_PYROSCOPE_SERVER"
ENV_APPLICATION = "SONIC_PYROSCOPE_APPLICATION_NAME"
ENV_TENANT = "SONIC_PYROSCOPE_TENANT"
ENV_AUTH_USER = "SONIC_PYROSCOPE_BASIC_AUTH_USER"
ENV_AUTH_PASSWORD = "SONIC_PYROSCOPE_BASIC_AUTH_PASSWORD"

DEFAULT_APPLICATION_NAME = "sonic_guard"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9_.\-!*'()]{1,150}")


def public_address(address: str) -> str:
    """The server address without any user:password@ part, for messages and logs."""
    parts = urllib.parse.urlsplit(address)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_address(address: str) -> str:
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(
            problem=f"the Pyroscope server address {public_address(address)!r} is not an http(s) URL",
            expected="an address like http://localhost:4040 or https://profiles-prod.grafana.net",
            fix=f"correct the node's server setting or the {ENV_SERVER} environment variable",
        )
    return address.rstrip("/")


DEFAULT_SAMPLE_RATE_HZ = 20


@dataclass(frozen=True)
class ProfilingConfig:
    """Everything needed to start the agent. `server_address=None` means profiling is off.

    `user_tags` are applied per run as thread tags (not as agent-wide tags), so runs with different tags can
    share the one agent pyroscope-io allows per process. pyroscope-io has no per-upload timeout setting (its
    HTTP client waits up to ~10 s per push on its own thread); `stop_timeout_s` bounds how long
    `Profiler.stop()` waits.
    """

    server_address: str | None = None
    application_name: str = DEFAULT_APPLICATION_NAME
    tenant_id: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password: str | None = field(default=None, repr=False)
    # 20 Hz, not pyroscope-io's 100: its py-spy sampler's cost grows with the rate (bench_profiling_overhead:
    # ~6 % wall and 2.6 % agent CPU at 100 Hz, within 1 % at 20 Hz); a minutes-long run still gets ~1200
    # samples a minute, plenty for stage-level flame graphs.
    sample_rate: int = DEFAULT_SAMPLE_RATE_HZ
    upload_interval_s: int = 10
    stop_timeout_s: float = 3.0
    user_tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.server_address:
            object.__setattr__(self, "server_address", _check_address(self.server_address))
        if not VALUE_PATTERN.fullmatch(self.application_name):
            raise BadInputError(
                problem=f"profiling application name {self.application_name!r} is not allowed",
                expected="1-64 characters: letters, digits, '_', '.', ':' or '-'",
                fix="use a short service name such as sonic_guard or comfy.worker",
            )
        if not 1 <= self.sample_rate <= 1000 or self.upload_interval_s < 1 or self.stop_timeout_s <= 0:
            raise BadInputError(
                problem=(
                    f"profiling sample_rate={self.sample_rate}, upload_interval_s={self.upload_interval_s}, "
                    f"stop_timeout_s={self.stop_timeout_s} out of range"
                ),
                expected="sample_rate 1-1000 Hz, upload_interval_s >= 1, stop_timeout_s > 0",
                fix=f"use the defaults ({DEFAULT_SAMPLE_RATE_HZ} Hz, 10 s, 3 s)",
            )
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            raise BadInputError(
                problem="only one of the Pyroscope basic-auth user and password is set",
                expected="both or neither",
                fix=f"set both {ENV_AUTH_USER} and {ENV_AUTH_PASSWORD}, or leave both empty",
            )
        if self.tenant_id is not None and not TENANT_PATTERN.fullmatch(self.tenant_id):
            # The tenant travels in an HTTP header (X-Scope-OrgID): no spaces or line breaks.
            raise BadInputError(
                problem="the Pyroscope tenant id has characters a tenant id cannot have",
                expected="1-150 characters: letters, digits and _ . - ! * ' ( )",
                fix=f"correct the tenant setting or the {ENV_TENANT} environment variable",
            )
        object.__setattr__(self, "user_tags", validate_tags(self.user_tags))

    def __hash__(self) -> int:
        # The generated hash would fail on the user_tags dict; the settings and sorted tags identify a config.
        return hash((self.agent_settings(), self.stop_timeout_s, tuple(sorted(self.user_tags.items()))))

    @property
    def enabled(self) -> bool:
        return bool(self.server_address)

    def agent_settings(self) -> tuple[object, ...]:
        """The fields that go into the process-wide agent (user tags are per run and excluded)."""
        return (
            self.server_address,
            self.application_name,
            self.tenant_id,
            self.basic_auth_user,
            self.basic_auth_password,
            self.sample_rate,
            self.upload_interval_s,
        )

    def describe(self) -> str:
        """A one-line summary without credentials."""
        if not self.server_address:
            return "no server"
        tenant = f", tenant {self.tenant_id}" if self.tenant_id else ""
        auth = ", basic auth" if self.basic_auth_user else ""
        return f"{self.application_name} -> {public_address(self.server_address)}{tenant}{auth}"

    @classmethod
    def from_settings(
        cls,
        *,
        server_address: str | None = None,
        application_name: str | None = None,
        tenant_id: str | None = None,
        basic_auth_user: str | None = None,
        basic_auth_password: str | None = None,
        user_tags: Mapping[str, str] | None = None,
        sample_rate: int = DEFAULT_SAMPLE_RATE_HZ,
        upload_interval_s: int = 10,
        stop_timeout_s: float = 3.0,
        environ: Mapping[str, str] | None = None,
    ) -> ProfilingConfig:
        """Explicit values win; empty ones fall back to the SONIC_PYROSCOPE_* environment variables."""
        env = os.environ if environ is None else environ

        def pick(value: str | None, name: str) -> str | None:
            chosen = value if value else env.get(name, "")
            return chosen.strip() or None

        return cls(
            server_address=pick(server_address, ENV_SERVER),
            application_name=pick(application_name, ENV_APPLICATION) or DEFAULT_APPLICATION_NAME,
            tenant_id=pick(tenant_id, ENV_TENANT),
            basic_auth_user=pick(basic_auth_user, ENV_AUTH_USER),
            basic_auth_password=pick(basic_auth_password, ENV_AUTH_PASSWORD),
            sample_rate=sample_rate,
            upload_interval_s=upload_interval_s,
            stop_timeout_s=stop_timeout_s,
            user_tags=dict(user_tags or {}),
        )
