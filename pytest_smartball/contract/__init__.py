"""The protocol contract as data: the command x state table, the device's timing obligations
and the test vectors, read from the JSON files beside this module. This package is the ground
floor the client and the simulator both stand on: the codec (``codec``), the signed image's
manifest (``manifest``) and its signatures (``signing``) live here too.

Pure: no I/O but reading its own package data, so the simulator, the client and the HIL
suite on a real bench all read the same files. ``docs/protocol.md`` renders the table and
the timings from here (``render_command_state_table``, ``render_timing_table``) and a test
checks that the document says the same. The vectors are generated from the reference
model (``python -m smartball_sim.contract_vectors --write``) and read by tests, and by the
firmware team's C tests: hex in, frames / replies / states out. The catalogue of firmware
bugs that break the contract lives beside the simulator that consults it
(``smartball_sim/firmware/bugs.json``); ``firmware_bugs`` reads it from there without
importing the simulator, so that ``--help`` can list the names.
And the device's flash layout (``flash_layout``): where the application lives and the
staging area's capacity, read by the client's image intake and by the simulator.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import codec as p

STATES: tuple[p.OtaState, ...] = tuple(p.OtaState)


def _read(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(name).read_text("utf-8"))


# --- the command x state table ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    """What one command case does in one state."""

    #: Messages the command causes, in order: "MSG_OTA_STATUS", "MSG_ERROR:BAD_STATE", ...
    reply: tuple[str, ...]
    #: The state once the command is handled.
    state: p.OtaState
    #: What follows without another command ("X+": one or more, "X?": zero or one) ...
    then: tuple[str, ...] = ()
    #: ... and the state after it (None: nothing follows).
    then_state: p.OtaState | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    command: str
    case: str
    cells: dict[p.OtaState, Cell]


@dataclass(frozen=True, slots=True)
class CommandStateTable:
    about: str
    rows: tuple[Row, ...]
    notes: dict[str, str]

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)


def _cell(data: dict[str, Any]) -> Cell:
    then_state = data.get("then_state")
    return Cell(
        reply=tuple(data["reply"]),
        state=p.OtaState[data["state"]],
        then=tuple(data.get("then", ())),
        then_state=p.OtaState[then_state] if then_state else None,
        notes=tuple(data.get("notes", ())),
    )


def _table(data: dict[str, Any]) -> CommandStateTable:
    rows = tuple(
        Row(
            r["id"],
            r["command"],
            r["case"],
            {p.OtaState[state]: _cell(cell) for state, cell in r["cells"].items()},
        )
        for r in data["rows"]
    )
    return CommandStateTable(data["about"], rows, dict(data["notes"]))


@functools.cache
def command_state_table() -> CommandStateTable:
    """The table of a device without SIGNED_IMAGES (a v1 device; section 7.2)."""
    data = _read("command_state.json")
    assert data["states"] == [s.name for s in STATES], "the table's states are the protocol's"
    return _table(data)


@functools.cache
def signed_command_state_table() -> CommandStateTable:
    """The rows that differ on a device with SIGNED_IMAGES (section 16.10): the two new
    commands and the manifest checks of START and FINISH; every other row is the v1 one."""
    return _table(_read("command_state.json")["signed_only"])


def message_token(msg: p.Message) -> str:
    """A message as the table names it: its type name, with the code for MSG_ERROR."""
    if isinstance(msg, p.MsgError):
        return f"MSG_ERROR:{msg.code_name}"
    return msg.TYPE.name


def matches(tokens: tuple[str, ...], messages: list[str]) -> bool:
    """Whether message tokens (see :class:`Cell`) match the tokens of messages, in order."""
    if not tokens:
        return not messages
    head, rest = tokens[0], tokens[1:]
    if head.endswith("?"):
        name = head[:-1]
        return matches(rest, messages) or (
            bool(messages) and messages[0] == name and matches(rest, messages[1:])
        )
    if head.endswith("+"):
        name = head[:-1]
        if not messages or messages[0] != name:
            return False
        n = 1
        while n < len(messages) and messages[n] == name:
            n += 1
        return any(matches(rest, messages[k:]) for k in range(1, n + 1))
    return bool(messages) and messages[0] == head and matches(rest, messages[1:])


def _short(token: str) -> str:
    name = token.rstrip("+?")
    suffix = token[len(name) :]
    if name.startswith("MSG_ERROR:"):
        short = f"ERROR({name.split(':')[1]})"
    else:
        short = name.removeprefix("MSG_OTA_").removeprefix("MSG_")
    return short + {"+": "…", "?": "?", "": ""}[suffix]


def render_cell(cell: Cell, note_numbers: dict[str, int], state: p.OtaState) -> str:
    text = ", ".join(_short(t) for t in cell.reply) or "—"
    if cell.state != state:
        text += f" → {cell.state.name}"
    if cell.then or cell.then_state:
        then = ", ".join(_short(t) for t in cell.then)
        text += f"; then {then} → {cell.then_state.name if cell.then_state else '?'}"
    if cell.notes:
        text += " " + "".join(f"[{note_numbers[n]}]" for n in cell.notes)
    return text


def render_command_state_table(table: CommandStateTable | None = None) -> str:
    """The table as docs/protocol.md shows it (Markdown), notes numbered below it."""
    table = table or command_state_table()
    order: list[str] = []
    for row in table.rows:
        for state in STATES:
            for note in row.cells[state].notes:
                if note not in order:
                    order.append(note)
    numbers = {note: i for i, note in enumerate(order, start=1)}
    lines = [
        "| command | case | " + " | ".join(s.name for s in STATES) + " |",
        "|---|---|" + "---|" * len(STATES),
    ]
    for row in table.rows:
        cells = [render_cell(row.cells[s], numbers, s) for s in STATES]
        lines.append(f"| `{row.command}` | {row.case or 'any'} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"[{numbers[n]}] {table.notes[n]}  " for n in order)
    return "\n".join(lines).rstrip() + "\n"


# --- timing obligations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Obligation:
    name: str
    seconds: float
    start: str
    end: str
    per_megabyte_s: float = 0.0
    after_activation_s: float | None = None
    #: Signed updates: a reset that swaps the banks takes at most this much more per page.
    after_swap_per_page_s: float | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """The device's timing obligations (seconds, maxima)."""

    obligations: tuple[Obligation, ...]

    def __getitem__(self, name: str) -> Obligation:
        return next(o for o in self.obligations if o.name == name)

    @property
    def progress_gap_max_s(self) -> float:
        return self["progress_gap_max_s"].seconds

    @property
    def ready_after_erase_max_s(self) -> float:
        return self["ready_after_erase_max_s"].seconds

    @property
    def ack_latency_max_s(self) -> float:
        return self["ack_latency_max_s"].seconds

    @property
    def reply_max_s(self) -> float:
        return self["reply_max_s"].seconds

    def verify_max_s(self, image_size: int) -> float:
        o = self["verify_max_s"]
        return o.seconds + o.per_megabyte_s * image_size / 1_000_000

    @property
    def done_to_disconnect_max_s(self) -> float:
        return self["done_to_disconnect_max_s"].seconds

    def reset_to_advertising_max_s(self, activation: bool) -> float:
        o = self["reset_to_advertising_max_s"]
        if activation and o.after_activation_s is not None:
            return o.after_activation_s
        return o.seconds

    def reset_to_advertising_after_swap_max_s(self, pages: int) -> float:
        """A signed-only device's reset that swaps ``pages`` 4 KiB pages (the larger of the
        new and the previous image; docs/protocol.md section 16.4)."""
        o = self["reset_to_advertising_max_s"]
        return o.seconds + (o.after_swap_per_page_s or 0.0) * pages

    @property
    def decoder_idle_s(self) -> float:
        return self["decoder_idle_s"].seconds


@functools.cache
def timing() -> Timing:
    data = _read("timing.json")
    return Timing(
        tuple(
            Obligation(
                o["name"],
                o["seconds"],
                o["from"],
                o["to"],
                o.get("per_megabyte_s", 0.0),
                o.get("after_activation_s"),
                o.get("after_swap_per_page_s"),
            )
            for o in data["obligations"]
        )
    )


def render_timing_table() -> str:
    lines = ["| obligation | at most | from | to |", "|---|---|---|---|"]
    for o in timing().obligations:
        limit = f"{o.seconds:g} s"
        if o.per_megabyte_s:
            limit += f" + {o.per_megabyte_s:g} s per MB"
        if o.after_activation_s is not None:
            limit += f" ({o.after_activation_s:g} s after an activation"
            if o.after_swap_per_page_s is not None:
                limit += f"; + {o.after_swap_per_page_s:g} s per 4 KiB page after a swap"
            limit += ")"
        lines.append(f"| `{o.name}` | {limit} | {o.start} | {o.end} |")
    return "\n".join(lines) + "\n"


# --- the catalogue of firmware bugs -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareBugEntry:
    """A bug the simulated firmware can be told to have: its switch and what it breaks."""

    name: str
    #: What a real firmware with this bug does wrong (one or two sentences).
    what: str
    #: The rule of docs/protocol.md it breaks (section numbers, obligations).
    breaks: str


@functools.cache
def firmware_bugs() -> tuple[FirmwareBugEntry, ...]:
    """The catalogue (``smartball_sim/firmware/bugs.json``): the switches of
    ``--sim-firmware-bug``. Found by the simulator package's location, not imported: the
    CLI's and the plugin's ``--help`` list these names and must not load the simulator."""
    data = json.loads(_simulator_catalogue().read_text("utf-8"))
    return tuple(FirmwareBugEntry(b["name"], b["what"], b["breaks"]) for b in data["bugs"])


def _simulator_catalogue() -> Path:
    # find_spec of a top-level name locates the package without running its code.
    spec = importlib.util.find_spec("smartball_sim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the firmware-bug catalogue lives in the smartball_sim package, which is not "
            "installed: install pytest-smartball (it ships both packages)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "firmware" / "bugs.json"


def render_firmware_bugs() -> str:
    """The catalogue as docs/firmware-bugs.md shows it (Markdown)."""
    lines = ["| bug | what a real firmware does wrong | breaks |", "|---|---|---|"]
    lines += [f"| `{b.name}` | {b.what} | {b.breaks} |" for b in firmware_bugs()]
    return "\n".join(lines) + "\n"


# --- the flash layout -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlashLayout:
    """Where a SmartBall keeps its application (``flash_layout.json``; addresses in bytes)."""

    flash_size: int
    page_size: int
    #: The address the bootloader copies an image's first byte to: images are linked here.
    application_start: int
    #: The largest image an update can carry (MSG_INFO's ``staging_capacity``).
    staging_capacity: int

    @property
    def application_end(self) -> int:
        """One past the last address an image can fill."""
        return self.application_start + self.staging_capacity


@functools.cache
def flash_layout() -> FlashLayout:
    data = _read("flash_layout.json")
    return FlashLayout(
        data["flash_size"], data["page_size"], data["application_start"], data["staging_capacity"]
    )


# --- vectors --------------------------------------------------------------------------------

VECTOR_FILES = ("codec.json", "decoder.json", "device.json", "manifest.json")


def vectors(name: str) -> dict[str, Any]:
    """One vector file (``codec.json``, ``decoder.json`` or ``device.json``), as JSON."""
    if name not in VECTOR_FILES:
        raise KeyError(f"no vector file {name!r} (one of {', '.join(VECTOR_FILES)})")
    return _read(f"vectors/{name}")


def vector_text(name: str) -> str:
    """A vector file's text exactly as packaged (what the generator's --check compares)."""
    return resources.files(__name__).joinpath("vectors", name).read_text("utf-8")
