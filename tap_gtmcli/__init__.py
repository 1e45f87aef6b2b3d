"""Singer tap, mapper and target for GTMCLI, with a local GTMCLI-compatible sandbox."""
