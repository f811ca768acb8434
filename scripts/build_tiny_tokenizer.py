"""Build the offline tiny tokenizer shipped in `fvlm_cli/assets/tiny_tokenizer/`.

    python scripts/build_tiny_tokenizer.py [--out fvlm_cli/assets/tiny_tokenizer] [--vocab-size 1536]

A byte-level BPE in SmolLM2's layout (same special tokens at the same ids, same pre-tokenizer, same chat
template), trained on a built-in corpus: basic English plus every word the synthetic dataset uses. Byte-level
means any text round-trips, so the tiny vocabulary is only a matter of efficiency, never of coverage.
The output is deterministic: running the script twice writes identical files (committed; never built at
run time).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

# SmolLM2's special tokens, in its id order (0..16): the chat tokens plus the code-pretraining markers.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
]

# SmolLM2-Instruct's chat template: the default system message is used when the conversation has none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black", "pink", "brown", "grey"]
SHAPES = ["circle", "square", "triangle", "star", "rectangle", "ball", "box", "dot"]
DIRECTIONS = ["left", "right", "up", "down"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
LETTERS = ["A", "B", "C", "D", "E"]

BASICS = """\
You are a helpful AI assistant.
You are a helpful AI assistant named SmolLM, trained by Hugging Face
Describe this video. Describe this image. Describe what happens in the video.
What would be the WebVid caption for this video?
What colour is the shape? What color is the shape? What shape is shown? Which way does it move?
How many shapes are there? How many objects are in the video? Answer with the option's letter.
Answer with the letter of the correct option. Options: The answer is. The correct answer is
What colour are the moving shapes? What shape are the moving objects? In which direction do the shapes move?
How many shapes are in the video? What colour are the shapes in this video? What kind of shape is shown?
Which way are they moving? How many shapes can you see? What is two plus three? What is five minus one?
What is two times four? How many letters are in the word? Spell it backwards. What is the opposite of big?
What number comes after seven? What colour do you get by mixing blue and yellow? Mixing them gives green.
Put these words in alphabetical order.
Is there a person in the image? Yes, there is. No, there is not. yes no maybe true false
The video shows a man walking on the street. A woman is talking to the camera. A dog runs in the park.
A cat sits on a table. Two people are playing football on a green field. A car drives down the road.
The sun sets over the sea. Clouds move across the blue sky. A child is reading a book in the room.
Hello! How can I help you today? Thank you. Please explain. Sure, here is a short summary.
The quick brown fox jumps over the lazy dog. It is a sunny day in the city.
First, second, third, then, next, finally, before, after, during, while, because, however, therefore.
I think that this is a good question. Let me think step by step. In this video, we can see
the a an and or but if then of to in on at by for with from into over under between through
is are was were be been being has have had do does did can could will would should may might must
this that these those there here what which who whom whose when where why how
I you he she it we they me him her us them my your his its our their
man woman person people child boy girl dog cat bird horse car bus train plane boat tree house room
water sky sea river road street city park field table chair door window book phone camera screen
big small large tiny long short tall fast slow new old good bad happy sad bright dark light heavy
move moves moving moved walk walks walking run runs running jump jumps sit sits stand stands
look looks see sees show shows shown appear appears start starts stop stops turn turns
top bottom middle center centre corner edge side background foreground frame frames image video
time second seconds minute beginning end scene object objects shape shapes colour colours color colors
"""

# Common English words, so that ordinary captions and answers are not spelled out byte by byte.
COMMON = """\
about above across act action add after again against age ago agree air all almost alone along already also
although always among amount animal another answer any anyone anything area arm around arrive art as ask
away baby back bag bank base bed before begin behind believe below best better beyond bill black blood
body both bring brother build building business buy call calm card care carry case catch cause cell
change chance character check choose church class clear close coach cold come common community company
compare computer concern condition consider contain continue control cook cool cost country couple course
cover create cross cup cut dance daughter day dead deal decide deep describe design detail develop die
different dinner direction discover discuss doctor dream dress drink drive drop dry each early earth east
easy eat effect effort egg eight either else energy enjoy enough enter entire especially even evening
event ever every everyone everything exactly example explain eye face fact fall family far father fear
feel feeling few fight figure fill film final find fine finger finish fire fish five floor fly follow food
foot force forest forget form forward four free friend front fruit full fun future game garden gas
general get give glass go goal gold grass great green ground group grow guess gun hair half hall hand
hang happen hard hat head health hear heart heat help high hill history hit hold hole home hope horse
hospital hot hotel hour however hundred husband idea important include increase indeed inside instead
interest island job join just keep key kid kill kind king kitchen know lady lake land language last late
laugh lead learn leave leg less letter level lie life lift like line list listen little live local lot
love low machine main make manage many map mark market matter mean meet member memory message metal
method might mind minute miss model moment money month moon more morning most mother mountain mouth much
music must name nation natural near need never news next nice night nine noise north nose note nothing
notice now number off offer office often oil okay once only open order other outside own page paint
pair paper parent part party pass past pay peace pen people perhaps picture piece place plan plant play
player please point police poor popular position possible power present pretty price problem process
produce program provide pull push put question quick quiet quite race rain raise reach read ready real
reason receive record rest result return rich ride ring rise rock roll roof rule safe same sand save say
school score sea season seat seem sell send sense serve set seven several shake share ship shirt shoe
shop shoulder shout sign simple since sing sister six size skin sleep smile snow so soft some someone
something sometimes son song soon sort sound south space speak special spend sport spring stage star
state stay step still stone story strange street strong student study style such sugar summer support
sure surface swim system take talk teach teacher team tell ten test than thank thing think thousand three
throw today together tonight too tool touch toward town toy travel true try two type until upon use
usually very view visit voice wait wall want war warm wash watch wave way wear weather week well west
wheel white whole wide wife wind winter wish without wonder wood word work world write wrong yard year
yellow yes yet young
"""

CODE = """\
def main():
    x = [1, 2, 3]
    for i in range(10):
        print(f"{i}: {x}")
    return {"key": "value", "n": 42}
if __name__ == "__main__":
    main()
"""


def corpus() -> list[str]:
    """The training texts, in a fixed order (lists only: no set iteration, so no hash-seed dependence)."""
    lines = [line for line in BASICS.splitlines() if line.strip()]
    lines += [CODE] * 3
    # Chat turns as the template renders them, so role headers ("assistant\n") become single tokens.
    for i, line in enumerate(BASICS.splitlines()[:24]):
        role = ("system", "user", "assistant")[i % 3]
        lines.append(f"<|im_start|>{role}\n{line}<|im_end|>\n")
    words = COMMON.split()
    lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)] * 2
    lines += [" ".join(w.capitalize() for w in words[i:i + 12]) for i in range(0, len(words), 12)]
    for colour, shape in itertools.product(COLOURS, SHAPES):
        lines.append(f"A {colour} {shape}.")
        lines.append(f"The {shape} is {colour}.")
        lines.append(f"The shape is a {colour} {shape}. It is {colour}.")
        for d in DIRECTIONS:
            lines.append(f"A {colour} {shape} moves {d}.")
            lines.append(f"The {colour} {shape} is moving {d} across the frame.")
    for n, shape in itertools.product(NUMBERS, SHAPES):
        lines.append(f"There are {n} {shape}s. {n.capitalize()} {shape}s appear in the video.")
    for n, colour, shape, d in zip(NUMBERS[1:5] * 6, COLOURS * 2, SHAPES * 3, DIRECTIONS * 6):
        lines.append(f"{n.capitalize()} {colour} {shape}s move {d}. {colour.capitalize()}. {d.capitalize()}.")
    for i, letter in enumerate(LETTERS):
        options = " ".join(f"{l}. {c}" for l, c in zip(LETTERS, COLOURS[i:] + COLOURS[:i]))
        lines.append(f"What colour is the shape?\n{options}\nAnswer with the option's letter.\n{letter}")
        lines.append(f"{letter}. {COLOURS[i]}\n({letter}) {SHAPES[i]}\nAnswer: {letter}")
    lines += [" ".join(str(d) for d in range(10)), "0.5 1.0 2.25 10 100 1000 3.14 -1 +1 = % $ # @ & * / \\ | ~ ^"]
    lines += ["Punctuation: , . ; : ! ? ' \" ( ) [ ] { } < > - _ ..."]
    return lines


def build(out: Path, vocab_size: int = 1536) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # SmolLM2's pre-tokenizer: digits one by one, then GPT-2 byte-level splitting (no prefix space).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: every text round-trips
    )
    tok.train_from_iterator(corpus(), trainer)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", model_max_length=8192, clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # Write the config files in the layout transformers 4.x and 5.x both read: the chat template inline,
    # a class name both know, and special_tokens_map.json (5.x no longer writes it).
    (out / "chat_template.jinja").unlink(missing_ok=True)
    specials = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "fvlm_cli" / "assets" / "tiny_tokenizer"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--vocab-size", type=int, default=1536)
    args = parser.parse_args()
    out = build(args.out, args.vocab_size)
    data = json.loads((out / "tokenizer.json").read_text())
    print(f"wrote {out} (vocab {len(data['model']['vocab'])}, merges {len(data['model']['merges'])})")


if __name__ == "__main__":
    main()
