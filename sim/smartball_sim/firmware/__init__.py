"""The simulated SmartBall's firmware: the Python reference model of docs/protocol.md and
the glue that runs the C core in its place, behind the same seams.

* ``model.py``: :class:`~smartball_sim.firmware.model.SmartBallFirmware`, its reception,
  commands and reset guard; the collaborators it holds, each reaching it through a narrow
  owner protocol, are in ``erase.py`` (erasing), ``data.py`` (DATA), ``activation.py``
  (FINISH, verify, activation) and ``signed.py`` (manifests and confirm; and the bootloader
  :class:`~smartball_sim.firmware.signed.SignedBootloader` the model and the C core both
  hold); ``swap.py`` is the bootloader's swap, ``types.py`` the model's data types.
* ``flash.py``: the NVMC and the staging bank; ``flash_controller.py``: the firmware's
  queue of flash jobs (a collaborator the model holds); ``bugs.py`` and ``bugs.json``: the catalogue
  of firmware bugs the model can be told to have.
* ``c_core.py``: building and loading ``firmware/``'s C core; ``c_firmware.py``: that core
  behind the model's interface.
"""
