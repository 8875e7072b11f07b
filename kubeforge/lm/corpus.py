"""Text for causal LMs: the pre-training corpus (documents) and the fine-tuning set (examples).

Bad rows are refused here with the source, the line (JSONL) or row index (Parquet) and the problem, because a
tokeniser or a trainer would otherwise fail far from the cause, or silently learn from the wrong field. Held-out
splits are made by ``doc_id`` so that no document is partly trained on and partly evaluated on.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import fsspec

from kubeforge.errors import DataError

if TYPE_CHECKING:
    from kubeforge.config import LMDataConfig

ExampleKind = Literal["text", "prompt_completion", "chat"]
CHAT_ROLES = ("system", "user", "assistant")
DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
EXAMPLE_SUFFIXES = (".jsonl", ".json", ".parquet")
HF_PATTERNS = ["*.jsonl", "*.json", "*.parquet", "*.txt"]
_DOCUMENT_GAP = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more empty lines

# Pure-Python modules present in every CPython build; importing them has no side effects. Sorted, so the set's
# order is fixed (its content follows the interpreter's version). Left out: modules that libraries patch at import
# (torch.package replaces inspect.getfile, logging.captureWarnings warnings.showwarning), which would make the set
# depend on what else the process imported.
DOCSTRING_MODULES = (
    "abc", "argparse", "ast", "base64", "calendar", "codecs", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "email.message", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "hmac", "html", "html.parser", "http.cookies", "imaplib",
    "ipaddress", "json", "locale", "mimetypes", "netrc", "numbers", "optparse", "pathlib", "posixpath", "pprint",
    "queue", "quopri", "random", "reprlib", "sched", "secrets", "shlex", "shutil", "smtplib", "statistics",
    "string", "tarfile", "tempfile", "textwrap", "tokenize", "traceback", "urllib.parse", "uuid", "zipfile",
)
MIN_DOCSTRING_CHARS = 24


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


@dataclass(frozen=True)
class Example:
    doc_id: str
    kind: ExampleKind
    text: str = ""
    prompt: str = ""
    completion: str = ""
    messages: tuple[dict[str, str], ...] = ()


Item = TypeVar("Item", Document, Example)


# --- sets that ship with Python -----------------------------------------------------------------------------------

def pydoc_topics() -> list[Document]:
    """The language reference topics of ``help()``: 79 documents, about 465k characters."""
    from pydoc_data.topics import topics

    return [Document(doc_id=name, text=topics[name].strip()) for name in sorted(topics) if topics[name].strip()]


def _first_paragraph(doc: str | None) -> str:
    paragraph = inspect.cleandoc(doc or "").split("\n\n", 1)[0].strip()
    return paragraph if len(paragraph) >= MIN_DOCSTRING_CHARS else ""


def _signature_prompt(keyword: str, qualified: str, obj: Any) -> str | None:
    try:
        signature = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None
    if " at 0x" in signature:  # a sentinel default whose repr changes every run
        return None
    if keyword == "class" and signature == "()":
        signature = ""
    return f'{keyword} {qualified}{signature}:\n    """'


def _docstring_candidates(module_name: str) -> Iterator[tuple[str, str, Any]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if getattr(obj, "__module__", None) != module_name or name.startswith("_"):
            continue
        if inspect.isfunction(obj):
            yield "async def" if inspect.iscoroutinefunction(obj) else "def", f"{module_name}.{name}", obj
        elif inspect.isclass(obj):
            yield "class", f"{module_name}.{name}", obj
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and inspect.isfunction(method):
                    yield "def", f"{module_name}.{name}.{method_name}", method


def stdlib_docstring_examples(limit: int | None = None) -> list[Example]:
    """Signature line -> first docstring paragraph, for public functions, classes and methods of the stdlib."""
    examples: list[Example] = []
    for module_name in DOCSTRING_MODULES:
        for keyword, qualified, obj in _docstring_candidates(module_name):
            completion = _first_paragraph(obj.__doc__)  # own docstring only: inherited ones would repeat
            prompt = _signature_prompt(keyword, qualified, obj) if completion else None
            if prompt:
                examples.append(Example(doc_id=qualified, kind="prompt_completion", prompt=prompt,
                                        completion=completion))
                if limit is not None and len(examples) >= limit:
                    return examples
    return examples


# --- files and URIs -----------------------------------------------------------------------------------------------

def _hf_snapshot(source: str) -> str:
    """The local folder of a hub dataset snapshot; a hub failure is a data failure of this source."""
    from kubeforge.lm.sources import fetch_hf_snapshot, parse_hf_reference
    from kubeforge.errors import ModelError

    try:
        repo_type, repo_id, revision = parse_hf_reference(source)
        if repo_type != "dataset":
            raise DataError(f"{source}: names a model repository; a data source is hf://datasets/org/name[@revision]")
        return str(fetch_hf_snapshot(repo_id, revision=revision, repo_type="dataset", allow_patterns=HF_PATTERNS))
    except ModelError as exc:
        raise DataError(f"{source}: {exc}") from None


def _source_files(source: str, suffixes: tuple[str, ...]) -> tuple[bool, list[tuple[str, str, Any, str]]]:
    """(is a directory, [(where, doc label, filesystem, path)]): the file itself, or a directory's files, sorted."""
    location = _hf_snapshot(source) if source.startswith("hf://") else source
    try:
        fs, path = fsspec.core.url_to_fs(location)
        exists, is_dir = fs.exists(path), fs.isdir(path)
    except (ImportError, ValueError, OSError) as exc:
        raise DataError(f"{source}: cannot open ({exc})") from None
    if not exists:
        raise DataError(f"{source}: not found")
    if not is_dir:
        if not path.lower().endswith(suffixes):
            raise DataError(f"{source}: unsupported format; supported: {', '.join(suffixes)} or a directory of them")
        return False, [(source, PurePosixPath(path).name, fs, path)]
    root = path.rstrip("/")
    files = sorted(name for name in fs.find(root) if name.lower().endswith(suffixes))
    if not files:
        raise DataError(f"{source}: the directory holds no {', '.join(suffixes)} files")
    labels = [name[len(root):].lstrip("/") for name in files]
    return True, [(f"{source.rstrip('/')}/{label}", label, fs, name) for label, name in zip(labels, files)]


def _read_text(fs: Any, path: str, where: str) -> str:
    try:
        with fs.open(path, "rb") as handle:
            raw = handle.read()
        return raw.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc})") from None


def _rows(where: str, fs: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(position, row) pairs; the position is what an error message names: "line 3" or "row index 3"."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as handle:
                rows = pq.read_table(io.BytesIO(handle.read())).to_pylist()
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{where}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
        yield from ((f"row index {index}", row) for index, row in enumerate(rows))
        return
    text = _read_text(fs, path, where)
    if path.lower().endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        yield from ((f"row index {index}", row) for index, row in enumerate(rows))
        return
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit inside a string
        if line.strip():
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _field_names(row: dict) -> str:
    return ", ".join(map(repr, row)) or "none"


def _string(row: dict, field: str, where: str, position: str) -> str:
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: {position}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _object(row: Any, where: str, position: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: {position}: expected a JSON object, got {type(row).__name__}")
    return row


def _doc_id(row: dict, where: str, position: str, default: str) -> str:
    value = row.get("doc_id", default)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DataError(f"{where}: {position}: field 'doc_id' must be a non-empty string")
    return str(value)


def _documents_from_file(where: str, label: str, fs: Any, path: str, one_per_file: bool) -> list[Document]:
    if path.lower().endswith(".txt"):
        text = _read_text(fs, path, where).strip()
        pieces = [text] if one_per_file else [p.strip() for p in _DOCUMENT_GAP.split(text) if p.strip()]
        if len(pieces) == 1:
            return [Document(doc_id=label, text=pieces[0])] if pieces[0] else []
        return [Document(doc_id=f"{label}#{index}", text=piece) for index, piece in enumerate(pieces, start=1)]
    documents = []
    for position, row in _rows(where, fs, path):
        row = _object(row, where, position)
        if "text" not in row:
            raise DataError(f"{where}: {position}: expected a 'text' field; found: {_field_names(row)}")
        text = _string(row, "text", where, position)
        if text.strip():  # empty rows (paragraph breaks in many hub corpora) carry nothing to learn
            documents.append(Document(doc_id=_doc_id(row, where, position, f"{label}:{position.split()[-1]}"),
                                      text=text))
    return documents


def load_documents(source: str) -> list[Document]:
    """The pre-training corpus: pydoc:topics, a .txt/.jsonl/.json/.parquet file or directory, a URI, or hf://."""
    if source.startswith("pydoc:"):
        if source != "pydoc:topics":
            raise DataError(f"{source}: unknown built-in corpus; known: pydoc:topics")
        return pydoc_topics()
    directory, files = _source_files(source, DOCUMENT_SUFFIXES)
    documents = [document for where, label, fs, path in files
                 for document in _documents_from_file(where, label, fs, path, one_per_file=directory)]
    if not documents:
        raise DataError(f"{source}: empty source (no documents with text)")
    return documents


def _messages(row: dict, where: str, position: str) -> tuple[dict[str, str], ...]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {position}: field 'messages' must be a non-empty list of {{role, content}} "
                        f"objects, got {type(messages).__name__}")
    turns = []
    for number, message in enumerate(messages, start=1):
        at = f"{position}: message {number}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {at}: expected an object with 'role' and 'content'")
        role, content = _string(message, "role", where, at), _string(message, "content", where, at)
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: {at}: unknown role {role!r}; allowed: {', '.join(CHAT_ROLES)}")
        turns.append({"role": role, "content": content})
    if not any(turn["role"] == "assistant" for turn in turns):
        raise DataError(f"{where}: {position}: a chat needs at least one assistant turn (roles: "
                        f"{', '.join(turn['role'] for turn in turns)})")
    return tuple(turns)


def _example_from_row(row: Any, where: str, position: str, default_id: str) -> Example:
    row = _object(row, where, position)
    doc_id = _doc_id(row, where, position, default_id)
    if "messages" in row:
        return Example(doc_id=doc_id, kind="chat", messages=_messages(row, where, position))
    if "prompt" in row or "completion" in row:
        missing = [field for field in ("prompt", "completion") if field not in row]
        if missing:
            raise DataError(f"{where}: {position}: a prompt/completion row needs both 'prompt' and 'completion'; "
                            f"missing: {', '.join(missing)}")
        completion = _string(row, "completion", where, position)
        if not completion.strip():
            raise DataError(f"{where}: {position}: field 'completion' is empty (nothing to learn)")
        return Example(doc_id=doc_id, kind="prompt_completion", prompt=_string(row, "prompt", where, position),
                       completion=completion)
    if "text" in row:
        text = _string(row, "text", where, position)
        if not text.strip():
            raise DataError(f"{where}: {position}: field 'text' is empty (nothing to learn)")
        return Example(doc_id=doc_id, kind="text", text=text)
    raise DataError(f"{where}: {position}: expected 'text', or 'prompt' and 'completion', or 'messages'; "
                    f"found: {_field_names(row)}")


def _load_examples(source: str, *, mixed_kinds: bool) -> list[Example]:
    if source.startswith("pydoc:"):
        if source != "pydoc:docstrings":
            raise DataError(f"{source}: unknown built-in fine-tuning set; known: pydoc:docstrings")
        return stdlib_docstring_examples()
    examples: list[Example] = []
    for where, label, fs, path in _source_files(source, EXAMPLE_SUFFIXES)[1]:
        first: tuple[str, str] | None = None
        for position, row in _rows(where, fs, path):
            example = _example_from_row(row, where, position, f"{label}:{position.split()[-1]}")
            first = first or (example.kind, position)
            if example.kind != first[0] and not mixed_kinds:
                raise DataError(f"{where}: {position}: a {example.kind} row in a file of {first[0]} rows (from "
                                f"{first[1]}); one file holds one kind")
            examples.append(example)
    if not examples:
        raise DataError(f"{source}: empty source (no examples)")
    return examples


def load_examples(source: str) -> list[Example]:
    """The fine-tuning set: pydoc:docstrings, or JSONL/JSON/Parquet rows (path, directory, URI or hf://)."""
    return _load_examples(source, mixed_kinds=False)


# --- splits and files written by the preprocess step ----------------------------------------------------------------

def split_by_document(items: Sequence[Item], holdout_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(train, held-out): whole doc_ids go to one side, chosen by the seed; both keep the items' order."""
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    doc_ids = sorted({item.doc_id for item in items})
    if len(doc_ids) < 2:
        raise DataError(f"cannot hold out by document: {len(items)} item(s) with {len(doc_ids)} distinct doc_id(s); "
                        "a split needs at least 2")
    random.Random(seed).shuffle(doc_ids)
    held_out = set(doc_ids[:min(len(doc_ids) - 1, max(1, round(len(doc_ids) * holdout_fraction)))])
    return [i for i in items if i.doc_id not in held_out], [i for i in items if i.doc_id in held_out]


def _row(item: Document | Example) -> dict[str, Any]:
    if isinstance(item, Document) or item.kind == "text":
        return {"doc_id": item.doc_id, "text": item.text}
    if item.kind == "chat":
        return {"doc_id": item.doc_id, "messages": [dict(message) for message in item.messages]}
    return {"doc_id": item.doc_id, "prompt": item.prompt, "completion": item.completion}


def write_items(items: Sequence[Document | Example], path: str | os.PathLike[str]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(_row(item), ensure_ascii=False) + "\n")


def read_documents(path: str | os.PathLike[str]) -> list[Document]:
    return load_documents(str(path))


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """A file written by ``write_items``; kinds may mix here (a directory source may hold one kind per file)."""
    return _load_examples(str(path), mixed_kinds=True)


def characters(item: Document | Example) -> int:
    if isinstance(item, Document) or item.kind == "text":
        return len(item.text)
    if item.kind == "prompt_completion":
        return len(item.prompt) + len(item.completion)
    return sum(len(message["content"]) for message in item.messages)


def _split_stats(items: Sequence[Document | Example], unit: str) -> dict[str, Any]:
    stats: dict[str, Any] = {unit: len(items), "characters": sum(map(characters, items))}
    if unit == "examples":
        stats["kinds"] = dict(sorted(Counter(item.kind for item in items).items()))
    return stats


def prepare_lm_data(config: LMDataConfig, out_dir: Path, *, need_corpus: bool = True) -> dict[str, Any]:
    """The LM preprocess step; built in a sibling temp dir and renamed, so a failure leaves no half-written out_dir."""
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    stats: dict[str, Any] = {"holdout_fraction": config.holdout_fraction, "holdout_seed": config.holdout_seed}
    try:
        parts = [("corpus", config.corpus, load_documents, "documents")] if need_corpus else []
        parts.append(("finetune", config.finetune_dataset, load_examples, "examples"))
        for name, source, load, unit in parts:
            items = load(source)
            try:
                train, held_out = split_by_document(items, config.holdout_fraction, config.holdout_seed)
            except DataError as exc:
                raise DataError(f"{source}: {exc}") from None
            write_items(train, staging / name / "train.jsonl")
            write_items(held_out, staging / name / "heldout.jsonl")
            stats[name] = {"source": source, "train": _split_stats(train, unit),
                           "heldout": _split_stats(held_out, unit)}
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, previous / target.name)
            os.replace(staging, target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats
