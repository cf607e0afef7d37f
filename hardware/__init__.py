"""What touches the physical bus: camera sources (``cameras``), onnxruntime execution-provider
choice (``providers``: CPU, CUDA, TensorRT), door outputs (``door``: console, LEDs and buzzer,
display) and the systemd watchdog (``watchdog``). Imports nothing else of the project.
"""
