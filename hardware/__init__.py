"""What touches the physical bus: camera sources, onnxruntime execution-provider choice (CPU,
CUDA, TensorRT), door feedback (console, LED, buzzer, display) and deployment files.
"""
