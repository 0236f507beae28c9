"""Generate the datasets shipped in src/lorasweep/datasets/ (deterministic; all text comes from the lists below).

    python scripts/make_datasets.py [OUT_DIR]      # default: src/lorasweep/datasets

synth_sentiment: two-label reviews whose label needs composition (negation, contrast, concession), so a
frozen encoder with a linear head does clearly worse than one adapted with LoRA.
synth_sft: instruction -> response pairs for small deterministic tasks (reverse, uppercase, add, ...).
synth_chat: conversations of one to three user/assistant exchanges of the same tasks, some with a system turn
(`messages`: a list of {role, content}, as chat datasets are).
Every word is written here, so the output is CC0 / public domain. Rerunning must reproduce the files byte for
byte (tests/test_data.py checks it).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 1234
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "lorasweep" / "datasets"
SENTIMENT_SIZES = {"train": 4000, "validation": 800}
SFT_SIZES = {"train": 1600, "validation": 200}
CHAT_SIZES = {"train": 800, "validation": 100}
SYSTEM_PROMPTS = ["You are a careful assistant. Answer with the result only.", "Answer briefly."]

# ---------------------------------------------------------------- synth_sentiment vocabulary
DOMAINS = {
    "film": (
        ["film", "movie", "sequel", "documentary", "thriller", "comedy", "drama", "cartoon"],
        [
            "plot",
            "acting",
            "soundtrack",
            "ending",
            "dialogue",
            "pacing",
            "script",
            "cast",
            "camera work",
            "lead actor",
            "villain",
            "story",
            "humor",
            "finale",
            "opening scene",
            "costumes",
        ],
    ),
    "restaurant": (
        ["restaurant", "cafe", "bistro", "diner", "pizzeria", "bakery", "food truck", "steakhouse"],
        [
            "food",
            "service",
            "soup",
            "dessert",
            "staff",
            "wine list",
            "waiter",
            "pasta",
            "coffee",
            "menu",
            "bread",
            "salad",
            "music",
            "decor",
            "burger",
            "breakfast",
        ],
    ),
    "product": (
        ["phone", "laptop", "blender", "jacket", "backpack", "camera", "kettle", "speaker"],
        [
            "battery",
            "screen",
            "design",
            "sound",
            "build quality",
            "fabric",
            "zipper",
            "manual",
            "delivery",
            "packaging",
            "keyboard",
            "charger",
            "app",
            "warranty",
            "handle",
            "display",
        ],
    ),
}
POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "superb",
    "delightful",
    "enjoyable",
    "impressive",
    "fantastic",
    "lovely",
    "solid",
    "charming",
    "pleasant",
    "brilliant",
    "satisfying",
    "terrific",
]
NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "dull",
    "boring",
    "disappointing",
    "poor",
    "mediocre",
    "bland",
    "horrible",
    "weak",
    "sloppy",
    "annoying",
    "tedious",
    "forgettable",
    "dreadful",
]
INTENSIFIERS = ["really", "truly", "very", "quite", "remarkably", "genuinely", "so", "extremely"]
# Each flips the polarity of the adjective after it ("not bad" is positive, "hardly great" negative).
NEGATORS = [
    "not",
    "hardly",
    "never",
    "not at all",
    "far from",
    "anything but",
    "not very",
    "not really",
    "barely",
    "by no means",
]
OPENERS = ["", "", "", "Honestly, ", "To be fair, ", "In short, ", "Frankly, ", "I must say "]

# Share of each sentence form; the rest of a form's variety comes from the choices inside it.
FORMS = {"simple": 0.4, "but": 0.25, "although": 0.15, "even_though": 0.05, "overall": 0.15}
NEGATE_P = 0.3  # chance that any one clause is negated


def predicate(rng: random.Random, positive: bool) -> str:
    """A predicate with the wanted polarity: a plain (maybe intensified) adjective, or a negated opposite."""
    if rng.random() < NEGATE_P:
        adjective = rng.choice(NEGATIVE if positive else POSITIVE)
        return f"{rng.choice(NEGATORS)} {adjective}"
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    return f"{rng.choice(INTENSIFIERS)} {adjective}" if rng.random() < 0.3 else adjective


def review(rng: random.Random, label: int) -> str:
    """One review whose label is decided by the main clause; the other clause has the opposite polarity."""
    items, aspects = DOMAINS[rng.choice(sorted(DOMAINS))]
    item = rng.choice(items)
    a1, a2 = rng.sample(aspects, 2)
    main, other = predicate(rng, label == 1), predicate(rng, label == 0)
    form = rng.choices(list(FORMS), weights=list(FORMS.values()))[0]
    if form == "simple":
        subject = rng.choice([f"the {a1}", f"this {item}", f"the {item}"])
        text = f"{rng.choice(OPENERS)}{subject} was {main}."
    elif form == "but":
        text = f"{rng.choice(OPENERS)}the {a1} was {other}, but the {a2} was {main}."
    elif form == "although":
        text = f"Although the {a1} was {other}, the {a2} was {main}."
    elif form == "even_though":
        text = f"The {a2} was {main}, even though the {a1} was {other}."
    else:
        text = f"The {a1} was {other}; overall, though, this {item} was {main}."
    return text[0].upper() + text[1:]


def make_sentiment(rng: random.Random) -> dict[str, list[dict]]:
    """Balanced labels, alternating per row; no sentence appears twice in or across splits."""
    seen: set[str] = set()
    splits = {}
    for split, size in SENTIMENT_SIZES.items():
        rows = []
        while len(rows) < size:
            label = len(rows) % 2
            text = review(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
        splits[split] = rows
    return splits


# ---------------------------------------------------------------- synth_sft
WORDS = """cat dog sun moon tree bird fish frog lamp door book cup star rain snow wind fire milk salt rice
bread apple pear plum lime kiwi mango grape lemon peach melon house road river hill lake sea ship boat car
bike train plane bus truck horse sheep goat mouse tiger lion bear wolf fox deer duck owl crow swan seal
whale shark crab snail bee ant moth worm rose lily fern moss leaf seed root stone sand rock gold iron
silver glass paper pen ink desk chair table bed sofa clock phone radio music song poem story word letter
page map key lock box bag hat coat shoe sock ring bell drum flute harp piano violin garden field forest
cloud storm light shadow dream smile laugh hand foot head heart eye ear nose mouth hair tooth bone blood
water ice steam earth metal wood coal oil gas brick tile roof wall floor window stair bridge tower castle
king queen knight farmer baker pilot doctor nurse teacher painter singer dancer writer sailor""".split()


def sft_example(rng: random.Random) -> tuple[str, str]:
    task = rng.randrange(10)
    w = rng.choice(WORDS)
    a, b = rng.randrange(30), rng.randrange(30)
    if task == 0:
        return f"Reverse the word: {w}", w[::-1]
    if task == 1:
        return f"Uppercase: {w}", w.upper()
    if task == 2:
        return f"What is {a} plus {b}?", str(a + b)
    if task == 3:
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", str(a - b)
    if task == 4:
        return f"Repeat twice: {w}", f"{w} {w}"
    if task == 5:
        return f"First letter of: {w}", w[0]
    if task == 6:
        return f"Last letter of: {w}", w[-1]
    if task == 7:
        return f"Spell out: {w}", " ".join(w)
    if task == 8:
        return f"How many letters are in: {w}", str(len(w))
    return f"What number comes after {a * 3 + b}?", str(a * 3 + b + 1)


def make_sft(rng: random.Random) -> dict[str, list[dict]]:
    seen: set[str] = set()
    splits = {}
    for split, size in SFT_SIZES.items():
        rows = []
        while len(rows) < size:
            instruction, response = sft_example(rng)
            if instruction not in seen:
                seen.add(instruction)
                rows.append({"instruction": instruction, "response": response})
        splits[split] = rows
    return splits


def make_chat(rng: random.Random) -> dict[str, list[dict]]:
    splits = {}
    for split, size in CHAT_SIZES.items():
        rows = []
        for _ in range(size):
            turns = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
            for _ in range(rng.randint(1, 3)):
                instruction, response = sft_example(rng)
                turns += [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
            rows.append({"messages": turns})
        splits[split] = rows
    return splits


# ---------------------------------------------------------------- output
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out_dir: str | Path = OUT_DIR) -> list[Path]:
    """Write every shipped dataset under out_dir; returns the files written. Each dataset has its own RNG, so
    changing one never changes the other."""
    written = []
    for name, make in (("synth_sentiment", make_sentiment), ("synth_sft", make_sft), ("synth_chat", make_chat)):
        for split, rows in make(random.Random(f"{SEED}-{name}")).items():
            path = Path(out_dir) / name / f"{split}.jsonl"
            write_jsonl(path, rows)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for path in generate(argv[0] if argv else OUT_DIR):
        print(path)


if __name__ == "__main__":
    main()
