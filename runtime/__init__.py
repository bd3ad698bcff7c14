"""rmio.runtime: wire protocol, transport, membership, election, history sync, launcher
(torch-free)."""
