"""The bus node: capture, detect, quality and smile gate, align, embed, match, decide, charge
in a local ledger, give feedback, and queue fares in an outbox. Runs with numpy, OpenCV and
onnxruntime only; never imports dlib. ``edge.faces`` is the small public face API.
"""
