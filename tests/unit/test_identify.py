"""``edge.faces.identify``: the bus's single-frame identification rule as a public function.

The bus pipeline and ``identify`` run the same code (``edge.faces.match.Rule``): these tests pin
the rule's cases and that the pipeline's vote uses it unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge import faces
from edge.door.pipeline import BusPipeline, PipelineConfig
from edge.faces.match import DEFAULT_MIN_MARGIN, DEFAULT_THRESHOLD, Gallery, Match, Rule, identify_match


def _unit(i: int, dim: int = 128) -> np.ndarray:
    v = np.zeros(dim)
    v[i] = 1.0
    return v


def test_identify_names_the_close_unambiguous_rider():
    known = [_unit(0), _unit(1), _unit(2)]
    assert faces.identify(known, ["a", "b", "c"], _unit(0) * 0.9) == "a"  # 0.1 away, others ~1.35


def test_identify_refuses_far_ambiguous_and_empty():
    known = [_unit(0), _unit(1)]
    assert faces.identify(known, ["a", "b"], _unit(2)) is None  # nobody within the threshold
    between = (_unit(0) + _unit(1)) / 2  # 0.707 from both
    assert faces.identify([_unit(0), _unit(0) * 0.6 + _unit(1) * 0.1], ["a", "b"], _unit(0) * 0.8) is None
    assert faces.identify(known, ["a", "b"], between) is None
    assert faces.identify([], [], _unit(0)) is None


def test_identify_takes_a_names_nearest_encoding_and_its_margin_to_other_names():
    # two encodings of "a" close together are not ambiguous with each other
    known = [_unit(0), _unit(0) * 0.95 + _unit(3) * 0.05, _unit(1)]
    assert faces.identify(known, ["a", "a", "b"], _unit(0) * 0.9) == "a"


def test_identify_checks_lengths():
    with pytest.raises(ValueError):
        faces.identify([_unit(0)], ["a", "b"], _unit(0))


def test_default_rule_is_the_bus_default_config():
    cfg = PipelineConfig()
    assert (cfg.match_threshold, cfg.min_margin) == (DEFAULT_THRESHOLD, DEFAULT_MIN_MARGIN)
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = cfg
    assert pipe._rule() == Rule()


@pytest.mark.parametrize(
    ("match", "accepted"),
    [
        (Match("a", 0.40, 0.20), True),
        (Match("a", DEFAULT_THRESHOLD, DEFAULT_MIN_MARGIN), True),  # both bounds inclusive
        (Match("a", 0.40, 0.05), False),  # too close to another rider
        (Match("a", 0.55, 1.00), False),  # too far
        (Match(None, float("inf"), float("inf")), False),
    ],
)
def test_pipeline_vote_and_identify_agree(match, accepted):
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = PipelineConfig()
    assert pipe._accepts(match) is accepted
    assert Rule().accepts(match) is accepted
    assert (Rule().charges(match) is not None) is accepted


def test_second_factor_rule_never_charges_on_the_face_alone():
    rule = Rule(second_factor=True)
    m = Match("a", 0.2, 0.5)
    assert rule.accepts(m) and rule.charges(m) is None


def test_identify_on_fixture_photos(templates, face_engine, faces_dir):
    """Enrolled riders' other photos are named; the rule matches identify_match on a Gallery."""
    names = list(templates)
    known = [templates[n] for n in names]
    for probe, expected in [("obama2.jpg", "obama"), ("biden2.jpg", "biden"), ("kit_harington2.jpeg", "kit")]:
        img = faces.load_image_file(faces_dir / probe)
        rect = max(face_engine.detect(img, 1, "hog"), key=lambda d: d.rect.area).rect
        code = face_engine.embed(face_engine.chips(img, face_engine.landmarks(img, [rect], "small")))[0]
        assert faces.identify(known, names, code) == expected
        assert identify_match(Gallery(names, np.stack(known)), code) == expected
