"""The wording of MQTT and TLS failures: paho's error lines cleaned of OpenSSL's noise, and a hint for each
known cause (a CONNACK refusal, a TLS alert, a file that cannot be loaded), so that an error says where to
look. Pure text functions; paho is imported only to look up its log levels, when first asked.
"""

from __future__ import annotations

import functools
import re
import ssl

__all__: list[str] = []


@functools.cache
def _error_levels() -> tuple[int, int]:
    """paho's log levels that carry an error worth reporting (looked up once: paho is imported lazily)."""
    from paho.mqtt.enums import LogLevel

    return (LogLevel.MQTT_LOG_ERR, LogLevel.MQTT_LOG_WARNING)


def _refuse_key_password() -> str:
    raise ValueError("key_file is encrypted: use an unencrypted key, protected by its file permissions")


_SSL_NOISE = re.compile(r"\[SSL: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)")


def _clean(text: str) -> str:
    """An error text without OpenSSL's ``[SSL: CODE]`` prefix and ``(_ssl.c:1006)`` suffix."""
    # paho says "failed to receive" for failed sends too
    return _SSL_NOISE.sub("", text).replace("failed to receive on socket:", "socket error:").strip()


def _ssl_text(exc: ssl.SSLError) -> str:
    return _clean(str(exc.args[1]) if len(exc.args) > 1 else str(exc))


def _load_error(exc: OSError | ValueError) -> str:
    """Why a TLS file could not be loaded: OpenSSL's reason, else the OS's, else the exception's text."""
    if isinstance(exc, ssl.SSLError):
        why: str | None = _ssl_text(exc)
    elif isinstance(exc, OSError):
        why = exc.strerror
    else:
        why = None
    return why or str(exc)


def _tls_hint(text: str) -> str:
    """A hint for a TLS failure the broker reported after the handshake (TLS 1.3 checks client certificates
    then), or ""."""
    upper = text.upper()
    if "CERTIFICATE_REQUIRED" in upper or "CERTIFICATE REQUIRED" in upper:
        return " (the broker requires a client certificate: set cert_file and key_file)"
    if any(code in upper for code in ("UNKNOWN_CA", "UNKNOWN CA", "BAD_CERTIFICATE", "BAD CERTIFICATE")):
        return " (the broker rejected the client certificate: check cert_file and key_file)"
    if "EOF OCCURRED IN VIOLATION OF PROTOCOL" in upper or "UNEXPECTED_EOF" in upper:
        return (
            " (the broker ended the TLS connection: does it require a client certificate (cert_file, "
            "key_file), or reject this one?)"
        )
    return ""


_CONNACK_HINTS = {
    "bad user name or password": " (check username and password_file / password_env)",
    "not authorized": " (check username, the password, client_id and the broker's access rules)",
    "client identifier not valid": " (check client_id)",
    "identifier rejected": " (check client_id)",
}
