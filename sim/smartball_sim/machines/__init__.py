"""CI tooling, not the device: the machines that give CI a real kernel. A QEMU VM with
Debian's kernel and a real bluetoothd (:mod:`.vm`, :mod:`.vm_guest` runs inside it) and the
virtual controller on ``/dev/vhci`` that such a kernel drives (:mod:`.vhci`)."""
