"""User files, packaged datasets and the stratified split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferlab.data.catalog import load_dataset
from transferlab.data.sources import load_user_file
from transferlab.data.splits import stratified_split
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
