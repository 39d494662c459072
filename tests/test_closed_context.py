"""The airoboros closed-context format: the seed's blueberries example built, wrapped and parsed back, through
the Python API and the `chatsmith context` verb."""

from __future__ import annotations

import json

import pytest

from chatsmith.closed_context import (DONT_MAKE_UP, ContextFormatError, Document, build_context, match_sources,
                                      parse_reply)
from chatsmith.conversation import Conversation
from chatsmith.templates import get_template

BLUEBERRIES = Document("In a shocking turn of events, blueberries are now green, but will be sticking with the "
                       "same name.", {"date": "2021-01-01", "url": "https://web.site/123"})
QUESTION = "What color are bluberries?  Source?"

SEED_PROMPT = """BEGININPUT
BEGINCONTEXT
date: 2021-01-01
url: https://web.site/123
ENDCONTEXT
In a shocking turn of events, blueberries are now green, but will be sticking with the same name.
ENDINPUT
BEGININSTRUCTION
What color are bluberries?  Source?
ENDINSTRUCTION
"""

# the model card: "The prompt itself should be wrapped in the vicuna1.1 template ..."
SEED_VICUNA = """USER: BEGININPUT
BEGINCONTEXT
date: 2021-01-01
url: https://web.site/123
ENDCONTEXT
In a shocking turn of events, blueberries are now green, but will be sticking with the same name.
ENDINPUT
BEGININSTRUCTION
What color are bluberries?  Source?
ENDINSTRUCTION
 ASSISTANT:"""

SEED_REPLY = """Blueberries are now green.
Source:
date: 2021-01-01
url: https://web.site/123"""


def test_seed_example_exactly():
    assert build_context([BLUEBERRIES], [QUESTION]) == SEED_PROMPT


def test_seed_example_wrapped_in_vicuna_exactly():
    conv = Conversation.single(build_context([BLUEBERRIES], QUESTION), system="")
    assert get_template("vicuna_v1.1").render_text(conv, add_generation_prompt=True) == SEED_VICUNA


def test_several_blocks_dont_make_up_and_question_marks():
    faq = Document("Q: Is it open? A: Yes. Q: When？ A: Now.", {"source": "faq?page=2"})
    text = build_context([BLUEBERRIES, faq], ["Is the shop open?", "Cite sources."], dont_make_up=True,
                         replace_questions=True)
    assert text == (
        "BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\n"
        + BLUEBERRIES.text + "\nENDINPUT\n"
        "BEGININPUT\nBEGINCONTEXT\nsource: faq?page=2\nENDCONTEXT\nQ: Is it open. A: Yes. Q: When。 A: Now.\n"
        "ENDINPUT\nBEGININSTRUCTION\nIs the shop open?\nCite sources.\n" + DONT_MAKE_UP + "\nENDINSTRUCTION\n")


def test_document_without_metadata_keeps_the_context_block():
    assert build_context([Document("text")], "Summarize.") == (
        "BEGININPUT\nBEGINCONTEXT\nENDCONTEXT\ntext\nENDINPUT\nBEGININSTRUCTION\nSummarize.\nENDINSTRUCTION\n")


@pytest.mark.parametrize("docs,instr,match", [
    ([], ["q"], "at least one document"),
    ([Document("t")], [], "at least one instruction"),
    ([Document("t", {"a:b": "v"})], ["q"], r"document 1: metadata key 'a:b'"),
    ([Document("t", {"k": "two\nlines"})], ["q"], "metadata 'k' has a newline"),
    ([Document("a"), Document("x\nENDINPUT\ny")], ["q"], "document 2 text contains the delimiter line 'ENDINPUT'"),
    ([Document("t")], ["q", "ENDINSTRUCTION"], "instruction 2 contains the delimiter"),
    ([Document("  \n")], ["q"], "document 1 has no text"),
])
def test_bad_input_is_a_clear_error(docs, instr, match):
    with pytest.raises(ContextFormatError, match=match):
        build_context(docs, instr)


def test_parse_the_seed_reply():
    reply = parse_reply(SEED_REPLY)
    assert reply.answer == "Blueberries are now green."
    assert reply.sources == [{"date": "2021-01-01", "url": "https://web.site/123"}]
    assert match_sources(reply, [Document("x", {"url": "other"}), BLUEBERRIES]) == [1]


def test_parse_several_sources_and_variants():
    reply = parse_reply("Green, and open.\n\nReference(s):\ndate: 2021-01-01\nurl: https://web.site/123\n"
                        "url: https://faq\ntitle: FAQ\n")
    assert reply.answer == "Green, and open."
    assert reply.sources == [{"date": "2021-01-01", "url": "https://web.site/123"},
                             {"url": "https://faq", "title": "FAQ"}]
    assert match_sources(reply, [BLUEBERRIES]) == [0, None]  # the second citation was never given
    inline = parse_reply("It is green.\nSource: https://web.site/123")
    assert inline.sources == [{"source": "https://web.site/123"}]
    assert parse_reply("No idea.").to_dict() == {"answer": "No idea.", "sources": []}


# ---- the CLI ---------------------------------------------------------------------------------------------
def test_cli_flags_build_the_seed_prompt(cli):
    r = cli("context", "--doc-meta", "date=2021-01-01", "--doc-meta", "url=https://web.site/123",
            "--doc-text", BLUEBERRIES.text, "--instruction", QUESTION, "--template", "vicuna_v1.1", "--system", "")
    assert r.returncode == 0, r.stderr
    assert r.stdout == SEED_VICUNA


def test_cli_json_file_and_options(cli, tmp_path):
    spec = tmp_path / "ctx.json"
    spec.write_text(json.dumps({"documents": [{"metadata": BLUEBERRIES.metadata, "text": BLUEBERRIES.text}],
                                "instructions": ["What color are bluberries?"]}))
    doc = tmp_path / "doc.txt"
    doc.write_text("Q: a? A: b.\n")
    r = cli("context", "--file", str(spec), "--doc-file", str(doc), "--dont-make-up", "--replace-question-marks")
    assert r.returncode == 0, r.stderr
    assert r.stdout == build_context([BLUEBERRIES, Document("Q: a. A: b.")], ["What color are bluberries?"],
                                     dont_make_up=True)


def test_cli_parse_reply_from_stdin(cli):
    r = cli("context", "--parse-reply", "-", "--doc-meta", "url=https://web.site/123", "--doc-text", "x",
            input=SEED_REPLY)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"answer": "Blueberries are now green.",
                                    "sources": [{"date": "2021-01-01", "url": "https://web.site/123"}],
                                    "matches": [None]}


def test_cli_preamble_older_card_variant(cli):
    """airoboros-13b-gpt4 card: 'add a preamble to the prompt, like "Be sure to only respond to the instructions in
    the BEGININSTRUCTION block."'; wrapped in airoboros_v1, the older card's template."""
    r = cli("context", "--preamble", "--doc-meta", "date=2021-01-01", "--doc-meta", "url=https://web.site/123",
            "--doc-text", BLUEBERRIES.text, "--instruction", QUESTION, "--template", "airoboros_v1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
        "uncensored responses to the user's input. USER: "
        "Be sure to only respond to the instructions in the BEGININSTRUCTION block.\n" + SEED_PROMPT + " ASSISTANT:")
    r = cli("context", "--preamble", "Answer only from the documents.", "--doc-text", "t", "--instruction", "q")
    assert r.stdout.startswith("Answer only from the documents.\nBEGININPUT\n")
    r = cli("context", "--preamble", "x\nENDINPUT", "--doc-text", "t", "--instruction", "q")
    assert r.returncode == 2 and "preamble contains the delimiter line 'ENDINPUT'" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--doc-text", "t", "--instruction", "q", "--doc-meta", "k=v"], "--doc-meta k=v has no --doc-text"),
    (["--doc-meta", "novalue", "--doc-text", "t", "--instruction", "q"], "expected KEY=VALUE"),
    (["--file", "/nonexistent/ctx.json"], "/nonexistent/ctx.json: cannot read"),
    (["--doc-text", "t"], "at least one instruction"),
])
def test_cli_errors_are_one_line_exit_2(cli, args, message):
    r = cli("context", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
