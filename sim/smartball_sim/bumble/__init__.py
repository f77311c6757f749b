"""The simulated SmartBall on Google's Bumble BLE stack (needs ``bumble``: the ``bumble``
extra of pytest-smartball).

* :mod:`.peripheral`: ``serve_smartball(device, link)`` serves a SimDevice as a Bumble
  peripheral on a Bumble radio bus (see its docstring for the API and the fault mapping);
* :mod:`.central`: a Bumble central behind bleak's backend interface (``BumbleWorld``),
  so the unchanged OTA engine and NusLink reach the device through real ATT;
* :mod:`.local_link`: the radio bus (``SmartBallLink``) and how a link dies on it.
"""
