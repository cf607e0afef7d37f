"""What runs on the bus without a network, in three parts:

* ``edge.faces``: the face library (detect, landmarks, align, embed, match) with
  face_recognition's public API, on numpy, OpenCV and onnxruntime only (never dlib);
* ``edge.door``: the door's policy, from camera frames to one decision per rider;
* ``edge.fares``: the money, from fare rules to the offline ledger and its outbox.

``faces`` and ``fares`` stand alone; ``door`` uses both.
"""
