"""The service's settings: one validated object, and the only place that reads the environment.

Every field can be given as an argument (the CLI does that) or as an environment variable
``DISTILL_SERVE_<FIELD>`` (``DISTILL_SERVE_PACKAGE``, ``DISTILL_SERVE_MAX_CONCURRENCY``, ...).
The token is never a command-line argument: it comes from ``token_file`` or from
``DISTILL_SERVE_TOKEN``, and it is required whenever the service binds anything but a
loopback address.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
#: Shortest accepted token: 16 characters (e.g. ``python -c "import secrets; print(secrets.token_urlsafe(32))"``).
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """``True`` for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); any other name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseSettings):
    """What ``distill serve`` runs; see the module docstring for where values come from.

    Limits (defaults in brackets):
        max_body_bytes: request body on the wire, checked before any multipart parsing [64 MiB,
            like Triton's ``--http-max-input-size``].
        max_part_bytes: one uploaded file after decompression, capped while it is decompressed
            [256 MiB: a 1 mm 4-channel float32 case is 143 MB].
        max_voxels: voxels of one channel, and of the grid the package resamples to [2**25].
        max_concurrency: requests decoding, segmenting or encoding at once [1]; the model itself
            runs one call at a time whatever this is.
        max_queue: requests waiting for a slot beyond those; more get 503 with Retry-After [2].
        request_timeout_s: per request, from admission to the response [120 s].
    """

    model_config = SettingsConfigDict(env_prefix="DISTILL_SERVE_", extra="forbid", frozen=True)

    package: Path = Field(description="Model package folder (from distill export).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    backend: str = Field("onnxruntime", description="torch, onnxruntime or tensorrt, options after colons.")
    threads: int | None = Field(None, ge=1, description="CPU threads of the backend (default: the backend's).")
    verify_package: bool = Field(True, description="Check every file's sha256 when opening the package.")
    tta: Literal["none", "mirror8"] = Field("none", description="Test-time augmentation: mirror8 averages the 8 "
                                                               "mirrorings (8x the network time).")

    token: SecretStr | None = Field(None, description="Bearer token (prefer token_file).")
    token_file: Path | None = Field(None, description="File holding the bearer token (one line).")

    max_body_bytes: int = Field(64 * MiB, ge=1024)
    max_part_bytes: int = Field(256 * MiB, ge=1024)
    max_voxels: int = Field(2**25, ge=1)
    max_parts: int = Field(4, ge=1, le=16, description="Most multipart parts in one request (the modalities).")
    max_concurrency: int = Field(1, ge=1, le=64)
    max_queue: int = Field(2, ge=0, le=256)
    max_connections: int = Field(64, ge=4, description="uvicorn's connection limit, a backstop (503 beyond).")
    request_timeout_s: float = Field(120.0, gt=0)
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 answers.")

    drain_s: float = Field(0.0, ge=0, description="After SIGTERM: seconds readiness is 503 before the socket closes.")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="After SIGTERM: most seconds in-flight requests get.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("package")
    @classmethod
    def _package_is_a_folder(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value}: not a folder; pass a model package made by `distill export`")
        return value

    @model_validator(mode="after")
    def _token_rules(self) -> ServeSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give the token either in a file (token_file) or as DISTILL_SERVE_TOKEN, not both")
        token = self.bearer_token()
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the bearer token must be at least {MIN_TOKEN_LENGTH} characters")
        if token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host} (not a loopback address) needs a bearer token: --token-file FILE "
                "or DISTILL_SERVE_TOKEN"
            )
        return self

    def bearer_token(self) -> str | None:
        """The token (from the file or the setting), stripped; ``None`` when no token is set."""
        if self.token_file is not None:
            try:
                text = self.token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{self.token_file}: cannot read the token file ({type(exc).__name__})") from exc
            if not text or "\n" in text:
                raise ValueError(f"{self.token_file}: the token file must hold exactly one non-empty line")
            return text
        if self.token is not None:
            return self.token.get_secret_value().strip()
        return None

    @property
    def admission_capacity(self) -> int:
        """Requests admitted at once: running plus queued."""
        return self.max_concurrency + self.max_queue


__all__ = ["MIN_TOKEN_LENGTH", "MiB", "ServeSettings", "is_loopback"]
