"""docs/protocol.md 1.3 lists every error code Tandem sends, and nothing else.

The codes sent are read from the source: the ``code`` of every protocol error
class (any receiver answers a rejected message with it), and the literal code
of every call that builds an error reply in the hub, hub sync and the edge's
local endpoint. A code added to the source without a row in the table, or a
row left after its code is gone, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tandem.transport.chunking  # noqa: F401  (defines the chunk errors)
from tandem.transport.errors import ProtocolError
from tests.layout import ROOT

# Calls that answer with an error: the name and the position of their code argument.
_REPLY_CALLS = {"_error": 2, "_reply_error": 2, "Refusal": 0, "error_reply": 0, "_Rejected": 0}
_SENDERS = ["cloud_hub/server.py", "cloud_hub/batcher.py", "cloud_hub/sync.py", "edge_agent/endpoint.py"]


def protocol_error_codes() -> set[str]:
    """The code of every concrete ProtocolError class (the base's ``protocol_error`` is never raised)."""
    found: set[str] = set()
    todo = list(ProtocolError.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return found


def literal_codes(path: Path) -> dict[str, set[str]]:
    """Codes passed as string literals to the error-building calls in ``path``, by call name."""
    codes: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        candidates: list[ast.expr] = [k.value for k in node.keywords if k.arg == "code"]
        if name in _REPLY_CALLS and len(node.args) > _REPLY_CALLS[name]:
            candidates.append(node.args[_REPLY_CALLS[name]])
        for value in candidates:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                codes.setdefault(name, set()).add(value.value)
    return codes


def documented_codes() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("| code | sent by |") : text.index("### 1.4")]
    return set(re.findall(r"^\| `([a-z_]+)` \| ", section, flags=re.MULTILINE))


def sent_codes() -> tuple[set[str], set[str]]:
    """(codes sent in ``error`` replies, codes only in sync acks' ``rejected`` lists)."""
    errors, ack_only = set(protocol_error_codes()), set()
    for relative in _SENDERS:
        for call, codes in literal_codes(ROOT / relative).items():
            (ack_only if call == "_Rejected" else errors).update(codes)
    return errors, ack_only - errors


def test_every_error_code_sent_is_in_the_protocol_table_and_every_row_is_sent() -> None:
    sent, _ = sent_codes()
    documented = documented_codes()
    assert sent - documented == set(), f"sent but not in docs/protocol.md 1.3: {sorted(sent - documented)}"
    assert documented - sent == set(), f"in docs/protocol.md 1.3 but never sent: {sorted(documented - sent)}"


def test_ack_rejection_codes_are_documented_in_sync_md() -> None:
    _, ack_only = sent_codes()
    assert ack_only, "the hub's sync rejects entries with codes of their own"
    sync_md = (ROOT / "docs" / "sync.md").read_text()
    missing = sorted(code for code in ack_only if f"`{code}`" not in sync_md)
    assert missing == [], f"ack rejection codes missing from docs/sync.md: {missing}"


def test_the_source_scan_finds_what_it_should() -> None:
    """The scan itself: a call it must see, and one it must not mistake for a code."""
    codes = literal_codes(ROOT / "cloud_hub" / "server.py")
    assert "unknown_split" in codes["_error"] and "overloaded" not in codes.get("_error", set())
    assert "overloaded" in literal_codes(ROOT / "cloud_hub" / "batcher.py")["Refusal"]
    assert {"bad_chunk", "truncated", "malformed_header"} <= protocol_error_codes()
