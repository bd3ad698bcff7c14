"""rmio.agents: the agent process (ONNX actor, local history ring, loss handling); torch-free."""
