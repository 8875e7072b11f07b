import json
import logging
import time
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeforge.config import LMDataConfig
from kubeforge.data import DataError
from kubeforge.lm.corpus import (Document, Example, load_documents, load_examples, prepare_lm_data, pydoc_topics,
                                 read_documents, read_examples, split_by_document, stdlib_docstring_examples,
                                 write_items)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}


# --- sets that ship with Python --------------------------------------------------------------------------------

def test_pydoc_topics_is_one_document_per_topic_and_deterministic():
    from pydoc_data.topics import topics

    documents = pydoc_topics()
    assert [d.doc_id for d in documents] == sorted(topics)
    assert documents == load_documents("pydoc:topics")
    assert all(d.text and d.text == topics[d.doc_id].strip() for d in documents)


def test_docstring_examples_are_signatures_and_first_paragraphs():
    started = time.perf_counter()
    examples = stdlib_docstring_examples()
    elapsed = time.perf_counter() - started
    assert 300 <= len(examples) <= 2000
    assert elapsed < 2.0  # well under a second on a quiet machine; generous for a shared one
    assert examples == stdlib_docstring_examples() == load_examples("pydoc:docstrings")
    assert len({e.doc_id for e in examples}) == len(examples)
    assert all(e.kind == "prompt_completion" and len(e.completion) >= 24 and "\n\n" not in e.completion
               for e in examples)
    wrap = next(e for e in examples if e.doc_id == "textwrap.wrap")
    assert wrap.prompt == 'def textwrap.wrap(text, width=70, **kwargs):\n    """'
    assert wrap.completion.startswith("Wrap a single paragraph of text")
    wrapper = next(e for e in examples if e.doc_id == "textwrap.TextWrapper")
    assert wrapper.prompt.startswith("class textwrap.TextWrapper(width=70,")
    assert all(" at 0x" not in e.prompt for e in examples)
    assert next(e for e in examples if e.doc_id == "abc.ABC").prompt == 'class abc.ABC:\n    """'
    assert stdlib_docstring_examples(limit=7) == examples[:7]


@pytest.mark.slow
def test_docstring_examples_do_not_depend_on_what_else_was_imported():
    import subprocess
    import sys

    import torch.package  # noqa: F401  (patches inspect.getfile: why inspect is not among the modules)
    import transformers  # noqa: F401

    logging.captureWarnings(True)  # replaces warnings.showwarning
    try:
        here = [[e.doc_id, e.prompt, e.completion] for e in stdlib_docstring_examples()]
    finally:
        logging.captureWarnings(False)
    script = ("import json; from kubeforge.lm.corpus import stdlib_docstring_examples as s; "
              "print(json.dumps([[e.doc_id, e.prompt, e.completion] for e in s()]))")
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(fresh) == here


def test_unknown_builtin_sources_name_the_known_ones():
    with pytest.raises(DataError, match="pydoc:nope: unknown built-in corpus; known: pydoc:topics"):
        load_documents("pydoc:nope")
    with pytest.raises(DataError, match="known: pydoc:docstrings"):
        load_examples("pydoc:topics")


# --- pre-training documents ------------------------------------------------------------------------------------

def test_text_file_splits_on_two_or_more_empty_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First doc.\n\nStill the first.\n\n\nSecond doc.\r\n\r\n  \r\n\r\nThird.\n")
    assert load_documents(str(path)) == [Document("notes.txt#1", "First doc.\n\nStill the first."),
                                         Document("notes.txt#2", "Second doc."), Document("notes.txt#3", "Third.")]
    single = tmp_path / "one.txt"
    single.write_text("Only one.\n\nParagraph two.")
    assert load_documents(str(single)) == [Document("one.txt", "Only one.\n\nParagraph two.")]


def test_directory_of_text_files_is_one_document_each(tmp_path):
    (tmp_path / "b.txt").write_text("Bee.\n\n\n\nStill bee.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("Ay.")
    (tmp_path / "ignored.md").write_text("# not text")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "c.txt").write_text("Sea.\n\n\nStill sea.")
    assert load_documents(str(tmp_path / "one")) == [Document("c.txt", "Sea.\n\n\nStill sea.")]
    assert load_documents(str(tmp_path)) == [Document("b.txt", "Bee.\n\n\n\nStill bee."),
                                             Document("one/c.txt", "Sea.\n\n\nStill sea."),
                                             Document("sub/a.txt", "Ay.")]


def test_jsonl_and_parquet_documents_keep_doc_ids_or_number_rows(tmp_path):
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"text": "alpha"}, {"text": "", "meta": 1},
                                                {"text": "gamma", "doc_id": "g"}])
    assert load_documents(str(jsonl)) == [Document("c.jsonl:1", "alpha"), Document("g", "gamma")]
    table = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one", "two"], "other": [1, 2]}), table)
    assert load_documents(str(table)) == [Document("c.parquet:0", "one"), Document("c.parquet:1", "two")]


def test_fsspec_uris_memory_and_file():
    name = f"memory://corpus-{uuid.uuid4().hex}"
    with fsspec.open(f"{name}/docs.jsonl", "w") as handle:
        handle.write(json.dumps({"text": "in memory"}) + "\n")
    assert load_documents(f"{name}/docs.jsonl") == [Document("docs.jsonl:1", "in memory")]
    assert load_documents(name) == [Document("docs.jsonl:1", "in memory")]


def test_file_uri(tmp_path):
    (tmp_path / "d.txt").write_text("file uri text")
    assert load_documents(f"file://{tmp_path / 'd.txt'}") == [Document("d.txt", "file uri text")]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing.jsonl", r"missing.jsonl: not found"),
    (lambda p: (p / "e.jsonl").write_text("\n\n") and p / "e.jsonl", r"e.jsonl: empty source"),
    (lambda p: (p / "e.csv").write_text("text\nx\n") and p / "e.csv", r"e.csv: unsupported format; supported: .txt"),
    (lambda p: (p / "empty").mkdir() or p / "empty", r"empty: the directory holds no .txt, .jsonl"),
    (lambda p: write_jsonl(p / "n.jsonl", [{"text": "ok"}, {"body": "x", "id": 2}]),
     r"n.jsonl: line 2: expected a 'text' field; found: 'body', 'id'"),
    (lambda p: write_jsonl(p / "s.jsonl", [{"text": 3}]), r"s.jsonl: line 1: field 'text' must be a string, got int"),
    (lambda p: write_jsonl(p / "j.jsonl", [{"text": "ok"}, "", "{oops"]), r"j.jsonl: line 3: invalid JSON"),
])
def test_bad_document_sources_are_named(tmp_path, setup, message):
    with pytest.raises(DataError, match=message):
        load_documents(str(setup(tmp_path)))


def test_hf_dataset_from_the_local_cache(fake_hf_cache):
    rows = b'{"text": "from the hub"}\n{"text": "second row"}\n'
    commit = fake_hf_cache.add("acme/notes", {"data/train.jsonl": rows, "README.md": b"# card"},
                               repo_type="dataset", refs=("main", "v1"))
    expected = [Document("data/train.jsonl:1", "from the hub"), Document("data/train.jsonl:2", "second row")]
    assert load_documents("hf://datasets/acme/notes") == expected
    assert load_documents("hf://datasets/acme/notes@v1") == expected
    assert load_documents(f"hf://datasets/acme/notes@{commit}") == expected
    with pytest.raises(DataError, match="hf://datasets/acme/absent: .*not in the local cache"):
        load_documents("hf://datasets/acme/absent")
    with pytest.raises(DataError, match="names a model repository"):
        load_documents("hf://acme/notes")


# --- fine-tuning examples -------------------------------------------------------------------------------------

def test_the_three_example_kinds(tmp_path):
    text = load_examples(str(write_jsonl(tmp_path / "t.jsonl", [{"text": "learn all"}])))
    pairs = load_examples(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q:", "completion": " A", "x": 1}])))
    chats = load_examples(str(write_jsonl(tmp_path / "c.jsonl", [dict(CHAT, doc_id="conv-1")])))
    assert text == [Example("t.jsonl:1", "text", text="learn all")]
    assert pairs == [Example("p.jsonl:1", "prompt_completion", prompt="Q:", completion=" A")]
    assert chats == [Example("conv-1", "chat", messages=tuple(CHAT["messages"]))]


def test_parquet_chat_rows(tmp_path):
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([CHAT, CHAT]), path)
    examples = load_examples(str(path))
    assert [e.doc_id for e in examples] == ["chat.parquet:0", "chat.parquet:1"]
    assert examples[0].messages == tuple(CHAT["messages"])


def chat_with(*messages):
    return {"messages": [dict(zip(("role", "content"), m)) for m in messages]}


@pytest.mark.parametrize("rows, message", [
    (['{"text": "ok"}', '{"prompt": "a", "completion": "b"'], r"line 2: invalid JSON"),
    ([{"text": "ok"}, {"question": "a", "answer": "b"}],
     r"line 2: expected 'text', or 'prompt' and 'completion', or 'messages'; found: 'question', 'answer'"),
    ([{"prompt": "only a prompt"}], r"line 1: a prompt/completion row needs both 'prompt' and 'completion'; "
                                    r"missing: completion"),
    ([{"prompt": "a", "completion": ["b"]}], r"line 1: field 'completion' must be a string, got list"),
    ([{"prompt": "a", "completion": "  "}], r"line 1: field 'completion' is empty"),
    ([{"text": None}], r"line 1: field 'text' must be a string, got NoneType"),
    ([[1, 2]], r"line 1: expected a JSON object, got list"),
    ([CHAT, chat_with(("user", "hi"), ("bot", "hello"))],
     r"line 2: message 2: unknown role 'bot'; allowed: system, user, assistant"),
    ([chat_with(("user", "hi"), ("assistant", 4))], r"line 1: message 2: field 'content' must be a string, got int"),
    ([{"messages": [{"role": "user"}]}], r"line 1: message 1: expected an object with 'role' and 'content'"),
    ([{"messages": "hi"}], r"line 1: field 'messages' must be a non-empty list"),
    ([chat_with(("system", "s"), ("user", "hi"))],
     r"line 1: a chat needs at least one assistant turn \(roles: system, user\)"),
    ([{"prompt": "a", "completion": "b"}, {"text": "c"}],
     r"line 2: a text row in a file of prompt_completion rows \(from line 1\); one file holds one kind"),
    ([{"text": "a", "doc_id": ""}], r"line 1: field 'doc_id' must be a non-empty string"),
])
def test_bad_example_rows_name_the_file_line_and_problem(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "set.jsonl", rows)
    with pytest.raises(DataError, match=r"set\.jsonl: " + message):
        load_examples(str(path))


def test_bad_parquet_rows_name_the_row_index(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x", None]}), path)
    with pytest.raises(DataError, match=r"bad\.parquet: row index 1: field 'completion' must be a string, got None"):
        load_examples(str(path))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet: unreadable Parquet"):
        load_examples(str(tmp_path / "broken.parquet"))


def test_missing_and_empty_example_sources(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: not found"):
        load_examples(str(tmp_path / "nowhere.jsonl"))
    (tmp_path / "blank.jsonl").write_text("")
    with pytest.raises(DataError, match=r"blank\.jsonl: empty source \(no examples\)"):
        load_examples(str(tmp_path / "blank.jsonl"))
    with pytest.raises(DataError, match=r"not found"):
        load_examples("memory://no-such-bucket/set.jsonl")


# --- splits and round trips ------------------------------------------------------------------------------------

def test_split_is_disjoint_by_doc_id_and_deterministic():
    items = [Document(f"doc-{i % 20}", f"part {i}") for i in range(60)]  # three items per document
    train, held = split_by_document(items, 0.25, seed=3)
    assert {d.doc_id for d in train}.isdisjoint({d.doc_id for d in held})
    assert len({d.doc_id for d in held}) == 5 and len(held) == 15 and len(train) == 45
    assert train == [d for d in items if d in train]  # order kept
    assert (train, held) == split_by_document(items, 0.25, seed=3)
    assert split_by_document(list(reversed(items)), 0.25, seed=3)[1] == list(reversed(held))
    assert held != split_by_document(items, 0.25, seed=4)[1]


def test_split_keeps_both_sides_non_empty():
    two = [Document("a", "x"), Document("b", "y")]
    assert [len(side) for side in split_by_document(two, 0.01, 0)] == [1, 1]
    assert [len(side) for side in split_by_document(two, 0.49, 0)] == [1, 1]
    with pytest.raises(DataError, match=r"3 item\(s\) with 1 distinct doc_id\(s\); a split needs at least 2"):
        split_by_document([Document("a", "x")] * 3, 0.1, 0)


def test_jsonl_round_trip(tmp_path):
    documents = [Document("a", "first\u2028line"), Document("b", "ünïcode")]
    examples = [Example("t", "text", text="plain"), Example("p", "prompt_completion", prompt="Q", completion="A"),
                Example("c", "chat", messages=tuple(CHAT["messages"]))]
    write_items(documents, tmp_path / "d" / "docs.jsonl")
    write_items(examples, tmp_path / "e.jsonl")
    assert read_documents(tmp_path / "d" / "docs.jsonl") == documents
    assert read_examples(tmp_path / "e.jsonl") == examples
    with pytest.raises(DataError, match="one file holds one kind"):
        load_examples(str(tmp_path / "e.jsonl"))  # a user's file may not mix kinds; a written split may


# --- the preprocess step ---------------------------------------------------------------------------------------

def test_prepare_writes_splits_and_stats(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", [dict(CHAT, doc_id=f"c{i}") for i in range(10)])
    config = LMDataConfig(corpus="pydoc:topics", finetune_dataset=str(source), holdout_fraction=0.2)
    out = tmp_path / "prepared"
    stats = prepare_lm_data(config, out)
    assert json.loads((out / "stats.json").read_text()) == stats
    corpus_train, corpus_held = read_documents(out / "corpus/train.jsonl"), read_documents(out / "corpus/heldout.jsonl")
    assert sorted(corpus_train + corpus_held, key=lambda d: d.doc_id) == pydoc_topics()
    assert stats["corpus"]["heldout"] == {"documents": len(corpus_held),
                                          "characters": sum(len(d.text) for d in corpus_held)}
    assert stats["corpus"]["source"] == "pydoc:topics" and len(corpus_held) == round(0.2 * 79)
    held = read_examples(out / "finetune/heldout.jsonl")
    assert len(held) == 2 and len(read_examples(out / "finetune/train.jsonl")) == 8
    assert stats["finetune"]["heldout"] == {"examples": 2, "characters": 2 * len("Be brief.2+2?4"),
                                            "kinds": {"chat": 2}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "prepared"]  # no staging left behind


def test_prepare_failure_leaves_nothing_and_keeps_a_previous_result(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "completion": "b"}])
    config = LMDataConfig(corpus="pydoc:topics", finetune_dataset=str(one))
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=r"one\.jsonl: cannot hold out by document"):
        prepare_lm_data(config, out)  # fails after the corpus was written to the staging directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl"]

    good = LMDataConfig(corpus="pydoc:topics", finetune_dataset="pydoc:docstrings")
    first = prepare_lm_data(good, out, need_corpus=False)
    assert "corpus" not in first and not (out / "corpus").exists()
    assert first["finetune"]["train"]["kinds"] == {"prompt_completion": first["finetune"]["train"]["examples"]}
    with pytest.raises(DataError):
        prepare_lm_data(config, out)
    assert json.loads((out / "stats.json").read_text()) == first  # the earlier result is untouched
    prepare_lm_data(good, out)  # replacing an existing result
    assert (out / "corpus/train.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "prepared"]
