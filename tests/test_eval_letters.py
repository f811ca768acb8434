"""Answer-letter extraction: the forms models write, the article trap, n_options, option-text fallback."""

import pytest

from fvlm_cli.eval.letters import answer_letter, extract_letter, index, letter, match_option_text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("**C**", "C"),
        ("  D  \n", "D"),
        ("B. The dog runs", "B"),
        ("B) the dog runs", "B"),
        ("(b) the dog runs", "B"),
        ("C: blue", "C"),
        ("The answer is B", "B"),
        ("Answer: (c)", "C"),
        ("answer:B", "B"),
        ("ANSWER: D", "D"),
        ("The answer is: [D]", "D"),
        ("The correct answer is option (B).", "B"),
        ("The answer is likely C", "C"),
        ("I think the answer is D because the ball falls.", "D"),
        ("The answer is A because it moves left", "A"),
        ("the answer is d", "D"),
        ("option A", "A"),
        ("Best option: C.", "C"),
        ("I think D", "D"),
        ("In the video, a man walks. B", "B"),
        ("The answer to the question is C.", "C"),
    ],
)
def test_extract_letter_forms(text, expected):
    assert extract_letter(text) == expected


def test_answer_cue_beats_earlier_letters_and_last_cue_wins():
    # "A" appears first but the stated answer is C.
    assert extract_letter("Option A is wrong because it moves right. So the answer is C.") == "C"
    assert extract_letter("Reasoning: B looks close. Final answer: D") == "D"
    assert extract_letter("Answer: B. Option A is wrong.") == "B"


def test_article_a_is_only_a_fallback():
    # Nothing else matches -> the article is read as A (documented rule 5) ...
    assert extract_letter("A red circle moves left.") == "A"
    assert extract_letter("A red circle moves left.", article_fallback=False) is None
    # ... but any real letter wins over it.
    assert extract_letter("A red circle moves left, so C.") == "C"
    assert extract_letter("I believe it is (B)") == "B"
    # Lower-case "a" in prose after a cue is the article, not option A.
    assert extract_letter("The answer is a red circle") is None


def test_n_options_bounds_the_valid_letters():
    assert extract_letter("E") is None
    assert extract_letter("The answer is E") is None
    assert extract_letter("E", n_options=5) == "E"
    assert extract_letter("(C)", n_options=2) is None
    assert extract_letter("The answer is E, no wait, B") == "B"
    with pytest.raises(ValueError):
        extract_letter("A", n_options=0)


@pytest.mark.parametrize("text", ["", "   ", "I'm not sure", "The dog runs.", "none of these"])
def test_no_letter_returns_none(text):
    assert extract_letter(text) is None


def test_letter_index_roundtrip():
    assert letter(0) == "A" and letter(3) == "D" and letter(25) == "Z"
    assert index("A") == 0 and index("d") == 3 and index(" C ") == 2
    assert all(index(letter(i)) == i for i in range(26))
    with pytest.raises(ValueError):
        letter(26)
    with pytest.raises(ValueError):
        index("AB")


def test_match_option_text():
    opts = ["red circle", "blue square", "red", "green triangle"]
    assert match_option_text("Blue square.", opts) == "B"
    assert match_option_text("red", opts) == "C"  # exact match beats containment in "red circle"
    assert match_option_text("It is a red circle moving left", opts) == "A"  # "red" is inside "red circle"
    assert match_option_text("red and green triangle", opts) is None  # two options: ambiguous
    assert match_option_text("purple", opts) is None
    assert match_option_text("", opts) is None
    assert match_option_text("the dog", ["(A) the cat", "(B) the dog"]) == "B"  # labels on options ignored


def test_answer_letter_prefers_letters_then_text_then_article():
    opts = ["red circle moves left", "blue square", "green", "yellow"]
    assert answer_letter("D", opts) == "D"
    assert answer_letter("The blue square.", opts) == "B"
    # The option text match ("red circle moves left" -> A) and the article agree here ...
    assert answer_letter("A red circle moves left.", opts) == "A"
    # ... and the option text beats the article when they disagree.
    assert answer_letter("A green one.", opts) == "C"
    assert answer_letter("A thing.", opts) == "A"


@pytest.mark.parametrize("text, want", [
    ("The answer is not C, it is D", "D"), ("C is incorrect; D", "D"), ("It isn't (B). (A)", "A"),
    ("Option C is not right, D is", "D"), ("Not B. C.", "C"),
    ("It is C, not D", "C"),  # the first letter stands; the negated one after it is not a candidate anyway
    ("The answer is B", "B"), ("I think D because", "D"),
])
def test_a_letter_the_answer_rules_out_is_not_its_choice(text, want):
    assert extract_letter(text, 4) == want
