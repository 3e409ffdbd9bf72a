"""User files, packaged datasets and the stratified split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferlab.data.catalog import load_dataset
from transferlab.data.sources import LabeledData, load_user_file
from transferlab.data.splits import (
    Split,
    _stratified_take,
    cross_validation_splits,
    folds_for_classes,
    restore_classes,
    stratified_split,
    stratified_subset,
)
from transferlab.errors import UserError


def _write(tmp_path, name, frame):
    path = tmp_path / name
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path),
    }[name.rsplit(".", 1)[1]]()
    return path


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl", "data.parquet"])
def test_three_formats_with_string_labels(tmp_path, name):
    frame = pd.DataFrame({"review": ["good", "bad", "fine", "awful"], "y": ["pos", "neg", "pos", "neg"]})
    data = load_user_file(_write(tmp_path, name, frame), text_column="review", label_column="y")
    assert data.label_names == ["neg", "pos"]
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert data.asset.hashes[name]


def test_integer_labels_keep_numeric_order(tmp_path):
    frame = pd.DataFrame({"text": list("abcdef"), "label": [10, 2, 2, 10, 1, 1]})
    data = load_user_file(_write(tmp_path, "d.csv", frame))
    assert data.label_names == ["1", "2", "10"]
    assert data.labels.tolist() == [2, 1, 1, 2, 0, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("txt,label\nhello,1\nworld,0\n", "no column 'text'; did you mean 'txt'?"),
        ("text,lable\nhello,1\nworld,0\n", "no column 'label'; did you mean 'lable'?"),
        ("", "the file is empty"),
        ("text,label\n", "no rows"),
        ("text,label\nhello,1\nworld,1\n", "single class"),
        ("text,label\n ,1\n,0\n", "every 'text' is empty"),
        ("text,label\nhello,1\nworld,\n", "row 2 has no label"),
    ],
)
def test_bad_files_give_one_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_user_file(path)


def test_empty_texts_are_left_out_with_their_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,1\n  ,0\nworld,0\n,1\nagain,1\n")
    data = load_user_file(path)
    assert data.inputs == ["hello", "world", "again"]
    assert data.labels.tolist() == [1, 0, 1]
    assert data.rows.tolist() == [1, 3, 5] and data.empty_rows == [2, 4]


@pytest.mark.parametrize(
    "suffix, header, rows, message",
    [
        # a label error below empty texts is named with its own row, not one row earlier for each empty text above
        (".csv", "text,label", ["a,1", ",0", " ,1", "b,"], "row 4 has no label"),
        (".csv", "text,toxic,spam", ["a,1,0", ",1,1", "b,0,yes"], "row 3 has 'yes' in label column 'spam'"),
        (".csv", "text,toxic,spam", ["a,1,0", ",1,1", "b,,1"], "row 3 has no value in label column 'toxic'"),
    ],
)
def test_a_label_error_names_its_row_in_the_file(tmp_path, suffix, header, rows, message):
    path = tmp_path / f"d{suffix}"
    path.write_text("\n".join([header, *rows]) + "\n")
    columns = header.split(",")[1:]
    with pytest.raises(UserError, match=message):
        load_user_file(path, label_column=columns[0] if len(columns) == 1 else columns)


def test_words_pandas_would_read_as_missing_are_texts_and_labels(tmp_path):
    """ "None" is LUIS's standard intent, "NA" a country code, "N/A" a survey answer: a CSV cell holds text."""
    path = tmp_path / "d.csv"
    path.write_text("text,label\nNone,None\nNA,greeting\nN/A,None\nnull,greeting\n")
    data = load_user_file(path)
    assert data.inputs == ["None", "NA", "N/A", "null"] and data.label_names == ["None", "greeting"]
    assert data.empty_rows == []


def test_labels_are_read_as_written(tmp_path):
    """Spaces around a label do not make a class; a blank row does not turn 0/1 into 0.0/1.0 (a column with a gap
    reads as floats); codes keep their leading zeros; a blank label is missing."""
    path = tmp_path / "d.csv"
    path.write_text("text,label,code\na,pos ,01\nb, neg,02\nc,pos,01\n,,\nd,neg,02\n")
    assert load_user_file(path).label_names == ["neg", "pos"]
    assert load_user_file(path, label_column="code").label_names == ["01", "02"]
    numbers = tmp_path / "n.csv"
    numbers.write_text("text,label\na,1\nb,0\n,\nc,1\n")
    assert load_user_file(numbers).label_names == ["0", "1"]
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text('{"text": "a", "label": 1.0}\n{"text": "b", "label": 0.0}\n{"text": "c", "label": " "}\n')
    with pytest.raises(UserError, match="row 3 has no label"):
        load_user_file(jsonl)
    unlabelled = tmp_path / "u.csv"
    unlabelled.write_text("text,label\na,\nb,\n")
    with pytest.raises(UserError, match="has no labels at all; at least 2 are needed"):
        load_user_file(unlabelled, label_separator=";")


def test_json_labels_are_read_as_written(tmp_path):
    """JSON text that reads as a number stays text: codes 01 and 1 are two classes, as they are in a CSV."""
    jsonl = tmp_path / "codes.jsonl"
    jsonl.write_text('{"text": "a", "label": "01"}\n{"text": "b", "label": "1"}\n{"text": "c", "label": "02"}\n')
    assert load_user_file(jsonl).label_names == ["01", "1", "02"]  # in numeric order, as a CSV's codes are
    table = tmp_path / "codes.json"
    table.write_text('[{"text": "a", "label": "01"}, {"text": "b", "label": "02"}]')
    assert load_user_file(table).label_names == ["01", "02"]


def test_cells_that_look_the_same_are_the_same(tmp_path):
    """A label typed composed (é) or decomposed (e + combining accent), or with a zero-width space, is one class; a text
    of nothing but a byte-order mark is empty; copies of one review that differ only so are one group."""
    from transferlab.data.checks import duplicate_groups

    path = tmp_path / "d.csv"
    path.write_text("text,label\nbon film,n\u00e9gatif\nmauvais,ne\u0301gatif\nsuper,positif\u200b\n\ufeff,positif\ngrand,positif\n")
    data = load_user_file(path)
    assert data.label_names == ["n\u00e9gatif", "positif"] and data.empty_rows == [4]
    groups = duplicate_groups(
        ["Caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me\u200b", "\uff43\uff41\uff46\u00e9 cr\u00e8me", "other"], "text"
    )
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_multi_label_data_with_fewer_examples_than_folds_is_refused_in_one_line():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    data = LabeledData(["a", "b", "c", "d"], labels, ["x", "y"])
    with pytest.raises(UserError, match="4 distinct inputs cannot make 5 folds"):
        cross_validation_splits(data, None, 5)


def test_list_cells_are_sets_of_labels(tmp_path):
    """A JSONL or Parquet column of lists (how Hugging Face datasets such as go_emotions export) is multi-label data."""
    frame = pd.DataFrame({"text": ["a", "b", "c"], "labels": [["news", "sport"], ["news"], []]})
    for path in (_write(tmp_path, "d.jsonl", frame), _write(tmp_path, "d.parquet", frame)):
        data = load_user_file(path, label_column="labels")
        assert data.label_names == ["news", "sport"] and data.labels.tolist() == [[1, 1], [1, 0], [0, 0]]


def test_label_columns_read_text_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,toxic,spam\na,1.0,true\nb,0,False\nc,1,0\n")
    data = load_user_file(path, label_column=["toxic", "spam"])
    assert data.labels.tolist() == [[1, 1], [0, 0], [1, 0]]


def test_a_byte_order_mark_is_not_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('\ufeff{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n'.encode())
    assert load_user_file(path).inputs == ["a", "b"]


def test_a_stray_quote_in_a_tsv_is_named(tmp_path):
    """An unmatched quote makes the parser read on to the next quote, tabs and rows included, into one cell."""
    path = tmp_path / "d.tsv"
    path.write_text('text\tlabel\n"so good\tpos\nbad\tneg\nfine"\tpos\nok\tneg\n')
    with pytest.raises(UserError, match="row 1's 'text' holds a tab"):
        load_user_file(path)
    path.write_text('text\tlabel\nso good\tpos\n"a\ttabbed"\tneg\n')  # a quoted tab, as pandas writes one
    assert load_user_file(path).inputs == ["so good", "a\ttabbed"]


def test_a_parquet_index_does_not_renumber_rows(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, 0.0, None]}, index=[30, 10, 20])
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)  # pandas stores a non-default index in the file
    with pytest.raises(UserError, match="row 3 has no label"):
        load_user_file(path)


def test_non_utf8_and_unknown_type(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\nthé,0\n".encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_user_file(latin)
    other = tmp_path / "data.xlsx"
    other.write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        load_user_file(other)
    with pytest.raises(UserError, match="unknown dataset 'nonsense'"):
        load_dataset("nonsense")


@pytest.mark.integration
def test_rt_polarity_is_the_balanced_sentence_set():
    data = load_dataset("rt-polarity")
    assert len(data) == 8530 and data.class_counts() == {"negative": 4265, "positive": 4265}
    assert len(set(data.inputs)) == len(data.inputs)


@pytest.mark.integration
def test_bbc_news_has_five_topics():
    data = load_dataset("bbc-news")
    assert data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(data) == 2225


def test_split_is_stratified_disjoint_and_seeded(sentiment_csv):
    data = load_dataset(str(sentiment_csv))
    split = stratified_split(data, n_train=100, n_test=60, val_fraction=0.2, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (80, 20, 60)
    for name in ("train", "val", "test"):
        counts = list(split.part(name).class_counts().values())
        assert max(counts) - min(counts) <= 1
    texts = [set(split.part(name).inputs) for name in ("train", "val", "test")]
    assert not (texts[0] & texts[2]) and not (texts[1] & texts[2]) and not (texts[0] & texts[1])
    again = stratified_split(data, n_train=100, n_test=60, val_fraction=0.2, seed=3)
    assert again.part("test").inputs == split.part("test").inputs and again.part("train").inputs == split.part("train").inputs
    other = stratified_split(data, n_train=100, n_test=60, val_fraction=0.2, seed=4)
    assert other.part("test").inputs != split.part("test").inputs


def test_split_refuses_impossible_sizes(sentiment_csv):
    data = load_dataset(str(sentiment_csv))
    with pytest.raises(UserError, match="leaves no training data"):
        stratified_split(data, n_test=len(data))
    with pytest.raises(UserError, match="more than the"):
        stratified_split(data, n_train=10_000, n_test=40)
    assert np.all(np.isin(stratified_split(data).part("test").labels, [0, 1]))


def _rare_class_data(sizes: dict[str, int]) -> LabeledData:
    """Distinct texts, `sizes[name]` of each class, classes interleaved."""
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(sizes.values())])
    return LabeledData([f"text {i}" for i in range(len(labels))], labels, list(sizes))


def _counts(split, name: str) -> dict[str, int]:
    return split.part(name).class_counts()


@pytest.mark.parametrize("seed", range(4))
def test_a_rare_class_is_in_every_part_of_a_hold_out_split(seed):
    # proportionally, 3 of 69 examples give the test set of 10 and a validation set of 6 under one each: rounded to 0
    data = _rare_class_data({"common": 60, "less": 6, "rare": 3})
    split = stratified_split(data, n_test=10, val_fraction=0.1, seed=seed)
    assert (len(split.test), len(split.val) + len(split.train)) == (10, 59)
    for name in ("train", "val", "test"):
        assert min(_counts(split, name).values()) >= 1, name
    assert len(set(np.concatenate([split.train, split.val, split.test]).tolist())) == 69


def test_a_subsample_of_a_large_set_keeps_enough_of_each_class_for_every_fold():
    # 64 of 2,030 drawn in proportion would hold 0.5 of "rare": none, and no fold could test it
    data = _rare_class_data({"common": 2000, "rare": 16, "other": 14})
    splits = cross_validation_splits(data, 64, 5, seed=0)
    pool = np.concatenate([splits[0].train, splits[0].val, splits[0].test])
    assert len(pool) == 64 and np.bincount(data.labels[pool]).min() >= 5
    for split in splits:
        for name in ("train", "val", "test"):
            assert min(_counts(split, name).values()) >= 1, name


def test_a_class_with_one_member_does_not_stop_a_draw():
    # scikit-learn's stratified draw refuses a class of one; the subsample still keeps the other classes' shares
    data = _rare_class_data({"a": 40, "b": 20, "single": 1})
    chosen = stratified_subset(data, 30, seed=0)
    counts = chosen.class_counts()
    assert len(chosen) == 30 and abs(counts["a"] - 20) <= 1 and abs(counts["b"] - 10) <= 1


def test_a_draw_too_small_for_the_floors_is_refused():
    data = _rare_class_data({name: 30 for name in "abcdefgh"})
    with pytest.raises(UserError, match="cannot hold 5 examples of each of the 8 classes"):
        cross_validation_splits(data, 32, 5, seed=0)


@pytest.mark.parametrize(
    ("sizes", "folds", "expected"),
    [({"a": 50, "b": 9}, 5, 5), ({"a": 50, "b": 4}, 5, 4), ({"a": 50, "b": 3}, 5, 3), ({"a": 50, "b": 3}, 1, 1)],
)
def test_default_folds_shrink_to_the_rarest_class(sizes, folds, expected):
    data = _rare_class_data(sizes)
    assert folds_for_classes(data.labels, np.arange(len(data)), data.label_names, folds) == expected


@pytest.mark.parametrize(("n_train", "expected"), [(None, 5), (200, 5), (64, 3), (80, 4), (60, 3)])
def test_default_folds_shrink_to_what_a_small_draw_holds_of_each_of_many_classes(n_train, expected):
    """20 classes of 30: a draw of 64 holds 3 of each (64 // 20), so 3 folds can each test every class."""
    data = _rare_class_data({f"c{k}": 30 for k in range(20)})
    assert folds_for_classes(data.labels, np.arange(len(data)), data.label_names, 5, n_train) == expected
    splits = cross_validation_splits(data, n_train, expected, seed=0)
    assert all(min(_counts(split, part).values()) >= 1 for split in splits for part in ("train", "val", "test"))


def test_a_draw_too_small_for_three_of_each_class_is_refused():
    data = _rare_class_data({f"c{k}": 30 for k in range(20)})
    with pytest.raises(UserError, match="--n-train 59 is too few for 20 classes: each needs 3"):
        folds_for_classes(data.labels, np.arange(len(data)), data.label_names, 5, 59)


def test_a_class_of_two_distinct_inputs_is_refused_with_its_name():
    data = _rare_class_data({"a": 50, "b": 4})
    groups = np.arange(len(data))
    groups[-2:] = groups[-4]  # three of b's four texts are one input
    with pytest.raises(UserError, match="class 'b' has 2 distinct example"):
        folds_for_classes(data.labels, groups, data.label_names, 5)


def test_a_class_gone_from_one_side_of_a_split_takes_the_first_of_the_other_sides_with_its_copies():
    data = _rare_class_data({"a": 10, "b": 4})
    groups = np.arange(14)
    groups[11] = 10  # b's first two examples are copies
    split = Split(data, train=np.array([0, 1, 2, 3, 4, 10, 11, 12]), val=np.array([5, 6]), test=np.array([7, 8, 9, 13]))
    restore_classes(split, groups)
    assert split.val.tolist() == [5, 6, 10, 11] and split.train.tolist() == [0, 1, 2, 3, 4, 12]
    back = Split(data, train=np.array([0, 1]), val=np.array([5, 11, 12]), test=np.array([13]))
    restore_classes(back, np.arange(14))
    assert back.train.tolist() == [0, 1, 11] and back.val.tolist() == [5, 12]
    alone = Split(data, train=np.array([0, 1, 10]), val=np.array([5]), test=np.array([13]))
    restore_classes(alone, np.arange(14))  # b's only training example stays to be trained on
    assert alone.train.tolist() == [0, 1, 10] and alone.val.tolist() == [5]


def test_floored_draws_keep_their_size_and_every_floor_the_class_sizes_allow():
    """300 random pools: 2-6 classes of 1-40 examples, any size, floors 0-3 taken and 0-2 left."""
    rng = np.random.default_rng(0)
    for case in range(300):
        sizes = rng.integers(1, 41, rng.integers(2, 7))
        labels = np.repeat(np.arange(len(sizes)), sizes)
        size, floor, keep = int(rng.integers(1, len(labels))), int(rng.integers(0, 4)), int(rng.integers(0, 3))
        want_taken = np.clip(np.minimum(floor, sizes - keep), 0, None)
        want_left = np.clip(np.minimum(keep, sizes - floor), 0, None)
        if want_taken.sum() > size or want_left.sum() > len(labels) - size:
            continue
        taken, rest = _stratified_take(labels, np.arange(len(labels)), size, case, "draw", floor=floor, keep=keep)
        assert len(taken) == size and sorted(np.concatenate([taken, rest]).tolist()) == list(range(len(labels)))
        assert np.all(np.bincount(labels[taken], minlength=len(sizes)) >= want_taken), case
        assert np.all(np.bincount(labels[rest], minlength=len(sizes)) >= want_left), case


def test_list_labels_are_multi_label_data_everywhere(tmp_path, tiny_bert_dir):
    """Found in the cells rather than announced by an option, they still refuse what assumes one class per example,
    a held-out file must share their layout, and predict reads them as true labels."""
    from transferlab.config import load_run_config
    from transferlab.recipes.dataset import load_run_data
    from transferlab.recipes.predict import read_texts

    texts = [f"text number {i}" for i in range(12)]
    lists = _write(tmp_path, "lists.jsonl", pd.DataFrame({"text": texts, "labels": [["a", "b"], ["a"], ["b"]] * 4}))
    plain = _write(tmp_path, "plain.jsonl", pd.DataFrame({"text": texts, "labels": ["a", "b"] * 6}))
    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(lists), label_column="labels", oversample=True)
    with pytest.raises(UserError, match="--oversample balances or blends single classes"):
        load_run_data(config)
    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(lists), label_column="labels", test_dataset=str(plain))
    with pytest.raises(UserError, match="its labels are one class per example, and .*lists.jsonl's are sets of labels"):
        load_run_data(config)
    assert read_texts(lists, "text", "labels", label_sets=True)[1][:3] == ["a;b", "a", "b"]
