"""Subtitle shaping: readable caption cues from timed words.

A transcript's pieces are Whisper's sub-segments, often long sentences; as subtitles they make
lines of 100 characters and cues of 15 s. :func:`shape` regroups the words into cues that follow
the common broadcast rules (Netflix / BBC timed-text style guides):

- at most ``max_line_width`` characters per line (42) and ``max_line_count`` lines per cue (2);
- a cue lasts at most ``max_duration`` (7 s) and at least ``min_duration`` (0.8 s) where the
  next cue leaves room;
- cues end at sentence ends, else clause ends (``,;:``), else before a conjunction or
  preposition; lines break the same way, and never inside a word;
- cues are monotonic and never overlap, and none spans a silence longer than ``max_gap`` (1.5 s).

Word times come from Whisper's word timestamps when a piece has them; without them the piece's
time is shared out in proportion to each word's length, so shaping works on any transcript.
The words' text is the piece's text, token for token: shaping never changes what was said.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Sentence ends: a cue or line preferably ends after one of these.
_SENTENCE_END = re.compile(r"[.!?…]['\")\]]*$")
#: Clause ends.
_CLAUSE_END = re.compile(r"[,;:\u2014–-]['\")\]]*$")
#: Words a line or cue may start with (a break before them keeps a phrase whole).
_PHRASE_START = frozenset(
    "and but or nor so yet because although though while when where which who whom whose that "
    "if unless until after before since than as to of in on at by for with from into about "
    "over under between through during without".split()
)
#: Words that must not end a line (they belong to what follows); titles end in a full stop
#: without ending a sentence.
_CLINGS = frozenset(
    "a an the my your his her its our their this these those to of mr. mrs. ms. dr. st. "
    "prof. mt.".split()
)


@dataclass(frozen=True)
class SubtitleOptions:
    """How captions are shaped; the names are openai-whisper's CLI options."""

    #: Characters per line; 0 turns shaping off (one cue per Whisper piece, as before).
    max_line_width: int = 42
    #: Lines per cue.
    max_line_count: int = 2
    #: Words per line (None: no limit besides the width).
    max_words_per_line: int | None = None
    #: One cue per word, the spoken word underlined (``<u>``), for karaoke-style players.
    highlight_words: bool = False
    #: Seconds: the longest cue.
    max_duration: float = 7.0
    #: Seconds: a shorter cue is lengthened into the silence after it when there is room.
    min_duration: float = 0.8
    #: Seconds of silence between two words that always end a cue.
    max_gap: float = 1.5

    @property
    def enabled(self) -> bool:
        return self.max_line_width > 0

    def __post_init__(self) -> None:
        if self.max_line_width < 0:
            raise ValueError("max_line_width must be 0 (no shaping) or more")
        if self.max_line_count < 1:
            raise ValueError("max_line_count must be at least 1")
        if self.max_words_per_line is not None and self.max_words_per_line < 1:
            raise ValueError("max_words_per_line must be at least 1")


@dataclass
class TimedWord:
    """One whitespace-separated token of the transcript and when it was said."""

    start: float
    end: float
    text: str


@dataclass
class ShapedCue:
    """A caption: its lines, and its words (for ``highlight_words``)."""

    start: float
    end: float
    lines: list[str]
    words: list[TimedWord]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# -- words ----------------------------------------------------------------------------------------


def piece_words(piece: dict[str, Any], lo: float, hi: float) -> list[TimedWord]:
    """The piece's tokens with times, clamped into ``[lo, hi]`` (its segment).

    Whisper's words when they spell the piece's text (punctuation Whisper sends as a word of its
    own is joined to the word before, as in the text); otherwise proportional times.
    """
    tokens = piece["text"].split()
    start = min(max(piece["start"], lo), hi)
    end = min(max(piece["end"], start), hi)
    timed = _from_whisper_words(piece.get("words") or [], tokens)
    if timed is None:
        timed = _proportional(tokens, start, end)
    for w in timed:
        w.start = min(max(w.start, lo), hi)
        w.end = min(max(w.end, w.start), hi)
    return timed


def _from_whisper_words(words: Sequence[dict[str, Any]], tokens: list[str]) -> list[TimedWord] | None:
    out: list[TimedWord] = []
    for w in words:
        text = w["word"]
        if not text.strip():
            continue
        if out and not text[:1].isspace():
            # A continuation ("," or "'s" sent apart): part of the token before.
            out[-1].text += text.strip()
            out[-1].end = max(out[-1].end, w["end"])
        else:
            out.append(TimedWord(w["start"], w["end"], text.strip()))
    if not out or [w.text for w in out] != tokens:
        return None
    return out


def _proportional(tokens: list[str], start: float, end: float) -> list[TimedWord]:
    weights = [len(t) + 1 for t in tokens]
    total = sum(weights) or 1
    out, at = [], start
    for token, weight in zip(tokens, weights, strict=True):
        step = (end - start) * weight / total
        out.append(TimedWord(at, at + step, token))
        at += step
    return out


# -- lines ----------------------------------------------------------------------------------------


def _ends_sentence(word: str) -> bool:
    return bool(_SENTENCE_END.search(word)) and word.lower() not in _CLINGS


def _break_cost(left: str, right: str | None) -> float:
    """How bad a break after ``left`` (and before ``right``) is; 0 is a natural break."""
    if left.lower() in _CLINGS:
        return 8.0
    if right is None or _ends_sentence(left):
        return 0.0
    if _CLAUSE_END.search(left):
        return 1.0
    return 2.5 if right.lower().strip("\"'(") in _PHRASE_START else 4.0


def _fits(words: Sequence[str], options: SubtitleOptions) -> bool:
    """Whether ``words`` fill at most one line."""
    width = sum(len(w) for w in words) + len(words) - 1
    limit = options.max_words_per_line
    return width <= options.max_line_width and (limit is None or len(words) <= limit)


def wrap(words: Sequence[str], options: SubtitleOptions) -> list[list[str]] | None:
    """Lines for one cue: at most ``max_line_count``, each fitting; breaks at natural places,
    lines of similar length. None if the words need more lines (a single over-long word
    gets a line of its own: words are never cut)."""
    found = _layout(words, options)
    return None if found is None else found[1]


def _layout(words: Sequence[str], options: SubtitleOptions) -> tuple[float, list[list[str]]] | None:
    """The best line layout of ``words`` and its cost (:func:`_break_cost` per break, plus
    uneven lengths); None if they need more than ``max_line_count`` lines."""
    n = len(words)
    # memo[i, k]: (cost, ends of lines) laying out words[i:] in at most k lines.
    memo: dict[tuple[int, int], tuple[float, list[int]] | None] = {}

    def best(i: int, k: int) -> tuple[float, list[int]] | None:
        if i == n:
            return (0.0, [])
        if k == 0:
            return None
        if (i, k) in memo:
            return memo[i, k]
        found = None
        for j in range(i + 1, n + 1):
            line = words[i:j]
            if j - i > 1 and not _fits(line, options):
                break
            rest = best(j, k - 1)
            if rest is None:
                continue
            slack = options.max_line_width - (sum(len(w) for w in line) + len(line) - 1)
            # Natural breaks first, then lines of even length (one full line and one short
            # one read worse than two of half the width; one line beats two when it fits).
            cost = rest[0] + _break_cost(words[j - 1], words[j] if j < n else None) * 10
            cost += (max(slack, 0) / options.max_line_width) ** 2 * 10
            if found is None or cost < found[0]:
                found = (cost, [j, *rest[1]])
        memo[i, k] = found
        return found

    result = best(0, options.max_line_count)
    if result is None:
        return None
    lines, at = [], 0
    for j in result[1]:
        lines.append(list(words[at:j]))
        at = j
    return result[0], lines


# -- cues -----------------------------------------------------------------------------------------


def _cue_break_cost(words: Sequence[TimedWord], i: int) -> float:
    """How bad ending a cue after ``words[i]`` is."""
    return _break_cost(words[i].text, words[i + 1].text if i + 1 < len(words) else None)


def _group(words: list[TimedWord], options: SubtitleOptions) -> list[list[TimedWord]]:
    """Words -> cue word lists: each fits the lines, lasts at most ``max_duration`` (unless one
    word does) and never holds a silence longer than ``max_gap``."""
    groups: list[list[TimedWord]] = []
    current: list[TimedWord] = []
    for word in words:
        if current and word.start - current[-1].end > options.max_gap:
            groups.append(current)
            current = []
        trial = [*current, word]
        if current and not _acceptable(trial, options):
            cut = _best_cut(trial, options)
            groups.append(trial[:cut])
            current = trial[cut:]
            # What is left of the old cue plus the new word always fits: the cut keeps at
            # least the new word, and a cut never moves more than fits.
        else:
            current = trial
        if _ends_sentence(word.text) and _long_enough(current, options):
            # A sentence that fills most of a cue ends it: the next sentence starts afresh.
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _acceptable(words: Sequence[TimedWord], options: SubtitleOptions) -> bool:
    if words[-1].end - words[0].start > options.max_duration:
        return False
    # Filling lines greedily uses the fewest lines, so it answers "does it fit" without the
    # layout search (this runs once per word).
    lines, line = 1, list[str]()
    for w in words:
        if line and not _fits([*line, w.text], options):
            lines, line = lines + 1, []
        line.append(w.text)
    return lines <= options.max_line_count


def _long_enough(words: Sequence[TimedWord], options: SubtitleOptions) -> bool:
    chars = sum(len(w.text) + 1 for w in words)
    return chars >= options.max_line_width * options.max_line_count * 0.5


def _best_cut(trial: list[TimedWord], options: SubtitleOptions) -> int:
    """Where to end the cue before the last word of ``trial`` overflows it: the cut with the
    most natural break whose tail (with the new word) still fits in a cue; later is better."""
    best_cut, best_cost = len(trial) - 1, None
    for cut in range(len(trial) - 1, 0, -1):
        tail = trial[cut:]
        if not _acceptable(tail, options):
            break
        # A natural break is worth moving a few words to the next cue, not leaving a stub.
        head = sum(len(w.text) + 1 for w in trial[:cut])
        stub = 30 if head < options.max_line_width / 3 else 0
        layout = _layout([w.text for w in trial[:cut]], options)
        lines_cost = layout[0] if layout is not None else 100
        cost = _cue_break_cost(trial, cut - 1) * 10 + (len(trial) - cut) * 2 + stub + lines_cost
        if best_cost is None or cost < best_cost:
            best_cut, best_cost = cut, cost
    return best_cut


def shape(words: Iterable[TimedWord], options: SubtitleOptions) -> list[ShapedCue]:
    """Cues for ``words`` (in reading order, times non-decreasing)."""
    out: list[ShapedCue] = []
    last_end = 0.0
    for group in _group(list(words), options):
        lines = wrap([w.text for w in group], options) or [[w.text] for w in group]
        start = max(group[0].start, last_end)
        end = min(max(group[-1].end, start), start + options.max_duration)
        out.append(ShapedCue(start, end, [" ".join(line) for line in lines], group))
        last_end = end
    _lengthen(out, options)
    return out


def _lengthen(cues: list[ShapedCue], options: SubtitleOptions) -> None:
    """Give short cues ``min_duration`` where the next cue starts late enough."""
    for i, cue in enumerate(cues):
        if cue.end - cue.start >= options.min_duration:
            continue
        # The last cue keeps its end: what follows it (more speech, or the end of the media)
        # is not known here.
        room = cues[i + 1].start if i + 1 < len(cues) else cue.end
        cue.end = max(cue.end, min(cue.start + options.min_duration, room))


def highlighted(cues: Sequence[ShapedCue]) -> list[ShapedCue]:
    """One cue per word: the cue's text with that word underlined, from the word's start to the
    next word's start (the last word: to the cue's end)."""
    out: list[ShapedCue] = []
    for cue in cues:
        flat = [(li, wi) for li, line in enumerate(cue.lines) for wi in range(len(line.split()))]
        starts = [max(w.start, cue.start) for w in cue.words]
        for n, (word, (li, wi)) in enumerate(zip(cue.words, flat, strict=True)):
            start = max(starts[n], out[-1].end if out else cue.start)
            end = starts[n + 1] if n + 1 < len(cue.words) else cue.end
            end = min(max(end, start), cue.end)
            if end <= start and n + 1 < len(cue.words):
                continue  # a word of no length: the next one's cue shows it
            lines = []
            for lj, line in enumerate(cue.lines):
                tokens = line.split()
                if lj == li:
                    tokens[wi] = f"<u>{tokens[wi]}</u>"
                lines.append(" ".join(tokens))
            out.append(ShapedCue(start, max(end, start), lines, [word]))
    return out
