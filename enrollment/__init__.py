"""Operator tools to enroll riders from photos or a camera, update their templates, and erase
them on request. Produces encrypted template galleries; keeps no face images unless the operator
opts in (``keep_photos``). See docs/enrollment.md.
"""
