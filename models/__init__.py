"""Model conversion: turns the trained dlib networks shipped in the PyPI package
``face_recognition_models`` into artefacts the bus runs without dlib (ONNX graphs for the
face embedder and the CNN face detector, numpy ``.npz`` files for the landmark predictors and
the HOG detector), and writes a manifest of their hashes that ``facefare models verify`` and the
edge check before use. dlib itself is only needed here at conversion time, as a reference.
"""
