"""Redaction holds for generated secrets in every encoding a command is likely to print.

The invariant: after `Redactor.text`, no character run that the secret alone decides
survives, whatever surrounds it: raw; base64 of the secret inside a longer value at any
byte offset, standard or URL-safe, padded or not, wrapped at 76 columns (GNU `base64`)
with LF or CRLF; percent-encoding in upper or lower case hex, `+` for spaces, or every
byte encoded.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.engine.events import Redactor

secrets = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    min_size=8,
    max_size=40,
)
around = st.binary(max_size=80)
text_around = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _secret_chars(encoded: str, before: int, length: int) -> str:
    """The characters of `encoded` that depend only on the `length` bytes after `before` bytes."""
    first = -(-8 * before // 6)
    last = (8 * (before + length)) // 6
    return encoded[first:last]


def _unbroken(text: str) -> str:
    return re.sub(r"[\r\n]", "", text)


@settings(max_examples=300, deadline=None)
@given(secret=secrets, prefix=around, suffix=around, wrap_crlf=st.booleans())
def test_no_base64_form_of_a_secret_survives_at_any_offset(
    secret: str, prefix: bytes, suffix: bytes, wrap_crlf: bool
) -> None:
    raw = secret.encode("utf-8")
    redactor = Redactor([secret])
    data = prefix + raw + suffix
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    wrapped = base64.encodebytes(data).decode()  # 76 columns, like GNU base64
    if wrap_crlf:
        wrapped = wrapped.replace("\n", "\r\n")
    for encoded in (standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("="), wrapped):
        out = redactor.text(f"token: {encoded}\n")
        decided = _secret_chars(_unbroken(encoded), len(prefix), len(raw))
        assert len(decided) >= 8
        assert decided not in _unbroken(out), (encoded, out)


@settings(max_examples=300, deadline=None)
@given(secret=secrets, before=text_around, after=text_around, lower=st.booleans())
def test_no_raw_or_percent_encoded_form_of_a_secret_survives(secret: str, before: str, after: str, lower: bool) -> None:
    redactor = Redactor([secret])
    quoted = urllib.parse.quote(secret, safe="")
    every_byte = "".join(f"%{b:02X}" for b in secret.encode("utf-8"))
    plus = urllib.parse.quote_plus(secret)
    for plain in (secret, quoted, every_byte, plus):
        form = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), plain) if lower else plain
        out = redactor.text(before + form + after)
        assert form not in out
        assert secret not in out


def test_bearer_token_base64_and_gnu_wrapping_and_lowercase_percent_examples() -> None:
    """The three leaks seen in a real journal, literally."""
    secret = "s3cr3t-T0ken/with+plus"
    redactor = Redactor([secret])
    bearer = base64.b64encode(f"Bearer {secret}".encode()).decode()
    assert redactor.text(bearer).startswith("QmVhcmVyI")
    assert "***" in redactor.text(bearer)
    long_value = base64.encodebytes(("x" * 60 + secret + "y" * 60).encode()).decode()
    assert long_value.count("\n") >= 2
    out = redactor.text(long_value)
    assert "***" in out
    assert out.count("\n") == long_value.count("\n")  # the shape of the output is kept
    lower = urllib.parse.quote(secret, safe="").replace("%2F", "%2f").replace("%2B", "%2b")
    assert redactor.text(f"url?token={lower}&x=1") == "url?token=***&x=1"


def test_short_fragments_of_short_secrets_do_not_shred_ordinary_text() -> None:
    redactor = Redactor(["abc"])
    text = "the quick brown fox jumps over the lazy dog 0123456789"
    assert redactor.text(text) == text
