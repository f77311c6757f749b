"""The contract monitor: every frame both ways checked against protocol v1, as data.

A pure state machine in the contract layer (no I/O, no clock, no simulator): it is told
what the host wrote (``observe_host_bytes``), what the device notified
(``observe_device_bytes``), when the link came and went, and what the test knows happened
to the device (a reset, a fault a simulated link injected), each with a time in seconds.
From that alone it follows the device's side of the contract (docs/protocol.md): the
device's command decoder (section 4), its session state, image, offsets, window, ACK
interval, rate limits and erase progress (section 7), the timing obligations
(``contract/timing.json``) and the activation (section 9), and records a
:class:`Violation` for the first frame, or the first silence, that breaks a rule. The rules
and where in the contract each comes from are listed in docs/protocol.md, section 15, and
in :data:`RULES`.

Replies are judged in the order the device handles commands (section 7.2: one at a time, in
order): a command the device received is *pending* until the device's output shows it was
handled (its reply, or a later command's), or until its reply is overdue. Messages that
follow no command (PROGRESS, READY, ACK, DONE) are checked against the work under way.

Where the monitor cannot know what the device received (the link dropped, a simulated
fault lost or damaged a frame, the host sent a frame in the decoder's idle band, or
exceeded its credit), it says so to itself: the model is *unsure* until a MSG_OTA_STATUS
shows the device's state again, and nothing that depends on the unknown is judged. What
survives a link drop is still judged: the session (section 7.7), the ACKed bytes.
"""

from .contract_monitor import ContractMonitor
from .rules import RULES, Violation, rules_documented
from .state import DEFAULT_MARGIN_S

__all__ = ["DEFAULT_MARGIN_S", "RULES", "ContractMonitor", "Violation", "rules_documented"]
