"""Credentials are never shown: one redaction for every message, log line and recorded value.

A URL's password (`scheme://user:PASSWORD@host`, where the password may hold `/`, `:`, `@` or
percent-escapes) and the values of secret-named query parameters (`?password=`, `sslpassword=`,
`token=`, `access_token=`, `api_key=`...) become `***`, wherever the URL sits in a longer text
(a driver's error message, say). The secrets of the URLs this process was configured with
(`MLFLOW_TRACKING_URI`, `BENCHMARK_OPTUNA_STORAGE`, and any passed in) are also removed where
they appear on their own, raw or percent-decoded, since a driver may quote them without the URL.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote

MASK = "***"
CONFIGURED_URLS = ("MLFLOW_TRACKING_URI", "BENCHMARK_OPTUNA_STORAGE")
SECRET_PARAMETER = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|credential|auth)[\w.-]*)"
    r"(\s*=\s*)([^&\s'\";,)]+)"
)
# scheme://user:password@host: the password runs to the last '@' before the end of the URL.
USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:@/'\"]*):([^\s'\"]*)@(?=[^\s@'\"]*(?:[\s'\"]|$))")
SHORTEST_SECRET = 3  # shorter strings (a one-letter password) are not removed on their own: too much else matches


def secrets_of(url: str) -> set[str]:
    """The password and secret query values of `url`, as written and percent-decoded."""
    found = set()
    for match in USERINFO.finditer(url):
        found.add(match.group(3))
    for match in SECRET_PARAMETER.finditer(url):
        found.add(match.group(3))
    return {form for secret in found for form in (secret, unquote(secret)) if len(form) >= SHORTEST_SECRET}


def configured_secrets(extra_urls: tuple[str, ...] = ()) -> set[str]:
    urls = [os.environ.get(name, "") for name in CONFIGURED_URLS] + list(extra_urls)
    return {secret for url in urls if url for secret in secrets_of(url)}


def redact(text: str, *urls: str) -> str:
    """`text` with every credential it holds replaced by ***: in URLs, in secret-named parameters,
    and the secrets of `urls` and of the configured URLs wherever they appear."""
    text = USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", str(text))
    text = SECRET_PARAMETER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    for secret in sorted(configured_secrets(urls), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_log_records() -> None:
    """Every log record of this process, from any library, is redacted as it is created."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's own formatting bug: leave it to logging to report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    redacted_record.redacts = True
    logging.setLogRecordFactory(redacted_record)
