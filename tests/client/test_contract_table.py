"""The command x state table of the protocol contract (pytest_smartball/contract/): every
cell holds for the reference firmware model (through its device vector), the table covers
every state and command, and docs/protocol.md shows the table, the timings, the codes and
the constants exactly as the data says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p

from .contract_cases import DEVICE_VECTORS, TIMING

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
TABLE = contract.command_state_table()

# --- the command x state table ----------------------------------------------------------------

SIGNED_TABLE = contract.signed_command_state_table()
CELLS = [("", row, state) for row in TABLE.rows for state in contract.STATES] + [
    ("signed:", row, state) for row in SIGNED_TABLE.rows for state in contract.STATES
]


#: What goes on in a state unless the command ends it (the table does not list it): the
#: erase's READY, the verify's DONE (the set-up's session has the right CRC).
BACKGROUND = {
    p.OtaState.ERASING: (("MSG_OTA_READY",), p.OtaState.RECEIVING),
    p.OtaState.VERIFYING: (("MSG_OTA_DONE",), p.OtaState.COMPLETE),
}


@pytest.mark.parametrize(
    ("table", "row", "state"),
    CELLS,
    ids=[f"{table}{row.id}-{state.name}" for table, row, state in CELLS],
)
def test_table_cell_holds_for_the_model(table: str, row: contract.Row, state: p.OtaState) -> None:
    """Each cell of the v1 table and of the signed-only rows (``signed:``, section 16.10)."""
    cell = row.cells[state]
    name = f"cell:{table}{row.id}:{state.name}"
    (vector,) = [v for v in DEVICE_VECTORS if v["name"] == name]
    *setup, last = vector["steps"]
    # the set-up reached the state the cell is about
    assert (setup[-1]["state"] if setup else "IDLE") == state.name, vector["name"]
    # the state right after the command (a frame with a bad CRC is never handled)
    assert [h["state"] for h in last["handled"]] == (
        [] if row.id == "bad_frame" else [cell.state.name]
    )
    tokens = []
    for entry in last["out"]:
        if "event" in entry:
            continue
        token = f"MSG_ERROR:{entry['code']}" if entry["type"] == "MSG_ERROR" else entry["type"]
        if state is p.OtaState.ERASING and token == "MSG_OTA_PROGRESS":
            continue  # the erase under way goes on (the table does not list its PROGRESS)
        if state is p.OtaState.VERIFYING and token == "MSG_OTA_ACK":
            continue  # the set-up's last window is still being written (its ACKs)
        tokens.append(token)
    expected, final = cell.reply + cell.then, cell.then_state or cell.state
    if not cell.then and cell.state is state and state in BACKGROUND:
        expected, final = expected + BACKGROUND[state][0], BACKGROUND[state][1]
    assert contract.matches(expected, tokens), (cell, tokens)
    assert last["state"] == final.name


def test_the_table_covers_every_state_and_command() -> None:
    for row in TABLE.rows:
        assert set(row.cells) == set(p.OtaState), row.id
        for cell in row.cells.values():
            for note in cell.notes:
                assert note in TABLE.notes, note
    commands = {row.command for row in TABLE.rows}
    # The table is a v1 device's; the two commands of signed updates are a v1 device's
    # unknown types (its "unknown type" row), and section 16.10 has their rows.
    signed = {p.MsgType.CMD_OTA_MANIFEST.name, p.MsgType.CMD_OTA_CONFIRM.name}
    assert {t.name for t in p.MsgType if t in p.COMMAND_TYPES} - signed <= commands


def test_section_16_has_the_rows_of_a_signed_only_device() -> None:
    section = DOC.split("### 16.10", 1)[1].split("### 16.11", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `CMD_")]
    commands = {line.split("`")[1] for line in rows}
    assert commands == {"CMD_OTA_MANIFEST", "CMD_OTA_START", "CMD_OTA_FINISH", "CMD_OTA_CONFIRM"}
    for code in ("BAD_MANIFEST", "UNTRUSTED_KEY", "BAD_SIGNATURE", "DOWNGRADE", "UNSIGNED"):
        assert f"ERROR({code})" in section, code
    assert "ERROR(DIGEST_MISMATCH)" in section


@pytest.mark.parametrize(
    ("tokens", "messages", "ok"),
    [
        (("A",), ["A"], True),
        (("A",), [], False),
        (("A?", "B"), ["B"], True),
        (("A?", "B"), ["A", "B"], True),
        (("A+", "B"), ["A", "A", "B"], True),
        (("A+", "B"), ["B"], False),
        ((), ["A"], False),
    ],
)
def test_token_matching(tokens: tuple[str, ...], messages: list[str], ok: bool) -> None:
    assert contract.matches(tokens, messages) is ok


# --- the document says the same ---------------------------------------------------------------


def _between(marker: str) -> str:
    m = re.search(rf"<!-- BEGIN {marker}[^>]*-->\n(.*?)<!-- END {marker} -->", DOC, re.DOTALL)
    assert m, f"docs/protocol.md has no {marker} block"
    return m.group(1)


def test_the_document_shows_the_command_state_table_of_the_data() -> None:
    assert _between("command-state") == contract.render_command_state_table()
    signed = contract.render_command_state_table(SIGNED_TABLE)
    assert _between("command-state-signed") == signed


def test_the_signed_rows_cover_both_new_commands_and_every_note() -> None:
    for row in SIGNED_TABLE.rows:
        assert set(row.cells) == set(p.OtaState), row.id
        for cell in row.cells.values():
            assert all(note in SIGNED_TABLE.notes for note in cell.notes), row.id
    commands = {row.command for row in SIGNED_TABLE.rows}
    assert {"CMD_OTA_MANIFEST", "CMD_OTA_CONFIRM"} <= commands


def test_the_document_shows_the_timing_obligations_of_the_data() -> None:
    assert _between("timing") == contract.render_timing_table()


def test_the_document_lists_every_error_code_state_and_message() -> None:
    for code in p.ErrorCode:
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", DOC, re.M), code
    for state in p.OtaState:
        assert re.search(rf"^\| {state.value} \| `{state.name}` \|", DOC, re.M), state
    for msg_type in p.MsgType:
        assert f"| `0x{msg_type.value:02X}` | `{msg_type.name}` |" in DOC, msg_type


def test_the_document_states_the_protocol_constants() -> None:
    for text in (
        f"{p.MAX_DATA_CHUNK}",
        f"{p.MAX_ERROR_TEXT} bytes",
        f"{p.MAX_FRAME} bytes",
        f"{TIMING.decoder_idle_s:g} s",
    ):
        assert text in DOC, text
