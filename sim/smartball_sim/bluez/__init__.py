"""An emulated BlueZ (``org.bluez`` on a private D-Bus) serving simulated SmartBalls, so the
real ``--device=real`` path (stock bleak, its BlueZ backend, dbus-fast, a real
``dbus-daemon``) runs in CI. See ``docs/faults.md`` ("Emulated BlueZ").

Start it with :mod:`.launcher` (``EmulatedBluez``, ``emulated_smartball``); the bluetoothd
itself is :mod:`.emulator`. The package imports nothing itself, so :mod:`.errors` (BlueZ's
words, which the in-process bleak front speaks too) loads without D-Bus."""
