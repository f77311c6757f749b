"""The bleak fronts onto simulated SmartBalls: the in-process bleak backend
(:mod:`.in_process`), what it shares with the Bumble central (:mod:`.bleak_base`), and the
thread-hosted event loop the blocking fronts run their devices on (:mod:`.background_loop`)."""
