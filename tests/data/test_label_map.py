"""label_map.pbtxt in the TF OD API's format, and the one place ids become model indices."""

import numpy as np
import pytest

from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.errors import DataError

# As the TF OD API ships them: comments, both quote styles, optional fields.
API_STYLE = """
# From object_detection/data/ style files
item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item {
  name: '/m/0199g'
  id: 3
  display_name: 'bicycle'
  keypoints { id: 0 label: "nose" }
  frequency: FREQUENT
}
"""


def test_reads_api_style_label_map_with_comments_quotes_and_extra_fields():
    labels = LabelMap.from_pbtxt_text(API_STYLE)
    assert labels.ids == [1, 3]
    assert labels.names == ["/m/01g317", "/m/0199g"]
    assert labels.item_of_id(3).display_name == "bicycle"
    assert labels.id_of_name("bicycle") == 3  # display names resolve too


def test_ids_with_gaps_map_to_contiguous_indices_and_back():
    labels = LabelMap.from_pbtxt_text(API_STYLE)
    np.testing.assert_array_equal(labels.ids_to_indices([3, 1, 3]), [1, 0, 1])
    np.testing.assert_array_equal(labels.indices_to_ids([1, 0]), [3, 1])


def test_write_then_read_gives_the_same_map(tmp_path):
    labels = LabelMap.from_names(["RBC", "WBC", "Platelets"])
    path = labels.write(tmp_path / "label_map.pbtxt")
    assert LabelMap.read(path) == labels
    assert "item {" in path.read_text() and 'name: "RBC"' in path.read_text()


@pytest.mark.parametrize("text, message", [
    ("item { id: 0 name: 'background' }", "ids start at 1"),
    ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "id 1 is used by two classes"),
    ("item { id: 1 name: 'a' } item { id: 2 name: 'a' }", "name 'a' is used by ids 1 and 2"),
    ("item { name: 'a' }", "has no id"),
    ("item { id: 1 nmae: 'a' }", "not a valid label map"),
    ("", "no classes"),
])
def test_invalid_label_maps_are_refused_with_the_reason(text, message):
    with pytest.raises(DataError, match=message):
        LabelMap.from_pbtxt_text(text, source="my_map.pbtxt")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.pbtxt: label map file not found"):
        LabelMap.read(tmp_path / "nowhere.pbtxt")


def test_unknown_ids_and_indices_are_errors():
    labels = LabelMap.from_names(["a", "b"])
    with pytest.raises(DataError, match="class id 9 is not in the label map"):
        labels.ids_to_indices([1, 9])
    with pytest.raises(DataError, match="out of range"):
        labels.indices_to_ids([2])


def test_ids_to_indices_keeps_the_shape_and_names_an_unknown_id():
    labels = LabelMap([LabelMapItem(7, "b", "b"), LabelMapItem(2, "a", "a")])
    np.testing.assert_array_equal(labels.ids_to_indices([[2, 7], [7, 7]]), [[0, 1], [1, 1]])
    assert labels.ids_to_indices(np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(DataError, match="class id 5 is not"):
        labels.ids_to_indices([2, 5, 99])
