"""The simulated SmartBall's firmware: the Python reference model of docs/protocol.md and
the glue that runs the C core in its place, behind the same seams.

* ``model.py``: :class:`~smartball_sim.firmware.model.SmartBallFirmware`, its reception,
  commands and reset guard; its parts ``erase.py`` (erasing), ``data.py`` (DATA),
  ``activation.py`` (FINISH, verify, activation), ``signed.py`` (manifests and
  the bootloader :class:`~smartball_sim.firmware.signed.SignedBootloader`), ``swap.py`` (the
  bootloader's swap), ``parts.py`` (what the parts share), ``types.py`` (its data types).
* ``flash.py``: the NVMC and the staging bank; ``flash_controller.py``: the firmware's
  queue of flash jobs (a collaborator the model holds); ``bugs.py`` and ``bugs.json``: the catalogue
  of firmware bugs the model can be told to have.
* ``c_core.py``: building and loading ``firmware/``'s C core; ``c_firmware.py``: that core
  behind the model's interface.
"""
