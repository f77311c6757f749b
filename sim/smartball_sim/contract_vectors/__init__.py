"""The contract's test vectors, generated from the codec and the reference firmware model:
``python -m smartball_sim.contract_vectors --check`` (fails if the packaged vectors differ
from what the model produces now) or ``--write`` (regenerates them).

Four files under ``pytest_smartball/contract/vectors/``, for any implementation's tests
(the firmware team's C tests read them: hex in, frames / replies / states out):

``codec.json``
    One frame per message (and per optional-field and trailing-byte case): its fields and
    its bytes.
``decoder.json``
    Byte streams, in timed pieces, and what a conforming decoder makes of them: the frames,
    its counters, the bytes left buffered.
``manifest.json``
    Signed heads made with the test key and what a signed-only device answers to each
    (docs/protocol.md section 16).
``device.json``
    Sessions with the device: timed inputs (hex, link drops, resets, flash failures) and,
    for each, the messages the device sends until the next input and its state then.
    ``MSG_ERROR`` is compared by code and command byte only; its text is informative.
    Every other message is compared byte for byte. Message times (``t``) are what the
    model took with the vector's flash timings; they are informative, the order is not.

Every cell of ``command_state.json`` has a vector here (named ``cell:ROW:STATE``), and
tests/client/test_contract_table.py checks each against its cell.

The rooms: ``codec`` builds the codec's and the decoder's vectors, ``runner`` drives the
firmware model through a session on a virtual clock, ``sessions`` holds the sessions of
``device.json`` (the command x state table's in ``cells``, what they send in ``inputs``);
this module renders the files and compares them (``main``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_smartball import contract

from .cells import table_sessions
from .codec import codec_vectors, decoder_vectors
from .manifests import manifest_header, manifest_vectors
from .runner import DeviceConfig, Step, VectorSession, run_session
from .sessions import device_vectors, error_sessions, story_sessions

__all__ = [
    "GENERATORS",
    "VECTOR_DIR",
    "DeviceConfig",
    "Step",
    "VectorSession",
    "codec_vectors",
    "decoder_vectors",
    "device_vectors",
    "error_sessions",
    "main",
    "render",
    "run_session",
    "story_sessions",
    "table_sessions",
]

VECTOR_DIR = Path(contract.__file__).parent / "vectors"

GENERATORS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "codec.json": codec_vectors,
    "decoder.json": decoder_vectors,
    "device.json": device_vectors,
    "manifest.json": manifest_vectors,
}

_ABOUT = {
    "codec.json": "Frames of protocol v1: each message's fields and bytes (hex); decode-only "
    "cases for trailing bytes a receiver ignores; payloads too short to decode.",
    "decoder.json": "Streams fed to the frame decoder in timed pieces (at_s, seconds) and "
    "what it yields: frames (type, payload), its counters, the bytes left buffered. A "
    "receiver discards a partial frame when no byte arrived for 1.0 s.",
    "device.json": "Sessions with the device (config: window, staging capacity, flash "
    "timings, staging_fill: what the staging bank starts as when not erased, the image it "
    "runs). Each step is an input at at_s (hex written to NUS RX, a link drop, a reset, "
    "flash operations or the next persist of PENDING made to fail; docs/protocol.md "
    "section 12 says how to replay them) and everything the device sends "
    "until the next step (out), then its state. MSG_ERROR compares code and command only; "
    "other messages byte for byte; times t are informative (the model's, with these flash "
    "timings), the order is not. event 'reset' is the device resetting itself after DONE.",
    "manifest.json": "Signed heads (manifest 56 bytes + Ed25519 signature 64, what "
    "CMD_OTA_MANIFEST carries; docs/protocol.md section 16.1) made with the repository's "
    "test key, and what a signed-only device trusting that key with security counter 3 "
    "answers to each as CMD_OTA_MANIFEST in IDLE: accepted (MSG_OTA_STATUS) or the code of "
    "the MSG_ERROR of the first check that refuses it.",
}


def render(name: str) -> str:
    document: dict[str, Any] = {
        "about": _ABOUT[name],
        "generated_by": "python -m smartball_sim.contract_vectors --write",
    }
    if name == "manifest.json":
        document.update(manifest_header())
    document["vectors"] = GENERATORS[name]()
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartball_sim.contract_vectors")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail if the files differ")
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    args = parser.parse_args(argv)
    stale = []
    for name in GENERATORS:
        text = render(name)
        path = VECTOR_DIR / name
        if args.write:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if stale:
        print(
            f"stale contract vectors: {', '.join(stale)}; run "
            "python -m smartball_sim.contract_vectors --write and review the diff",
            file=sys.stderr,
        )
        return 1
    return 0
