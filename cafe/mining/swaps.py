"""Rule-made attribute-swap negatives (`mine.source: attribute_swaps`): hard negative captions made by editing
a pair's own caption, SugarCrepe-style, instead of a model's nearest neighbours.

A caption in the shapes world's grammar (:mod:`cafe.data.shapes`) is parsed into its object mentions
("a large red circle at the top", "a red circle that is large", "A small blue cross is in the center") and an
object count ("two objects", "There is one object"), each attribute with its span in the text. Variants:

- ``replace_<attr>``: one object's colour, shape, size or position (or the count) set to another value of
  the same kind;
- ``swap_<attr>``: the colours, shapes, sizes or positions of two objects exchanged.

Only the named attribute's words change (and an article "a"/"an" or "is"/"are" that has to agree). A variant
is dropped, and counted, when it still describes the image:

- ``same_text``: its normalised text equals the caption's (swapping two equal values);
- ``fits_image``: the pair's ground truth says it is still true of the image. In the shapes world a caption
  names every object of its scene, so the parsed caption is the scene's ground truth: the variant fits when
  its objects match the scene's one to one on every attribute both state, and its count (if any) agrees.
  Swapping the colours of a red and a blue circle gives the same scene: such variants are false negatives;
- ``same_image_caption``: (captions that do not parse carry no ground truth) its normalised text is the
  caption of another pair with the same image bytes (the normalised-caption rule).

Text negatives are the kept variants (``swap_captions`` in the shards, ``mine.k`` per pair, balanced over the
kinds); image negatives are the pairs whose normalised caption equals a kept variant and whose image differs,
whose caption is therefore also a rule-made text negative: they fill ``text_negatives`` / ``image_negatives``,
the columns training reads (``train.negatives``). :func:`swap_false_negative_rate` is the rule's
false-negative rate against the ground truth: the share of the variants the normalised-caption rule alone would
keep that still describe the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from cafe.data.shapes import COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES
from cafe.objective import normalise_caption as normalise

ATTRIBUTES = ("colour", "shape", "size", "position")
KINDS = tuple(f"replace_{a}" for a in (*ATTRIBUTES, "count")) + tuple(f"swap_{a}" for a in ATTRIBUTES)
DROPS = ("same_text", "fits_image", "same_image_caption")
VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}
COUNTS = {w: n for n, w in NUMBER_WORDS.items()}

_POS = "|".join(sorted(POSITIONS, key=len, reverse=True))  # "top left" before "top"
_MENTION = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)})\b"
    rf"(?: that is (?P<size2>{'|'.join(SIZES)})\b)?(?: (?:is )?(?P<position>in the center|at the (?:{_POS}))\b)?",
    re.IGNORECASE)
_COUNT = re.compile(rf"\b(?:(?P<verb>is|are) )?(?P<count>{'|'.join(COUNTS)}) (?P<noun>objects?)\b", re.IGNORECASE)


def _where(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def _position(phrase: str) -> str:
    phrase = phrase.lower()
    return "center" if phrase == "in the center" else phrase[len("at the "):]


@dataclass
class Mention:
    """One object a caption names: attribute -> (value, start, end) of its words in the caption."""

    spans: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def get(self, attr: str) -> str | None:
        return self.spans[attr][0] if attr in self.spans else None


@dataclass
class Parsed:
    text: str
    objects: list[Mention]
    count: tuple[int, int, int] | None = None  # (value, start, end) of the number word

    def key(self) -> list[tuple]:
        return [tuple(o.get(a) for a in ATTRIBUTES) for o in self.objects]


def parse(text: str) -> Parsed:
    """The object mentions and count of a caption (no mention: a caption outside the shapes grammar)."""
    objects = []
    for m in _MENTION.finditer(text):
        spans = {}
        for attr, group in (("colour", "colour"), ("shape", "shape"), ("size", "size"), ("size", "size2")):
            if m.group(group):
                spans[attr] = (m.group(group).lower(), m.start(group), m.end(group))
        if m.group("position"):
            spans["position"] = (_position(m.group("position")), m.start("position"), m.end("position"))
        objects.append(Mention(spans))
    count = None
    found = _COUNT.search(text)
    if found:
        count = (COUNTS[found.group("count").lower()], found.start("count"), found.end("count"))
    return Parsed(text, objects, count)


def fits(variant: Parsed, truth: Parsed) -> bool:
    """Whether ``variant`` is true of the scene ``truth`` describes: the same number of objects (its count,
    or its mentions) and a one-to-one match agreeing on every attribute both state."""
    n = truth.count[0] if truth.count else len(truth.objects)
    if variant.count and variant.count[0] != n:
        return False
    if len(variant.objects) != len(truth.objects):
        return not variant.objects and variant.count is not None  # a count-only caption: decided above
    left, right = variant.key(), truth.key()

    def agree(a: tuple, b: tuple) -> bool:
        return all(x is None or y is None or x == y for x, y in zip(a, b))

    owner: dict[int, int] = {}  # a perfect matching by augmenting paths (Kuhn), polynomial in the mentions

    def augment(i: int, seen: set) -> bool:
        for j in range(len(right)):
            if j not in seen and agree(left[i], right[j]):
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False
    return all(augment(i, set()) for i in range(len(left)))


def _edit(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with spans replaced (``(start, end, new)``, non-overlapping), keeping a capital initial and
    fixing the article before each edited word."""
    out = text
    for start, end, new in sorted(edits, reverse=True):
        if out[start:end][:1].isupper():
            new = new[:1].upper() + new[1:]
        out = out[:start] + new + out[end:]
        head = out[:start]
        article = re.search(r"\b(an?)( )$", head, re.IGNORECASE)
        if article:
            word = ("an" if new[:1].lower() in "aeiou" else "a")
            if article.group(1)[:1].isupper():
                word = word.capitalize()
            out = head[:article.start(1)] + word + " " + out[start:]
    return out


def _count_edit(parsed: Parsed, value: int) -> list[tuple[int, int, str]]:
    """The edits setting the count: the number word, "object"/"objects" and a leading "is"/"are"."""
    m = _COUNT.search(parsed.text)
    edits = [(m.start("count"), m.end("count"), NUMBER_WORDS[value]),
             (m.start("noun"), m.end("noun"), "object" if value == 1 else "objects")]
    if m.group("verb"):
        edits.append((m.start("verb"), m.end("verb"), "is" if value == 1 else "are"))
    return edits


def variants(text: str) -> list[tuple[str, str]]:
    """Every replace and swap variant of ``text`` as ``(kind, new text)``, in a fixed order (unchanged ones
    included: the rules count them)."""
    parsed = parse(text)
    out = []
    for i, obj in enumerate(parsed.objects):
        for attr in ATTRIBUTES:
            if attr not in obj.spans:
                continue
            value, start, end = obj.spans[attr]
            for other in VALUES[attr]:
                if other != value:
                    new = _where(other) if attr == "position" else other
                    out.append((f"replace_{attr}", _edit(text, [(start, end, new)])))
    if parsed.count:
        for other in NUMBER_WORDS:
            if other != parsed.count[0]:
                out.append(("replace_count", _edit(text, _count_edit(parsed, other))))
    for i, a in enumerate(parsed.objects):
        for b in parsed.objects[i + 1:]:
            for attr in ATTRIBUTES:
                if attr in a.spans and attr in b.spans:
                    (va, sa, ea), (vb, sb, eb) = a.spans[attr], b.spans[attr]
                    wa, wb = (_where(va), _where(vb)) if attr == "position" else (va, vb)
                    out.append((f"swap_{attr}", _edit(text, [(sa, ea, wb), (sb, eb, wa)])))
    return out


@dataclass
class Judged:
    """One caption's variants: the kept ``(kind, text)`` and how many each rule dropped (every variant made
    is one or the other), plus the ground-truth check of what the text rule alone would keep."""

    kept: list[tuple[str, str]]
    dropped: dict[str, int]
    truth: bool  # the caption parsed (ground truth available)
    made: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    false_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    text_rule_kept: int = 0  # variants the normalised-caption rule alone keeps
    text_rule_false: int = 0  # ... of which still describe the image (ground truth)


def judge(caption: str, same_image_captions: frozenset[str] = frozenset()) -> Judged:
    """The variants of ``caption`` after the drop rules; ``same_image_captions``: normalised captions of other
    pairs with the same image (used when the caption carries no ground truth)."""
    truth = parse(caption)
    has_truth = bool(truth.objects) or truth.count is not None
    own = normalise(caption)
    judged = Judged([], dict.fromkeys(DROPS, 0), has_truth)
    for kind, text in variants(caption):
        judged.made[kind] += 1
        norm = normalise(text)
        if norm == own:
            judged.dropped["same_text"] += 1
            continue
        fitting = has_truth and fits(parse(text), truth)
        if has_truth and norm not in same_image_captions:
            judged.text_rule_kept += 1
            judged.text_rule_false += fitting
            judged.false_by_kind[kind] += fitting
        if fitting:
            judged.dropped["fits_image"] += 1
        elif not has_truth and norm in same_image_captions:
            judged.dropped["same_image_caption"] += 1
        else:
            judged.kept.append((kind, text))
    return judged


def balanced(kept: list[tuple[str, str]], rng: np.random.Generator) -> list[tuple[str, str]]:
    """``kept`` reordered so that the first ``k`` spread over the kinds: shuffled within each kind, then one
    of each kind in turn (kinds in a random order)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for item in kept:
        groups.setdefault(item[0], []).append(item)
    order = list(groups)
    rng.shuffle(order)
    for kind in order:
        rng.shuffle(groups[kind])
    out = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        out += [groups[kind][rank] for kind in order if rank < len(groups[kind])]
    return out


def swap_negatives(captions: list[str], image_sha256: list[str], k: int, seed: int = 0) -> dict:
    """Attribute-swap negatives of every pair: ``{"captions": [[(kind, text)] * <=k], "pairs": [n, k] pair
    indices (-1 padded) whose caption equals a kept variant and image differs, "summary": {...}}``."""
    by_caption: dict[str, list[int]] = {}
    by_image: dict[str, list[int]] = {}
    for i, (text, sha) in enumerate(zip(captions, image_sha256)):
        by_caption.setdefault(normalise(text), []).append(i)
        by_image.setdefault(sha, []).append(i)
    n = len(captions)
    pairs = np.full((n, k), -1, dtype=np.int64)
    chosen: list[list[tuple[str, str]]] = []
    made = dict.fromkeys(KINDS, 0)
    kept_kinds = dict.fromkeys(KINDS, 0)
    dropped = dict.fromkeys(DROPS, 0)
    false_by_kind = dict.fromkeys(KINDS, 0)
    truth_pairs = text_rule_kept = text_rule_false = no_variant = matched = 0
    for i, caption in enumerate(captions):
        same = frozenset(normalise(captions[j]) for j in by_image[image_sha256[i]] if j != i)
        judged = judge(caption, same)
        for kind, c in judged.made.items():
            made[kind] += c
            false_by_kind[kind] += judged.false_by_kind[kind]
        for rule, c in judged.dropped.items():
            dropped[rule] += c
        truth_pairs += judged.truth
        text_rule_kept += judged.text_rule_kept
        text_rule_false += judged.text_rule_false
        order = balanced(judged.kept, np.random.default_rng([seed, i]))
        chosen.append(order[:k])
        no_variant += not order
        for kind, _ in order[:k]:
            kept_kinds[kind] += 1
        found: list[int] = []
        truth = parse(caption)
        for _, text in order:
            for j in by_caption.get(normalise(text), []):
                if j not in found and image_sha256[j] != image_sha256[i] and not (
                        judged.truth and fits(truth, parse(captions[j]))):
                    found.append(j)
            if len(found) >= k:
                break
        pairs[i, :min(k, len(found))] = found[:k]
        matched += bool(found)
    total = sum(made.values())
    summary = {
        "pairs": n, "pairs_with_ground_truth": truth_pairs, "variants": total, "made": made,
        "dropped": dropped, "kept": total - sum(dropped.values()), "text_negatives": kept_kinds,
        "pairs_without_variant": no_variant, "pairs_with_pair_negatives": matched,
        "pair_negatives": int((pairs >= 0).sum()),
        "false_negative_rate": {**swap_false_negative_rate(text_rule_false, text_rule_kept),
                                "by_kind": false_by_kind},
    }
    return {"captions": chosen, "pairs": pairs, "summary": summary}


def swap_false_negative_rate(false: int, kept: int) -> dict:
    """The normalised-caption rule's false-negative rate on the swaps (``false`` of ``kept`` variants it would
    keep still describe the image, by ground truth)."""
    return {"rule": "normalised caption", "kept": kept, "false_negatives": false,
            "rate": round(false / kept, 6) if kept else None}
