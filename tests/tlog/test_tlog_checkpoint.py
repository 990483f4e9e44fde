"""C2SP tlog-checkpoint note text: the spec's example, strict parsing, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qward.encoding import b64encode
from qward.errors import FormatError
from qward.tlog.checkpoint import Checkpoint

ROOT = b64encode(bytes(range(32)))


def test_spec_example() -> None:
    # The example checkpoint of c2sp.org/tlog-checkpoint@v1.0.0.
    body = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    checkpoint = Checkpoint.from_body(body)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash.hex().startswith("0ac5186a")
    assert checkpoint.extensions == ()
    assert checkpoint.to_body() == body


def test_extension_lines_and_empty_tree() -> None:
    body = f"o\n0\n{ROOT}\nfirst extension\nsecond\n".encode()
    checkpoint = Checkpoint.from_body(body)
    assert (checkpoint.size, checkpoint.extensions) == (0, ("first extension", "second"))
    assert checkpoint.to_body() == body


@pytest.mark.parametrize(
    "body",
    [
        f"o\n1\n{ROOT}".encode(),  # no final newline
        f"o\n1\n{ROOT}\n\n".encode(),  # empty extension line
        b"o\n1\n",
        f"\n1\n{ROOT}\n".encode(),  # empty origin
        f"o\n01\n{ROOT}\n".encode(),  # leading zero
        f"o\n00\n{ROOT}\n".encode(),
        f"o\n+1\n{ROOT}\n".encode(),
        f"o\n-1\n{ROOT}\n".encode(),
        f"o\n 1\n{ROOT}\n".encode(),
        f"o\n1 \n{ROOT}\n".encode(),
        f"o\n\u0661\n{ROOT}\n".encode(),  # a non-ASCII digit
        f"o\n{'9' * 5000}\n{ROOT}\n".encode(),
        f"o\n{2**63}\n{ROOT}\n".encode(),
        f"o\n1\n{b64encode(bytes(31))}\n".encode(),
        f"o\n1\n{ROOT[:-1]}\n".encode(),
        f"o\n1\n{ROOT} \n".encode(),
        f"o\r\n1\n{ROOT}\n".encode(),
        f"o\x00\n1\n{ROOT}\n".encode(),
        b"\xff\n1\n" + ROOT.encode() + b"\n",
        b"o\n1\n" + ROOT.encode() + b"\n" + b"x" * 70000 + b"\n",
    ],
)
def test_malformed_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(FormatError):
        Checkpoint.from_body(body)


def test_constructor_validates() -> None:
    with pytest.raises(FormatError):
        Checkpoint(origin="", size=1, root_hash=bytes(32))
    with pytest.raises(FormatError):
        Checkpoint(origin="o\nx", size=1, root_hash=bytes(32))
    with pytest.raises(FormatError):
        Checkpoint(origin="o", size=-1, root_hash=bytes(32))
    with pytest.raises(FormatError):
        Checkpoint(origin="o", size=True, root_hash=bytes(32))
    with pytest.raises(FormatError):
        Checkpoint(origin="o", size=1, root_hash=bytes(33))
    with pytest.raises(FormatError):
        Checkpoint(origin="o", size=1, root_hash=bytes(32), extensions=("",))


_LINE = st.text(st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1)


@given(
    origin=_LINE,
    size=st.integers(min_value=0, max_value=2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_LINE, max_size=3),
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))
    assert Checkpoint.from_body(checkpoint.to_body()) == checkpoint
