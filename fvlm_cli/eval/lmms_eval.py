"""`--protocol lmms-eval`: lmms-eval's task prompts, generation settings and answer extraction (SPEC §5.1).

SmolVLM2's published MVBench / Video-MME numbers were measured with lmms-eval, so a row scored this way is the one
to put beside them. Reproduced from lmms-eval's task files (EvolvingLMMs-Lab/lmms-eval, `lmms_eval/tasks/`:
mvbench/_default_template_yaml + utils.py, videomme/videomme.yaml + utils.py, pope/pope.yaml + utils.py,
scienceqa/scienceqa_img.yaml + utils.py, mlvu/mlvu_dev.yaml + utils.py), rule by rule:

  benchmark   user text (after the visual)                                                max_new_tokens
  mvbench     "Question:" + q + "\\nOption:\\n" + "(A) opt\\n"... + "Only give the best option.\\n"          16
  video-mme   "Select the best answer ... Respond with only the letter (A, B, C, or D) of the correct
              option.\\n" + q + "\\n" + "A. opt\\nB. opt..." + "\\n" + "\\nAnswer with the option's letter from
              the given choices directly." (videomme.yaml's default post_prompt since the options are
              listed one per line; the older "Answer the question with A, B, C, or D." went with the
              list-repr options and is now only the gpt4v override)                                   16
  pope        q.strip() + "\\nAnswer the question using a single word or phrase."                          128
  scienceqa   q (with "Context: hint\\n" in front when the row has a hint) + "\\n" + "A. opt\\n..." +
              "\\nAnswer with the option's letter from the given choices directly."                         16
  mlvu        "\\n" + doc question + "\\nOnly give the best option.\\n" + "\\n" + "Best option: (", the doc
              question being MLVU_dev's own `question` field as stored (its options included) when the
              shard has it (meta.doc_question), else MLVU's format "Question: q\\nOptions:\\n(A) opt..."    16
Only ScienceQA questions with an image are scored (scienceqa_img). Generation is greedy (temperature 0, one beam) until `<|im_end|>`/eos or max_new_tokens. Answers are read with
each task's own rule (`correct`), not fvlm's letter extraction:
  mvbench     "L. text" -> L; else punctuation stripped, lower-cased, first standalone a-e letter; compared with
              the truth letter processed the same way. lmms-eval's score divides by the non-empty answers only
              (`lmms_eval_score`).
  video-mme   answer prefixes ("The best answer is", ...) removed; "" when over 10 words and no A-D; else
              the first A/B/C/D anywhere in the answer.
  mlvu        mlvu_dev's rule (utils.py with mlvu_aggregate_results_dev): with a ")" in the stripped answer,
              the character before the first ")"; else the whole stripped answer; it must equal the truth
              letter exactly ("B) blue" and "B" count, "B. blue" does not). The lmms-eval score is the mean
              over task types.
  pope        the lower-cased, stripped answer must equal "yes" / "no" exactly.
  scienceqa   the answer equals the letter, or starts with "<capital>." whose capital is the letter.
Frame policy: the frames stored in the shards (precompute samples 1 fps, at most 64 frames: SmolVLM2's video
processor default); images keep one frame, replicated to the model's image_frames. The system prompt is the
model's own (`chat.system_prompt`), as its chat template is applied to lmms-eval's user text.
"""

from __future__ import annotations

import re
import string
from typing import Optional, Sequence

from fvlm_cli.eval.letters import letter as option_letter

BENCHMARKS = ("mvbench", "video-mme", "pope", "scienceqa", "mlvu")
MAX_NEW_TOKENS = {"mvbench": 16, "video-mme": 16, "pope": 128, "scienceqa": 16, "mlvu": 16}
FRAME_POLICY = "stored frames (1 fps, <= 64); images replicated to image_frames"

VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video and the "
                        "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_POST = "\nAnswer with the option's letter from the given choices directly."
MVBENCH_POST = "Only give the best option.\n"
POPE_POST = "\nAnswer the question using a single word or phrase."
SCIENCEQA_POST = "\nAnswer with the option's letter from the given choices directly."


def supports(bench: str) -> bool:
    return bench in BENCHMARKS


def prompt(bench: str, question: str, options: Sequence[str], doc_question: Optional[str] = None) -> str:
    """lmms-eval's user text for one question (`question` and `options` as stored in the shard record;
    `doc_question`: the dataset's own question field where lmms-eval reads it whole, MLVU_dev's)."""
    opts = [str(o) for o in options]
    if bench == "mvbench":
        listed = "".join(f"({option_letter(i)}) {o}\n" for i, o in enumerate(opts))
        return "Question:" + question + "\nOption:\n" + listed + MVBENCH_POST
    if bench == "video-mme":  # the dataset's options carry their "A. " labels
        listed = "\n".join(f"{option_letter(i)}. {o}" for i, o in enumerate(opts))
        return VIDEOMME_INSTRUCTION + "\n" + question + "\n" + listed + "\n" + VIDEOMME_POST
    if bench == "pope":
        return question.strip() + POPE_POST
    if bench == "scienceqa":  # fvlm's ScienceQA question already holds "Context: {hint}\n" when there is a hint
        listed = "\n".join(f"{option_letter(i)}. {o}" for i, o in enumerate(opts))
        return f"{question}\n{listed}{SCIENCEQA_POST}"
    if bench == "mlvu":
        if not doc_question:  # the json layout: MLVU's own question format
            listed = "\n".join(f"({option_letter(i)}) {o}" for i, o in enumerate(opts))
            doc_question = f"Question: {question}\nOptions:\n{listed}"
        return "\n" + doc_question + "\nOnly give the best option.\n" + "\n" + "Best option: ("
    raise ValueError(f"lmms-eval protocol has no task for benchmark {bench!r}; it covers {', '.join(BENCHMARKS)}")


# ---------------------------------------------------------------- answer extraction

_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # lmms-eval's pattern as written: a period not followed by a digit


def _mvbench_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=int(re.UNICODE))  # lmms-eval passes re.UNICODE (32) as the count


def mvbench_process(answer: str) -> str:
    """mvbench's `process`: "L. text" -> L, else the first standalone a-e letter, else the cleaned text."""
    m = re.match(r"^([A-E])\.\s*(.+)$", answer.strip(), re.IGNORECASE)
    if m:
        return m.group(1).upper()
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    text = _mvbench_punctuation(text)
    text = text.strip("'").strip('"').strip(")").strip("(").strip().lower()
    hit = re.search(r"\b([A-E])\b", text, re.IGNORECASE)
    return hit.group(1).upper() if hit else text


_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
             "The best option isThe correct option is", "Best answer:Best option:"]  # two joined by a missing comma


def abcd(answer: str) -> str:
    """Video-MME / MLVU `extract_characters_regex`: the first A-D letter, or ""."""
    s = answer.strip()
    for p in _PREFIXES:
        s = s.replace(p, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    m = re.search(r"[ABCD]", s)
    return m[0] if m else ""


def mlvu_extract(answer: str) -> str:
    """mlvu_dev's `extract_characters_regex`: the character before the first ")", else the stripped answer."""
    s = answer.strip()
    return s[s.index(")") - 1: s.index(")")] if ")" in s else s


def read_answer(bench: str, generated: str, n_options: int) -> Optional[str]:
    """The letter a generation chose under the task's rule (None: nothing the task would count)."""
    if bench == "mvbench":
        p = mvbench_process(generated)
        return p if len(p) == 1 and p in string.ascii_uppercase else None
    if bench == "video-mme":
        return abcd(generated) or None
    if bench == "mlvu":
        pred = mlvu_extract(generated)
        return pred if len(pred) == 1 and pred in string.ascii_uppercase[:n_options] else None
    if bench == "pope":
        word = generated.lower().strip()
        return {"yes": "A", "no": "B"}.get(word)
    if bench == "scienceqa":
        if len(generated) == 1 and generated in string.ascii_uppercase[:n_options]:
            return generated
        if len(generated) >= 2 and generated[0].isupper() and generated[1] == ".":
            return generated[0]
        return None
    raise ValueError(f"lmms-eval protocol has no task for benchmark {bench!r}")


def correct(bench: str, generated: str, truth: str, n_options: int) -> bool:
    """Whether lmms-eval would score the generation right against the truth letter."""
    if bench == "mvbench":
        return mvbench_process(generated) == mvbench_process(truth)
    if bench == "video-mme":
        return abcd(generated).lower() == truth.lower()
    if bench == "mlvu":
        return mlvu_extract(generated) == truth
    return read_answer(bench, generated, n_options) == truth


def lmms_eval_score(bench: str, rows: Sequence[dict]) -> Optional[float]:
    """The headline number lmms-eval's aggregation prints, as a fraction (None where it is plain accuracy)."""
    if bench == "mvbench":  # answered = a non-empty generation
        answered = [r for r in rows if (r.get("generated") or "") != ""]
        return sum(bool(r["correct"]) for r in answered) / len(answered) if answered else 0.0
    if bench == "mlvu":  # mean over task types
        by: dict[str, list[bool]] = {}
        for r in rows:
            by.setdefault(str(r.get("category") or "uncategorized"), []).append(bool(r["correct"]))
        return sum(sum(v) / len(v) for v in by.values()) / len(by) if by else 0.0
    return None
