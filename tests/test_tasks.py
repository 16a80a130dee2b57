"""Tests for mammolens.tasks: built-in tasks, encoding, prompts and tasks defined as data."""

import numpy as np
import pandas as pd
import pytest

from mammolens.tasks import Task, get_task, list_tasks, load_task, register_task


def test_list_tasks_has_builtins():
    assert {"density", "dense", "mias", "pathology"} <= set(list_tasks())


def test_density_encode_maps_values_and_missing_to_minus_one():
    task = get_task("density")
    s = pd.Series(["A", "b", " C ", "D", "", None, np.nan, "E"])
    np.testing.assert_array_equal(task.encode(s), [0, 1, 2, 3, -1, -1, -1, -1])


def test_encode_strict_raises_on_unknown_value():
    with pytest.raises(ValueError, match="'E'"):
        get_task("density").encode(["A", "E"], strict=True)


def test_dense_groups_density_classes():
    task = get_task("dense")
    assert task.label_column == "density" and task.class_names == ("non-dense", "dense")
    np.testing.assert_array_equal(task.encode(["A", "B", "C", "D", ""]), [0, 0, 1, 1, -1])


def test_mias_and_pathology_columns_and_values():
    mias = get_task("mias")
    assert mias.label_column == "mias_density" and mias.descriptions == ("fatty", "fatty-glandular", "dense-glandular")
    np.testing.assert_array_equal(mias.encode(["F", "G", "D"]), [0, 1, 2])
    path = get_task("pathology")
    np.testing.assert_array_equal(path.encode(["normal", "B", "M", "BENIGN_WITHOUT_CALLBACK", "x"]), [0, 1, 2, 1, -1])


def test_encode_matches_integer_floats():
    task = Task(name="t", label_column="c", class_names=("zero", "one"), class_values=(("0",), ("1",)))
    np.testing.assert_array_equal(task.encode(pd.Series([0.0, 1.0, np.nan])), [0, 1, -1])


def test_prompts_fill_description_and_name():
    prompts = get_task("density").prompts()
    assert len(prompts) == 4 and all(len(p) == len(get_task("density").templates) for p in prompts)
    assert prompts[0][0] == "a mammogram showing almost entirely fatty breast tissue"
    assert "breast density category C" in prompts[2]


def test_decode_roundtrip():
    task = get_task("density")
    assert task.decode(task.encode(["C", "", "A"])) == ["C", "", "A"]


def test_from_dict_roundtrip_and_defaults():
    task = Task.from_dict({"name": "calc", "label_column": "calc", "class_names": ["absent", "present"],
                           "class_values": [["no", "0"], ["yes", 1]], "templates": ["a mammogram with {} calc"]})
    assert task.descriptions == ("absent", "present")
    np.testing.assert_array_equal(task.encode(["NO", "1", "maybe"]), [0, 1, -1])
    assert Task.from_dict(task.to_dict()) == task


def test_from_dict_rejects_bad_definitions():
    with pytest.raises(ValueError, match="unknown task field"):
        Task.from_dict({"name": "x", "label_column": "c", "class_names": ["a", "b"], "colour": 1})
    with pytest.raises(ValueError, match="class_values has 1 entries"):
        Task.from_dict({"name": "x", "label_column": "c", "class_names": ["a", "b"], "class_values": [["a"]]})
    with pytest.raises(ValueError, match="no placeholder"):
        Task.from_dict({"name": "x", "label_column": "c", "class_names": ["a", "b"], "templates": ["plain"]})
    with pytest.raises(ValueError, match="listed for both"):
        Task.from_dict({"name": "x", "label_column": "c", "class_names": ["a", "b"],
                        "class_values": [["v"], ["V"]]})


def test_get_task_from_yaml_file(tmp_path):
    path = tmp_path / "birads.yaml"
    path.write_text("name: birads\nlabel_column: birads\nclass_names: ['1', '2', '3']\n"
                    "templates: ['BI-RADS {name} mammogram']\n")
    task = get_task(path)
    assert task.name == "birads" and task.prompts()[1] == ["BI-RADS 2 mammogram"]
    assert load_task(path) == task


def test_get_task_unknown_lists_choices():
    with pytest.raises(ValueError, match="density"):
        get_task("no-such-task")


def test_register_task_refuses_silent_overwrite():
    task = Task(name="tmp-task-test", label_column="c", class_names=("a", "b"))
    assert register_task(task) is task and get_task("tmp-task-test") is task
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task(name="tmp-task-test", label_column="other", class_names=("a", "b")))


def test_finding_tasks_encode_adapter_values():
    abn, lesion, malig = get_task("abnormality"), get_task("lesion_type"), get_task("malignancy")
    assert abn.label_column == "pathology" and lesion.label_column == "abnormality"
    assert list(abn.encode(["normal", "benign", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK", ""])) == [0, 1, 1, 1, -1]
    # CBIS-DDSM words, MIAS codes; both kinds on one image (or none) are unlabelled
    assert list(lesion.encode(["mass", "calcification", "SPIC", "CALC", "mass+calcification", "NORM"])) == [
        0, 1, 0, 1, -1, -1]
    assert list(malig.encode(["normal", "benign", "malignant", "M"])) == [-1, 0, 1, 1]
    assert abn.prompts()[1][0] == "a mammogram showing an abnormality, a mass or calcifications"
