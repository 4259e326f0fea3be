"""The wire contract in proto/ is generated from the code; they must never drift apart."""

from pathlib import Path

from services.protocol.export import contract, render

PROTO = Path(__file__).resolve().parents[1] / "proto"


def test_proto_files_match_the_code():
    documents = contract()
    stale = [
        name
        for name, document in documents.items()
        if not (PROTO / name).exists() or (PROTO / name).read_text() != render(document)
    ]
    assert not stale, f"proto/ is out of date for {stale}: run `make proto` and commit the diff"


def test_no_orphan_files_in_proto():
    known = set(contract()) | {"README.md"}
    orphans = sorted(p.name for p in PROTO.iterdir() if p.name not in known)
    assert not orphans, f"proto/ has files the code no longer produces: {orphans}"
