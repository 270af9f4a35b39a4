"""Input checks that the server, the scripts and the stores share.

Text from Label Studio (or the environment) can hold a lone surrogate: JSON may carry
``"\\ud800"``, but UTF-8 cannot hold it, so such text can be neither stored, tokenised
nor sent on. Every reader refuses it the same way, with its own error type.
"""

from __future__ import annotations


def require_unicode(text: str, what: str, error: type[Exception] = ValueError) -> str:
    """``text`` if UTF-8 can hold it; else ``error("<what> is not valid Unicode: ...")``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid Unicode: a lone surrogate at character {exc.start}") from None
    return text
