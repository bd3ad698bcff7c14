"""rmio.coordinator: world-model reconstruction service (on an agent or a standalone node);
torch-free."""
