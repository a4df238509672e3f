"""benchmarks/position.py: the position questions it adds and the absolute-position check it reports."""

import json

from benchmarks.position import absolute_position_accuracy, position_samples
from cafe.data.samples import Sample
from cafe.data.shapes import Scene, ShapeObject, detailed_description
from cafe.evaluation.mmstar import options

RED = ShapeObject("red", "circle", "large", "top left")
BLUE = ShapeObject("blue", "square", "small", "top right")
GREEN = ShapeObject("green", "cross", "small", "bottom left")
CORNER = ShapeObject("yellow", "diamond", "large", "center")  # shares no row or column with GREEN or BLUE


def _detail(scene_id: str, objects: list[ShapeObject]) -> Sample:
    text = detailed_description(Scene(scene_id, objects, (128, 128, 128)))
    return Sample(id=f"{scene_id}-detail", image=f"images/{scene_id}.png", prompt="Describe.", answer=text)


def test_every_ordered_pair_sharing_a_row_or_column_is_asked_with_its_true_answer():
    samples = [_detail("s0", [RED, BLUE, GREEN]), _detail("s1", [CORNER, GREEN]),
               Sample(id="s0-brief", image="images/s0.png", prompt="Describe.", answer=detailed_description(
                   Scene("s0", [RED, BLUE], (128, 128, 128))))]  # not a detailed record: asks nothing
    asked = position_samples(samples)
    # s0: red/blue share the top row, red/green the left column (both orders); blue/green and s1's pair share neither
    assert len(asked) == 4
    answers = {}
    for s in asked:
        opts = options(s.prompt)
        answers[s.prompt.split("\n")[0]] = opts[s.answer]
    assert answers == {
        "Where is the red circle relative to the blue square?": "left",
        "Where is the blue square relative to the red circle?": "right",
        "Where is the red circle relative to the green cross?": "above",
        "Where is the green cross relative to the red circle?": "below",
    }
    assert len({s.id for s in asked}) == len(asked)


def test_absolute_position_counts_only_correctly_named_objects(tmp_path):
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps({"a.png": [{"colour": "red", "shape": "circle", "size": "large",
                                                  "position": "top left"},
                                                 {"colour": "blue", "shape": "square", "size": "small",
                                                  "position": "top right"}]}))
    right = ShapeObject("red", "circle", "large", "top left")
    wrong_cell = ShapeObject("blue", "square", "small", "bottom")
    absent = ShapeObject("green", "cross", "small", "center")
    text = detailed_description(Scene("a", [right, wrong_cell, absent], (128, 128, 128)))
    descriptions = tmp_path / "descriptions.jsonl"
    descriptions.write_text(json.dumps({"image": "a.png", "description": text}) + "\n")
    accuracy, named = absolute_position_accuracy(descriptions, annotations)
    assert named == 2 and accuracy == 0.5
