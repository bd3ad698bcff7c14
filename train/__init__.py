"""rmio.train: PyTorch training of world models and policies, and ONNX export."""
